//! Recovery and migration of a region onto this node.
//!
//! The target (this node) reads the region's latest manifest, asks the
//! source node for the pages dirty since that checkpoint (the reply carries a
//! mark), allocates the region in the `Recovering` state, fills it from the
//! baseline in the storage backend (objects read in parallel) and copies the
//! dirty pages from the source. Writers may go on at the source meanwhile, so
//! it then asks for the pages dirty since the last mark and copies those,
//! round after round, until a round is small; then it freezes the region at
//! the source (read-only from then on, which returns the final mark), copies
//! the last pages, and the region serves here. The source only ever serves
//! pages written since the baseline.
//!
//! Without a source (the node holding the region is lost), recovery from
//! the baseline alone is allowed when asked for explicitly; the progress
//! states the baseline's age, which is what was lost.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, PageRange, Since};
use pagoda_wire::{RecoveryPhase, RecoveryProgress, RegionState};
use parking_lot::Mutex;

use crate::checkpoint::{self, LoadProgress, Manifest};
use crate::error::NodeError;
use crate::node::Shared;
use crate::region::{CheckpointMark, Region};

/// Pages per read from the source.
const COPY_BATCH_PAGES: usize = 256;
/// Reads from the source in flight at once.
const COPY_THREADS: usize = 4;
/// A catch-up round this small (in pages) is followed by the freeze.
const FINAL_ROUND_PAGES: u64 = 1024;
/// Catch-up rounds before freezing regardless.
const ROUNDS_MAX: u32 = 8;
/// Attempts when the source has checkpointed past the manifest read.
const STALE_RETRIES: u32 = 3;

/// What a recovery was asked to do.
#[derive(Clone, Debug)]
pub struct RecoveryRequest {
    /// The region's name.
    pub name: String,
    /// The node holding the region now.
    pub source: Option<String>,
    /// Its token.
    pub source_token: Option<Vec<u8>>,
    /// Recovery from the baseline alone is allowed.
    pub baseline_only: bool,
}

/// A recovery's progress, updated as it runs.
pub struct RecoveryJob {
    started: Instant,
    phase: Mutex<(RecoveryPhase, String)>,
    baseline_checkpoint: AtomicU64,
    baseline_age_ms: AtomicU64,
    baseline_pages: AtomicU64,
    baseline_pages_done: AtomicU64,
    source_pages: AtomicU64,
    source_pages_done: AtomicU64,
    storage_bytes: AtomicU64,
    source_bytes: AtomicU64,
}

impl RecoveryJob {
    /// A job just begun.
    pub fn new() -> RecoveryJob {
        RecoveryJob {
            started: Instant::now(),
            phase: Mutex::new((RecoveryPhase::Baseline, String::new())),
            baseline_checkpoint: AtomicU64::new(0),
            baseline_age_ms: AtomicU64::new(0),
            baseline_pages: AtomicU64::new(0),
            baseline_pages_done: AtomicU64::new(0),
            source_pages: AtomicU64::new(0),
            source_pages_done: AtomicU64::new(0),
            storage_bytes: AtomicU64::new(0),
            source_bytes: AtomicU64::new(0),
        }
    }

    /// Whether it has finished, well or not.
    pub fn finished(&self) -> bool {
        matches!(
            self.phase.lock().0,
            RecoveryPhase::Done | RecoveryPhase::Failed
        )
    }

    /// A snapshot for the wire.
    pub fn progress(&self) -> RecoveryProgress {
        let (phase, message) = self.phase.lock().clone();
        RecoveryProgress {
            phase,
            baseline_checkpoint: self.baseline_checkpoint.load(Ordering::Relaxed),
            baseline_age_ms: self.baseline_age_ms.load(Ordering::Relaxed),
            baseline_pages: self.baseline_pages.load(Ordering::Relaxed),
            baseline_pages_done: self.baseline_pages_done.load(Ordering::Relaxed),
            source_pages: self.source_pages.load(Ordering::Relaxed),
            source_pages_done: self.source_pages_done.load(Ordering::Relaxed),
            storage_bytes: self.storage_bytes.load(Ordering::Relaxed),
            source_bytes: self.source_bytes.load(Ordering::Relaxed),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            message,
        }
    }

    fn set_phase(&self, phase: RecoveryPhase, message: impl Into<String>) {
        *self.phase.lock() = (phase, message.into());
    }
}

impl Default for RecoveryJob {
    fn default() -> Self {
        RecoveryJob::new()
    }
}

