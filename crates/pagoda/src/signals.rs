//! Flush on failure: on SIGTERM or SIGPWR, save what the application wrote
//! to its regions' nodes within a bounded time, give the writer leases back,
//! say what was saved, and exit.
//!
//! Opt in with [`flush_on_signal`] (or [`crate::Client::flush_on_signal`]);
//! nothing changes until a signal arrives. Then a thread of this crate:
//!
//! 1. flushes every region open through the clients given (each region's
//!    dirty pages, and for a `Local` region its journal's records not yet
//!    acknowledged by the node), every region on a thread of its own, while
//!    the application goes on running: every write that returned before the
//!    signal arrived is covered, later ones may or may not be;
//! 2. waits for them until [`FlushOnSignal::timeout`] (5 s by default) has
//!    passed since the signal, at most;
//! 3. ends the writer leases of cluster clients (their keys in the
//!    coordinator go with them, so another host may open the regions at
//!    once);
//! 4. logs (`tracing`, at info level) the regions, pages, bytes and journal
//!    records saved and how long it took, or (at error level) each region
//!    that failed or was not saved by the deadline, with its dirty pages
//!    left;
//! 5. exits the process with status 128 + the signal's number (143 for
//!    SIGTERM, 158 for SIGPWR), as a shell reports a process the signal
//!    killed; whatever was not saved is lost, as it would have been.
//!
//! Further signals while it flushes are ignored. The handlers replace the
//! signals' default action (terminate) for the whole process: install this
//! only in a process whose other parts do not handle SIGTERM or SIGPWR.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cluster::Cluster;
use crate::region::{Flushed, RegionCache, flush_counted, name_of};
use crate::{Client, ClientError};

/// Default [`FlushOnSignal::timeout`], in seconds.
pub const FLUSH_ON_SIGNAL_TIMEOUT_S_DEFAULT: u64 = 5;

/// Settings of [`flush_on_signal`].
#[derive(Clone, Debug)]
pub struct FlushOnSignal {
    /// How long the flush may take, from the signal's arrival to the exit:
    /// what is not on the nodes by then is lost.
    pub timeout: Duration,
}

impl Default for FlushOnSignal {
    fn default() -> Self {
        FlushOnSignal {
            timeout: Duration::from_secs(FLUSH_ON_SIGNAL_TIMEOUT_S_DEFAULT),
        }
    }
}

/// The regions open through a client and its clones: their caches, held
/// weakly (a dropped handle flushed itself).
#[derive(Default)]
pub(crate) struct OpenRegions {
    caches: Mutex<Vec<Weak<RegionCache>>>,
    /// Whether the client's metrics thread has been started.
    metrics_started: AtomicBool,
}

impl OpenRegions {
    /// True the first time it is called: the caller starts the metrics
    /// thread.
    pub(crate) fn start_metrics_once(&self) -> bool {
        !self.metrics_started.swap(true, Ordering::AcqRel)
    }

    /// Adds a region handle's cache (and forgets those of dropped ones).
    pub(crate) fn add(&self, cache: &Arc<RegionCache>) {
        let mut caches = self.caches.lock();
        caches.retain(|cache| cache.strong_count() > 0);
        caches.push(Arc::downgrade(cache));
    }

    pub(crate) fn live(&self) -> Vec<Arc<RegionCache>> {
        self.caches
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

/// What [`flush_on_signal`] needs of a client.
struct Target {
    regions: Arc<OpenRegions>,
    cluster: Option<Arc<Cluster>>,
}

/// Set once the handlers are installed: once per process.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Installs the flush on SIGTERM and SIGPWR for the regions open through
/// `clients` (and their clones), now and later; see the module
/// documentation for what happens when a signal arrives. Once per process:
/// a second call fails with `InvalidArgument` (pass every client to one
/// call).
pub fn flush_on_signal(clients: &[&Client], settings: FlushOnSignal) -> Result<(), ClientError> {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return Err(ClientError::InvalidArgument(
            "flush_on_signal is installed already in this process; pass every client to one call"
                .into(),
        ));
    }
    let targets: Vec<Target> = clients
        .iter()
        .map(|client| Target {
            regions: client.open_regions().clone(),
            cluster: client.cluster().cloned(),
        })
        .collect();
    let installed = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGPWR])
        .map_err(|error| {
            ClientError::InvalidArgument(format!("installing the signal handlers: {error}"))
        })
        .and_then(|mut signals| {
            std::thread::Builder::new()
                .name("pagoda-flush-on-signal".into())
                .spawn(move || {
                    if let Some(signal) = signals.forever().next() {
                        flush_and_exit(&targets, signal, settings.timeout);
                    }
                })
                .map_err(|error| {
                    ClientError::InvalidArgument(format!("starting the signal thread: {error}"))
                })
        });
    if let Err(error) = installed {
        INSTALLED.store(false, Ordering::Release);
        return Err(error);
    }
    Ok(())
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGPWR => "SIGPWR",
        _ => "a signal",
    }
}

