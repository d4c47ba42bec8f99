//! What the criterion benches share: a recorder that keeps every sample
//! criterion takes, so that each bench can end with a markdown table (or
//! JSON) of medians next to their baselines, without reading criterion's
//! files.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One criterion sample: iterations and their elapsed time.
type Sample = (u64, Duration);

/// Per benchmark id, every sample taken.
static SAMPLES: Mutex<Vec<(String, Vec<Sample>)>> = Mutex::new(Vec::new());

/// Times `iterations` calls of `operation` and records the sample under
/// `id`; for `Bencher::iter_custom`.
#[inline(never)]
pub fn timed(id: &str, iterations: u64, mut operation: impl FnMut()) -> Duration {
    let began = Instant::now();
    for _ in 0..iterations {
        operation();
    }
    let elapsed = began.elapsed();
    let mut samples = SAMPLES.lock().expect("the sample recorder");
    match samples.iter_mut().find(|(name, _)| name == id) {
        Some((_, list)) => list.push((iterations, elapsed)),
        None => samples.push((id.to_owned(), vec![(iterations, elapsed)])),
    }
    elapsed
}

/// The median time per iteration, in nanoseconds, of the samples recorded
/// under `id` (criterion's warm-up samples included are few and short).
pub fn median_ns(id: &str) -> Option<f64> {
    let samples = SAMPLES.lock().expect("the sample recorder");
    let (_, list) = samples.iter().find(|(name, _)| name == id)?;
    let mut per_iteration: Vec<f64> = list
        .iter()
        .filter(|(iterations, _)| *iterations > 0)
        .map(|(iterations, elapsed)| elapsed.as_nanos() as f64 / *iterations as f64)
        .collect();
    if per_iteration.is_empty() {
        return None;
    }
    per_iteration.sort_by(f64::total_cmp);
    Some(per_iteration[per_iteration.len() / 2])
}

/// Whether the bench was asked for JSON (`cargo bench ... -- --json`).
pub fn json_requested() -> bool {
    std::env::args().any(|arg| arg == "--json")
}

/// Criterion's configuration for these benches: short, since every figure is
/// a median of many samples and the machine is shared. Criterion's own
/// command-line parsing is not used (it would reject `--json`), so a run
/// always runs every benchmark of the target.
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
        .without_plots()
}

/// While alive with `redirect` true, sends stdout to stderr, so that with
/// `--json` criterion's own report does not mix with the JSON document.
pub struct StdoutToStderr {
    saved: Option<i32>,
}

impl StdoutToStderr {
    /// Starts redirecting if `redirect`.
    pub fn new(redirect: bool) -> StdoutToStderr {
        if !redirect {
            return StdoutToStderr { saved: None };
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // SAFETY: plain descriptor calls on the process's own stdio.
        let saved = unsafe { libc::dup(1) };
        assert!(saved >= 0, "duplicating stdout");
        // SAFETY: as above.
        assert!(unsafe { libc::dup2(2, 1) } >= 0, "redirecting stdout");
        StdoutToStderr { saved: Some(saved) }
    }
}

impl Drop for StdoutToStderr {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            // SAFETY: restores the descriptor saved in `new`.
            unsafe {
                libc::dup2(saved, 1);
                libc::close(saved);
            }
        }
    }
}
