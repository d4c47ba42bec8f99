//! How long a wait spins before it sleeps, adapted to what spinning buys.
//!
//! Spinning on non-blocking reads brings a loopback round trip down to about
//! ten microseconds where a sleep and a wake-up cost five to ten times that on
//! a small VM. But a spinning thread holds a core: on a machine with more
//! runnable threads than cores it holds it against the very thread it waits
//! for, and a scheduler wakes a sleeping thread ahead of CPU-bound work where a
//! spinning one waits for its turn. No fixed budget is right for both: a short
//! one runs out whenever a reply is a little late (a preempted peer, an
//! interrupt) and that reply then pays a wake-up, which is the tail of a quiet
//! machine; a long one wastes a busy machine's cores.
//!
//! A [`Spin`] keeps a budget between [`SPIN_FLOOR`] and a ceiling (the
//! configured spin) and moves it by what each wait showed:
//!
//! - a spin that ran out, followed by data within the ceiling, doubles the
//!   budget: a longer spin would have caught it;
//! - a spin that ran out with no data for longer than the ceiling takes an
//!   eighth off it: the peer was idle, and spinning bought nothing. (Gently:
//!   a connection idle between bursts should not lose at every pause the
//!   budget its bursts need, while one whose peer is always slower than the
//!   ceiling stops spinning within a few dozen waits.)
//!
//! On a busy machine, one that has had more runnable threads than CPUs (by
//! half a thread, averaged over a few samples of the kernel's count in
//! `/proc/loadavg`, taken by one waiter at most every [`LOAD_SAMPLE`] for the
//! whole process), a wait spins at most [`SPIN_BUSY`] and the budget learns
//! nothing: there a late reply is late because its sender waits for a core,
//! and a longer spin only keeps it waiting (measured under a CPU hog: a 1 ms
//! spin took the miss's p99 to 2 ms, where 50 µs kept it near 130 µs; a cut
//! to 4 µs doubled the median, nearly every reply paying a wake-up).
//!
//! So a quiet machine spins as long as its late replies need, up to the
//! ceiling, and a busy one spins briefly. The cost of a wrong guess is
//! bounded either way: at most one ceiling of spinning per idle period, and at
//! most one wake-up per wait.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The smallest budget a [`Spin`] falls to (unless its ceiling is smaller): a
/// reply already on its way is still caught without a wake-up.
pub const SPIN_FLOOR: Duration = Duration::from_micros(4);

/// The budget a [`Spin`] starts with (unless its ceiling is smaller).
pub const SPIN_START: Duration = Duration::from_micros(50);

/// How often the machine's count of running threads is read, at most.
pub const LOAD_SAMPLE: Duration = Duration::from_millis(2);

/// The most a wait spins on a busy machine (unless the budget is smaller).
pub const SPIN_BUSY: Duration = Duration::from_micros(50);

/// An adaptive spin budget; see the module documentation.
#[derive(Clone)]
pub struct Spin {
    ceiling: Duration,
    budget: Duration,
    /// The spin that last ran out, until its wait ends: when it began.
    ran_out: Option<Instant>,
    /// Counts of what the budget did, for tests and diagnostics.
    stats: SpinStats,
    /// Whether the machine is busy: [`machine_busy`] (tests replace it).
    busy: fn() -> bool,
}

impl std::fmt::Debug for Spin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spin")
            .field("ceiling", &self.ceiling)
            .field("budget", &self.budget)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What a [`Spin`]'s waits did since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpinStats {
    /// Waits that ended while spinning.
    pub caught: u64,
    /// Spins that ran out, so that the wait slept.
    pub ran_out: u64,
    /// Spins that ran out with the peer idle past the ceiling.
    pub idle: u64,
    /// Spins cut to [`SPIN_BUSY`] because the machine was busy.
    pub busy: u64,
}

impl Spin {
    /// A budget that never exceeds `ceiling` (zero: never spin).
    pub fn new(ceiling: Duration) -> Spin {
        Spin {
            ceiling,
            budget: SPIN_START.min(ceiling),
            ran_out: None,
            stats: SpinStats::default(),
            busy: machine_busy,
        }
    }

    /// The budget learnt so far (what the next wait spins on a quiet
    /// machine).
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// How long the next wait spins: the budget, or at most [`SPIN_BUSY`]
    /// on a busy machine.
    pub fn current(&self) -> Duration {
        self.now().1
    }