/// Flushes every region within `timeout`, releases the leases, logs, and
/// exits with 128 + `signal`.
fn flush_and_exit(targets: &[Target], signal: i32, timeout: Duration) -> ! {
    let began = Instant::now();
    let deadline = began + timeout;
    let caches: Vec<Arc<RegionCache>> = targets
        .iter()
        .flat_map(|target| target.regions.live())
        .collect();
    tracing::info!(
        signal = signal_name(signal),
        regions = caches.len(),
        ?timeout,
        "flushing every region before exiting"
    );
    let (sender, receiver) = std::sync::mpsc::channel::<(usize, Result<Flushed, ClientError>)>();
    for (index, cache) in caches.iter().enumerate() {
        let cache = cache.clone();
        let thread_sender = sender.clone();
        let spawned = std::thread::Builder::new()
            .name("pagoda-flush".into())
            .spawn(move || {
                let _ = thread_sender.send((index, flush_counted(&cache)));
            });
        if let Err(error) = spawned {
            let _ = sender.send((
                index,
                Err(ClientError::InvalidArgument(format!(
                    "starting a flush thread: {error}"
                ))),
            ));
        }
    }
    drop(sender);
    let mut outcomes: Vec<Option<Result<Flushed, ClientError>>> =
        caches.iter().map(|_| None).collect();
    let mut waiting = caches.len();
    while waiting > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok((index, outcome)) => {
                outcomes[index] = Some(outcome);
                waiting -= 1;
            }
            Err(_) => break,
        }
    }
    let took = began.elapsed();
    let mut saved = Flushed::default();
    let mut saved_regions = 0;
    let mut failed = 0;
    for (cache, outcome) in caches.iter().zip(&outcomes) {
        let name = name_of(cache);
        match outcome {
            Some(Ok(flushed)) => {
                saved_regions += 1;
                saved.pages += flushed.pages;
                saved.bytes += flushed.bytes;
                saved.records += flushed.records;
                tracing::info!(
                    region = name,
                    pages = flushed.pages,
                    bytes = flushed.bytes,
                    records = flushed.records,
                    "region saved"
                );
            }
            Some(Err(error)) => {
                failed += 1;
                tracing::error!(region = name, %error, dirty_pages_left = cache.dirty_pages(), "region not saved: its flush failed");
            }
            None => {
                failed += 1;
                tracing::error!(
                    region = name,
                    dirty_pages_left = cache.dirty_pages(),
                    ?timeout,
                    "region not saved: its flush did not end before the deadline"
                );
            }
        }
    }
    // The leases go last: another host may take the regions over once they
    // are gone, and this one has stopped writing by then.
    for cluster in targets.iter().filter_map(|target| target.cluster.as_ref()) {
        if let Some(lease) = cluster.release_lease() {
            tracing::info!(lease, coordinator = %cluster.coordinator().endpoint(), "writer lease released");
        }
    }
    if failed == 0 {
        tracing::info!(
            signal = signal_name(signal),
            regions = saved_regions,
            pages = saved.pages,
            bytes = saved.bytes,
            records = saved.records,
            took_ms = took.as_millis() as u64,
            "saved every region; exiting"
        );
    } else {
        tracing::error!(
            signal = signal_name(signal),
            regions_saved = saved_regions,
            regions_not_saved = failed,
            pages = saved.pages,
            bytes = saved.bytes,
            records = saved.records,
            took_ms = took.as_millis() as u64,
            "some regions were not saved; exiting"
        );
    }
    std::process::exit(128 + signal)
}