impl LoadProgress for RecoveryJob {
    fn loaded(&self, pages: u64, bytes: u64) {
        self.baseline_pages_done.fetch_add(pages, Ordering::Relaxed);
        self.storage_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Checks a request before a job is started for it.
pub(crate) fn validate(shared: &Shared, request: &RecoveryRequest) -> Result<(), NodeError> {
    if shared.storage.is_none() {
        return Err(NodeError::NoStorage);
    }
    if request.source.is_none() && !request.baseline_only {
        return Err(NodeError::InvalidArgument(
            "no source node given: recovering from the baseline alone loses every write since \
             the last checkpoint, and must be asked for explicitly (--baseline-only)"
                .into(),
        ));
    }
    // Checked before anything uses the name (a thread's name among them,
    // which must not hold a NUL byte), not only when the region is created.
    crate::catalog::validate_name(&request.name)?;
    if shared.catalog.by_name(&request.name).is_ok() {
        return Err(NodeError::RegionExists(request.name.clone()));
    }
    if let Some(source) = &request.source {
        check_peer(&shared.config.peers, source)?;
    }
    Ok(())
}

/// Refuses to dial `source` unless every address it resolves to is an
/// allowed peer: one of `peers`, or, when `peers` is empty, an address on
/// this host's loopback. A node never connects, with its credentials, to
/// wherever a client names.
pub(crate) fn check_peer(peers: &[SocketAddr], source: &str) -> Result<(), NodeError> {
    // A name the client chose is never looked up (that would send DNS
    // queries wherever a client says): the source is an address, or
    // `localhost`, which resolves on this host.
    let addresses: Vec<SocketAddr> = match source.parse::<SocketAddr>() {
        Ok(address) => vec![address],
        Err(_)
            if source
                .rsplit_once(':')
                .is_some_and(|(host, _)| host == "localhost") =>
        {
            source
                .to_socket_addrs()
                .map_err(|e| NodeError::InvalidArgument(format!("source {source:?}: {e}")))?
                .collect()
        }
        Err(_) => {
            return Err(NodeError::PeerNotAllowed(format!(
                "source {source:?} is not an address: give it as IP:PORT (this node does not \
                 look up names a client gives; --peer names are resolved at start)"
            )));
        }
    };
    if addresses.is_empty() {
        return Err(NodeError::InvalidArgument(format!(
            "source {source:?} resolves to no address"
        )));
    }
    let allowed = |address: &SocketAddr| {
        if peers.is_empty() {
            address.ip().is_loopback()
        } else {
            peers.contains(address)
        }
    };
    match addresses.iter().find(|address| !allowed(address)) {
        None => Ok(()),
        Some(address) => Err(NodeError::PeerNotAllowed(format!(
            "source {source:?} ({address}) is not an allowed peer of this node: {}",
            if peers.is_empty() {
                "without --peer, only addresses on this host's loopback are".to_owned()
            } else {
                format!(
                    "the allowed peers are {}",
                    peers
                        .iter()
                        .map(|peer| peer.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ))),
    }
}

/// Starts a recovery job on its own thread.
pub(crate) fn start(
    shared: &Arc<Shared>,
    request: RecoveryRequest,
) -> Result<Arc<RecoveryJob>, NodeError> {
    let mut recoveries = shared.recoveries.lock();
    if recoveries
        .get(&request.name)
        .is_some_and(|job| !job.finished())
    {
        return Err(NodeError::InvalidArgument(format!(
            "region {:?} is being recovered already",
            request.name
        )));
    }
    validate(shared, &request)?;
    let job = Arc::new(RecoveryJob::new());
    recoveries.insert(request.name.clone(), job.clone());
    drop(recoveries);
    let thread_job = job.clone();
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name("pagoda-recover".into())
        .spawn(move || run(&thread_shared, &request, &thread_job))
        .map_err(|e| NodeError::io("spawning a recovery", e))?;
    Ok(job)
}

/// Runs a recovery to the end, recording progress and the outcome in `job`.
pub(crate) fn run(shared: &Shared, request: &RecoveryRequest, job: &RecoveryJob) {
    match recover(shared, request, job) {
        Ok(note) => {
            tracing::info!(name = %request.name, note, "recovery complete");
            job.set_phase(RecoveryPhase::Done, note);
        }
        Err(error) => {
            tracing::warn!(name = %request.name, %error, "recovery failed");
            job.set_phase(RecoveryPhase::Failed, error.to_string());
        }
    }
}

/// The source node, connected.
struct Source {
    client: Client,
    region: pagoda::RegionInfo,
    /// The region's uid there: only a baseline with this uid is the
    /// source's own, so only its dirty pages complete it.
    uid: u64,
    /// The newest checkpoint the source has taken of the region (0: none).
    checkpoint: u64,
}

fn remote(context: &str, error: pagoda::ClientError) -> NodeError {
    NodeError::Peer {
        context: context.to_owned(),
        error,
    }
}

fn recover(
    shared: &Shared,
    request: &RecoveryRequest,
    job: &RecoveryJob,
) -> Result<String, NodeError> {
    let storage = shared.storage.as_ref().ok_or(NodeError::NoStorage)?;
    let name = &request.name;
    let source = match &request.source {
        Some(address) => {
            let options = ClientOptions {
                token: request
                    .source_token
                    .clone()
                    .or_else(|| shared.config.token.clone()),
                credential: shared.config.peer_credential.clone(),
                timeout: Duration::from_secs(60),
                client_name: format!("recovery of {name}"),
                tls: shared.config.peer_tls.clone(),
                // The node retries (or fails) on its own terms.
                reconnect_for: Duration::ZERO,
                ..ClientOptions::default()
            };
            let client = Client::connect(address.as_str(), options)
                .map_err(|e| remote(&format!("connecting to source {address}"), e))?;
            let stat = client
                .stat_region(name)
                .map_err(|e| remote(&format!("opening {name:?} on source {address}"), e))?;
            Some(Source {
                client,
                region: stat.info,
                uid: stat.uid,
                checkpoint: stat.checkpoint,
            })
        }
        None => None,
    };

    // The baseline, and the source's dirty pages since it. The source may
    // complete a newer checkpoint between the two reads and forget the older
    // one's start; then read the newer manifest and ask again.
    let mut attempt = 0;
    let (manifest, first_list) = loop {
        attempt += 1;
        // With a source, only its own baseline (same uid) can be completed
        // by its dirty pages; another region's of the same name cannot.
        let uid = source.as_ref().map(|source| source.uid);
        let manifest = checkpoint::latest_manifest(storage, name, uid)?;
        let Some(source) = &source else {
            break (manifest, None);
        };
        let since = Since::Checkpoint(manifest.as_ref().map_or(0, |m| m.number));
        match source.client.raw().dirty_pages(source.region.id, since) {
            Ok(list) => break (manifest, Some(list)),
            Err(pagoda::ClientError::Remote {
                code: pagoda::ErrorCode::CheckpointUnknown,
                ..
            }) if attempt < STALE_RETRIES => continue,
            Err(error) => return Err(remote("listing dirty pages at the source", error)),
        }
    };
    if source.is_none() && manifest.is_none() {
        return Err(NodeError::InvalidArgument(format!(
            "region {name:?} has no checkpoint in {} and no source was given",
            storage.description()
        )));
    }
    let (size, page_size, uid) = match (&manifest, &source) {
        (Some(manifest), _) => (manifest.size, manifest.page_size, manifest.uid),
        (None, Some(source)) => (source.region.size, source.region.page_size, source.uid),
        (None, None) => unreachable!("checked above"),
    };
    if let Some(source) = &source
        && (source.region.size != size || source.region.page_size != page_size)
    {
        return Err(NodeError::InvalidArgument(format!(
            "the source's region has {} bytes in pages of {}, its baseline {size} in pages of {page_size}",
            source.region.size, source.region.page_size
        )));
    }

    // Say which path this recovery takes and why: a full copy from the
    // source when the source has a checkpoint this node cannot see means the
    // nodes do not share storage, which costs the whole region over the
    // network instead of only the pages written since the checkpoint.
    let path = match (&manifest, &source) {
        (Some(manifest), Some(_)) => format!(
            "baseline: checkpoint {} from {}, then the pages written since from the source",
            manifest.number,
            storage.description()
        ),
        (Some(manifest), None) => format!(
            "baseline alone: checkpoint {} from {}",
            manifest.number,
            storage.description()
        ),
        (None, Some(source)) if source.checkpoint > 0 => {
            let warning = format!(
                "full copy from the source: it has checkpoint {} of {name:?}, but {} holds no \
                 checkpoint of that region (uid {:016x}): the two nodes do not share storage, \
                 so every page is copied over the network",
                source.checkpoint,
                storage.description(),
                source.uid
            );
            tracing::warn!(name, "{warning}");
            warning
        }
        (None, Some(_)) => format!(
            "full copy from the source: the region has never been checkpointed (nothing in {})",
            storage.description()
        ),
        (None, None) => unreachable!("checked above"),
    };
    tracing::info!(name, path, "recovery started");
    job.set_phase(RecoveryPhase::Baseline, path.clone());
    let region =
        shared
            .catalog
            .create_region(name, size, page_size, uid, RegionState::Recovering)?;
    let result = fill(shared, &region, manifest.as_ref(), source, first_list, job)
        .map(|note| format!("{path}. {note}"));
    match result {
        Ok(note) => {
            if let Some(manifest) = &manifest {
                region.set_durable_checkpoint(manifest.number);
                region.checkpoint_completed(CheckpointMark {
                    number: manifest.number,
                    start_seq: crate::region::BASELINE_SEQ,
                    started: manifest.started(),
                    journal_through: 0,
                });
                region.set_baseline(Arc::new(manifest.clone()));
            }
            region.set_state(RegionState::Active, "");
            shared.catalog.save_states()?;
            Ok(note)
        }
        Err(error) => {
            region.set_state(
                RegionState::Damaged,
                format!("recovery failed: {error}; delete the region and recover it again"),
            );
            Err(error)
        }
    }
}

fn fill(
    shared: &Shared,
    region: &Region,
    manifest: Option<&Manifest>,
    source: Option<Source>,
    first_list: Option<(Vec<PageRange>, u64)>,
    job: &RecoveryJob,
) -> Result<String, NodeError> {
    let storage = shared.storage.as_ref().ok_or(NodeError::NoStorage)?;
    if let Some(manifest) = manifest {
        job.baseline_checkpoint
            .store(manifest.number, Ordering::Relaxed);
        job.baseline_age_ms
            .store(manifest.age().as_millis() as u64, Ordering::Relaxed);
    }
    let Some(source) = source else {
        let manifest = manifest.expect("checked by the caller");
        job.baseline_pages.store(manifest.pages, Ordering::Relaxed);
        checkpoint::load_baseline(storage, region, manifest, job)?;
        return Ok(format!(
            "recovered from the baseline alone: checkpoint {} taken {:.1} s before recovery began; \
             writes after it are lost",
            manifest.number,
            job.baseline_age_ms.load(Ordering::Relaxed) as f64 / 1000.0
        ));
    };
    let (mut ranges, mut mark) = first_list.expect("listed with the source");
    let first_pages: u64 = ranges.iter().map(|range| range.count as u64).sum();
    job.source_pages.fetch_add(first_pages, Ordering::Relaxed);
    match manifest {
        Some(manifest) => {
            // The pages dirty since the checkpoint are copied from the
            // source whatever the baseline holds for them: load only the
            // rest of the baseline, and copy them at the same time. The two
            // write disjoint pages, so the region ends the same whichever
            // finishes first, and the copy hides behind the storage reads.
            let dirty = dirty_pages(region, &ranges)?;
            let rest = checkpoint::without_pages(manifest, &dirty);
            // The progress still counts the whole baseline; the pages left
            // to the source are done with as far as it goes.
            job.baseline_pages.store(manifest.pages, Ordering::Relaxed);
            job.baseline_pages_done
                .fetch_add(manifest.pages.saturating_sub(rest.pages), Ordering::Relaxed);
            std::thread::scope(|scope| {
                let copy = scope.spawn(|| copy_ranges(&source, region, &ranges, job));
                let loaded = checkpoint::load_baseline(storage, region, &rest, job);
                let copied = copy
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                loaded.and(copied)
            })?;
            let path = job.phase.lock().1.clone();
            job.set_phase(RecoveryPhase::Source, path);
        }
        None => {
            let path = job.phase.lock().1.clone();
            job.set_phase(RecoveryPhase::Source, path);
            copy_ranges(&source, region, &ranges, job)?;
        }
    }
    // Catch-up rounds: the pages written at the source since the last list.
    let mut rounds = 1;
    loop {
        let (next, next_mark) = source
            .client
            .raw()
            .dirty_pages(source.region.id, Since::Mark(mark))
            .map_err(|e| remote("listing dirty pages at the source", e))?;
        ranges = next;
        let pending: u64 = ranges.iter().map(|range| range.count as u64).sum();
        if pending <= FINAL_ROUND_PAGES || rounds >= ROUNDS_MAX {
            break;
        }
        mark = next_mark;
        rounds += 1;
        job.source_pages.fetch_add(pending, Ordering::Relaxed);
        copy_ranges(&source, region, &ranges, job)?;
    }
    // Freeze the source: no write completes there after this, so one more
    // list since the last mark is the whole rest.
    source
        .client
        .raw()
        .freeze_region(source.region.id)
        .map_err(|e| remote("freezing the region at the source", e))?;
    let (last, _) = source
        .client
        .raw()
        .dirty_pages(source.region.id, Since::Mark(mark))
        .map_err(|e| remote("listing dirty pages at the source", e))?;
    let pages: u64 = last.iter().map(|range| range.count as u64).sum();
    job.source_pages.fetch_add(pages, Ordering::Relaxed);
    copy_ranges(&source, region, &last, job)?;
    Ok(format!(
        "copied {} pages from the source in {} rounds; the source's copy is now read-only",
        job.source_pages_done.load(Ordering::Relaxed),
        rounds + 1
    ))
}

/// The pages of the source's dirty list, sorted and distinct. A list naming
/// a page beyond the region is refused (it bounds the list by the region).
fn dirty_pages(region: &Region, ranges: &[PageRange]) -> Result<Vec<u64>, NodeError> {
    let page_count = region.page_count();
    let mut pages = Vec::new();
    for range in ranges {
        let end = range.start.saturating_add(range.count as u64);
        if end > page_count {
            return Err(NodeError::InvalidArgument(format!(
                "the source lists pages {}..{end} as dirty, beyond the region's {page_count}",
                range.start
            )));
        }
        pages.extend(range.start..end);
    }
    pages.sort_unstable();
    pages.dedup();
    Ok(pages)
}

/// Copies pages from the source, several reads in flight.
fn copy_ranges(
    source: &Source,
    region: &Region,
    ranges: &[PageRange],
    job: &RecoveryJob,
) -> Result<(), NodeError> {
    let mut batches: Vec<Vec<u64>> = Vec::new();
    let mut batch = Vec::with_capacity(COPY_BATCH_PAGES);
    for range in ranges {
        for page in range.start..range.start + range.count as u64 {
            batch.push(page);
            if batch.len() == COPY_BATCH_PAGES {
                batches.push(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(COPY_BATCH_PAGES),
                ));
            }
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    let page_size = region.info().page_size as usize;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failure: Mutex<Option<NodeError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..COPY_THREADS.min(batches.len()) {
            scope.spawn(|| {
                let mut buffer = vec![0u8; COPY_BATCH_PAGES * page_size];
                loop {
                    if failure.lock().is_some() {
                        return;
                    }
                    let Some(pages) = batches.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    let bytes = pages.len() * page_size;
                    let outcome = source
                        .client
                        .raw()
                        .read_pages(&source.region, pages, &mut buffer[..bytes])
                        .map_err(|e| remote("reading pages from the source", e))
                        .and_then(|()| region.restore_pages(pages, &buffer[..bytes], false));
                    match outcome {
                        Ok(()) => {
                            job.source_pages_done
                                .fetch_add(pages.len() as u64, Ordering::Relaxed);
                            job.source_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                        }
                        Err(error) => {
                            failure.lock().get_or_insert(error);
                            return;
                        }
                    }
                }
            });
        }
    });
    match failure.into_inner() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the "credentials in transit" finding: a recovery's source must
    // be an allowed peer, loopback only by default.
    #[test]
    fn only_allowed_peers_are_dialled() {
        check_peer(&[], "127.0.0.1:7070").unwrap();
        check_peer(&[], "[::1]:7070").unwrap();
        let error = check_peer(&[], "192.0.2.1:7070").unwrap_err();
        assert!(matches!(error, NodeError::PeerNotAllowed(_)), "{error}");
        assert!(error.to_string().contains("--peer"), "{error}");
        let peers: Vec<SocketAddr> = vec!["192.0.2.1:7070".parse().unwrap()];
        check_peer(&peers, "192.0.2.1:7070").unwrap();
        assert!(check_peer(&peers, "192.0.2.1:7071").is_err());
        assert!(check_peer(&peers, "127.0.0.1:7070").is_err());
        assert!(check_peer(&peers, "no port").is_err());
        // Names are not looked up, but localhost resolves on this host.
        let error = check_peer(&[], "node.example:7070").unwrap_err();
        assert!(error.to_string().contains("IP:PORT"), "{error}");
        check_peer(&[], "localhost:7070").unwrap();
    }
}