    /// Whether the machine is busy (not asked with a zero ceiling, which
    /// never spins), and how long a wait spins now.
    fn now(&self) -> (bool, Duration) {
        let busy = !self.ceiling.is_zero() && (self.busy)();
        let budget = if busy {
            self.budget.min(SPIN_BUSY)
        } else {
            self.budget
        };
        (busy, budget)
    }

    /// The most a wait ever spins.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// What the waits did so far.
    pub fn stats(&self) -> SpinStats {
        self.stats
    }

    /// Calls `poll` until it returns something or the budget runs out, and
    /// returns what it returned (`Ok(None)`: ran out; the caller then sleeps
    /// until its data comes and calls [`Spin::woke`]). An error from `poll`
    /// ends the spin at once.
    pub fn spin<T, E>(
        &mut self,
        mut poll: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        self.ran_out = None;
        let (busy, budget) = self.now();
        if busy {
            self.stats.busy += 1;
        }
        if budget.is_zero() {
            // A zero ceiling: never spin, and nothing to learn.
            return poll();
        }
        let began = Instant::now();
        loop {
            if let Some(value) = poll()? {
                self.stats.caught += 1;
                return Ok(Some(value));
            }
            if began.elapsed() >= budget {
                break;
            }
            std::hint::spin_loop();
        }
        self.stats.ran_out += 1;
        if !busy {
            // (On a busy machine what the wait shows says nothing about a
            // quiet one.)
            self.ran_out = Some(began);
        }
        Ok(None)
    }

    /// The wait whose spin last ran out has its data now: a longer spin
    /// would have caught it if it came within the ceiling.
    pub fn woke(&mut self) {
        let Some(began) = self.ran_out.take() else {
            return;
        };
        if began.elapsed() <= self.ceiling {
            self.budget = (self.budget * 2).max(SPIN_FLOOR).min(self.ceiling);
        } else {
            self.stats.idle += 1;
            self.budget = (self.budget - self.budget / 8).max(SPIN_FLOOR.min(self.ceiling));
        }
    }
}

