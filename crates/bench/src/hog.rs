//! A busy machine on demand: CPU-bound processes, one per core by default, for
//! the benchmarks that measure what a loaded host does to Pagoda's waits.
//!
//! Each hog is a separate `sh` process running an empty loop (as
//! `bench/compare.sh --hog` starts them), so the scheduler treats it as any
//! other program's work and not as one of the benchmark's own threads. Each is
//! bounded by `timeout` and killed when the [`Hog`] is dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Running CPU hogs; dropping it stops them.
pub struct Hog {
    children: Vec<Child>,
}

impl Hog {
    /// Starts `processes` busy loops, each living at most `lifetime`.
    pub fn start(processes: usize, lifetime: Duration) -> Hog {
        let seconds = lifetime.as_secs().max(1).to_string();
        let children = (0..processes)
            .map(|_| {
                Command::new("timeout")
                    .args([seconds.as_str(), "sh", "-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("starting a CPU hog (timeout and sh from coreutils and dash)")
            })
            .collect();
        Hog { children }
    }

    /// How many hogs run.
    pub fn processes(&self) -> usize {
        self.children.len()
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGTERM, which `timeout` passes on to the loop it runs (a
            // SIGKILL would leave the loop running until its lifetime ends).
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// The number of CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