/// Whether the machine has had more runnable threads than online CPUs (by
/// half a thread, on average over about four samples), as last sampled: at
/// most [`LOAD_SAMPLE`] ago, the first caller to find the sample stale reading
/// it again while the others use the old one.
pub fn machine_busy() -> bool {
    static LOAD: OnceLock<Load> = OnceLock::new();
    let load = LOAD.get_or_init(Load::open);
    let Some(file) = &load.file else {
        return false;
    };
    let now = load.epoch.elapsed().as_micros() as u64;
    let sampled = load.sampled_us.load(Ordering::Relaxed);
    if now.saturating_sub(sampled) >= LOAD_SAMPLE.as_micros() as u64
        && load
            .sampled_us
            .compare_exchange(sampled, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        && let Some(running) = running_threads(file)
    {
        // Averaged, in 256ths: a kernel thread that runs for a moment beside
        // two spinning ends on two cores does not make the machine busy, a
        // CPU-bound process does.
        let average = load.running_256.load(Ordering::Relaxed);
        let average = average - average / 4 + running * 256 / 4;
        load.running_256.store(average, Ordering::Relaxed);
        let busy = average > load.cpus * 256 + 128;
        load.busy.store(busy, Ordering::Relaxed);
        return busy;
    }
    load.busy.load(Ordering::Relaxed)
}

/// The process-wide sample behind [`machine_busy`].
struct Load {
    /// `/proc/loadavg`, kept open (`None` where there is none: never busy).
    file: Option<std::fs::File>,
    cpus: u64,
    epoch: Instant,
    sampled_us: AtomicU64,
    /// Running threads, a moving average in 256ths.
    running_256: AtomicU64,
    busy: AtomicBool,
}

impl Load {
    fn open() -> Load {
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u64;
        Load {
            file: std::fs::File::open("/proc/loadavg").ok(),
            cpus,
            epoch: Instant::now(),
            // First sampled LOAD_SAMPLE after the first call.
            sampled_us: AtomicU64::new(0),
            running_256: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        }
    }
}

/// The number of runnable threads now, from `/proc/loadavg` ("0.52 0.58
/// 0.59 3/467 12345": the fourth field's first number, which counts the
/// reading thread itself).
fn running_threads(file: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buffer = [0u8; 128];
    let read = file.read_at(&mut buffer, 0).ok()?;
    parse_running(std::str::from_utf8(&buffer[..read]).ok()?)
}

fn parse_running(loadavg: &str) -> Option<u64> {
    let field = loadavg.split_ascii_whitespace().nth(3)?;
    field.split_once('/')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> Result<Option<()>, ()> {
        Ok(None)
    }

    /// A spin that takes the machine as quiet, whatever tests run beside it.
    fn quiet(ceiling: Duration) -> Spin {
        Spin {
            busy: || false,
            ..Spin::new(ceiling)
        }
    }

    #[test]
    fn a_late_reply_within_the_ceiling_doubles_the_budget_up_to_it() {
        let ceiling = Duration::from_micros(300);
        let mut spin = quiet(ceiling);
        assert_eq!(spin.budget(), SPIN_START);
        assert_eq!(spin.spin(never), Ok(None));
        spin.woke();
        assert_eq!(spin.budget(), SPIN_START * 2);
        for _ in 0..200 {
            if spin.budget() == ceiling {
                break;
            }
            let _ = spin.spin(never);
            spin.woke();
        }
        assert_eq!(spin.budget(), ceiling);
    }

    #[test]
    fn an_idle_peer_takes_eighths_off_the_budget_down_to_the_floor() {
        let mut spin = quiet(Duration::from_micros(100));
        let _ = spin.spin(never);
        std::thread::sleep(Duration::from_millis(2));
        spin.woke();
        assert_eq!(spin.budget(), SPIN_START - SPIN_START / 8);
        for _ in 0..40 {
            let _ = spin.spin(never);
            std::thread::sleep(Duration::from_millis(1));
            spin.woke();
        }
        assert_eq!(spin.budget(), SPIN_FLOOR);
        assert_eq!(spin.stats().ran_out, 41);
        assert_eq!(spin.stats().idle, 41);
    }

    #[test]
    fn a_caught_reply_leaves_the_budget_and_errors_end_the_spin() {
        let mut spin = quiet(Duration::from_millis(1));
        assert_eq!(spin.spin(|| -> Result<_, ()> { Ok(Some(1)) }), Ok(Some(1)));
        spin.woke();
        assert_eq!(spin.budget(), SPIN_START);
        assert_eq!(spin.spin(|| -> Result<Option<()>, _> { Err(9) }), Err(9));
        assert_eq!(spin.stats().caught, 1);
    }

    #[test]
    fn the_running_count_is_read_from_loadavg() {
        assert_eq!(parse_running("0.52 0.58 0.59 3/467 12345\n"), Some(3));
        assert_eq!(parse_running("0.52 0.58 0.59"), None);
        assert_eq!(parse_running("0.52 0.58 0.59 x/467 1"), None);
        let file = std::fs::File::open("/proc/loadavg").unwrap();
        // The reading thread itself runs.
        assert!(running_threads(&file).unwrap() >= 1);
    }

    #[test]
    fn more_running_threads_than_cpus_is_a_busy_machine() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let hogs: Vec<_> = (0..cpus + 1)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let began = Instant::now();
        let mut busy = false;
        while !busy && began.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(LOAD_SAMPLE);
            busy = machine_busy();
        }
        // A spin on a busy machine spins at most SPIN_BUSY, and learns
        // nothing.
        let mut spin = Spin::new(Duration::from_millis(100));
        spin.budget = Duration::from_millis(100);
        let began_spin = Instant::now();
        let _ = spin.spin(never);
        let spun = began_spin.elapsed();
        spin.woke();
        stop.store(true, Ordering::Relaxed);
        for hog in hogs {
            hog.join().unwrap();
        }
        assert!(
            busy,
            "{} running threads on {cpus} CPUs not seen as busy",
            cpus + 2
        );
        assert_eq!(spin.stats().busy, 1);
        assert!(
            spun < Duration::from_millis(50),
            "spun {spun:?} on a busy machine"
        );
        assert_eq!(spin.budget(), Duration::from_millis(100));
    }

    #[test]
    fn a_zero_ceiling_never_spins() {
        let mut spin = Spin::new(Duration::ZERO);
        let mut calls = 0;
        let _ = spin.spin(|| -> Result<Option<()>, ()> {
            calls += 1;
            Ok(None)
        });
        spin.woke();
        assert_eq!((calls, spin.budget()), (1, Duration::ZERO));
    }
}
