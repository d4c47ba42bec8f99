//! Regions: the client's view of a node's region, through a local cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use pagoda_cache::policy::PolicyKind;
use pagoda_cache::{
    Backing, BackingError, CacheConfig, CacheStats, PageCache, PrefetchConfig, ReadAhead,
};
use pagoda_wire::limits::{PAGE_BYTES_MAX, PAGE_BYTES_MIN, REGION_BYTES_MAX};
use pagoda_wire::message::{encode_read_pages, encode_write_pages};
use pagoda_wire::{OpenMode, RegionInfo, Response};

use crate::client_metrics::RegionHistograms;
use crate::colocated::SharedRegion;
use crate::connection::PendingCall;
use crate::error::ClientError;
use crate::link::{Link, RegionBinding, Retry};
use crate::transaction::{
    Durability, JournalStats, LockTable, Shipping, Transaction, check_applied, conflict_backoff,
    encode_apply,
};
use crate::write_log::{WriterLog, call_numbered};
use pagoda_wire::limits::{JOURNAL_BYTES_MAX, JOURNAL_ENTRIES_MAX};

/// How a region is opened: the size of its local cache, the cache's
/// eviction policy, durability and read-ahead. Start from
/// [`RegionOptions::default`] or [`RegionOptions::with_cache_bytes`].
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let node = pagoda_node::Node::start(pagoda_node::NodeConfig::new(
/// #     "127.0.0.1:0".parse().unwrap(), 8 << 20, dir.path().into())).unwrap();
/// # let address = node.local_addr();
/// use pagoda::{Client, ClientOptions, PolicyKind, RegionOptions};
///
/// let client = Client::connect(address, ClientOptions::default())?;
/// let options = RegionOptions {
///     policy: PolicyKind::Clock,
///     ..RegionOptions::with_cache_bytes(4 * 4096) // room for 4 pages
/// };
/// let region = client.open_or_create_region("table", 1 << 20, 4096, options)?;
/// for page in 0..16u64 {
///     region.write_value(page * 4096, &page)?;
/// }
/// // 16 pages written through 4 frames: the others went to the node.
/// let stats = region.cache_stats();
/// assert_eq!(stats.frames, 4);
/// assert!(stats.evictions >= 12);
/// assert_eq!(region.read_value::<u64>(0)?, 0);
/// # Ok::<(), pagoda::ClientError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RegionOptions {
    /// RAM for the local page cache, in bytes (at least one page is used).
    pub cache_bytes: u64,
    /// The cache's eviction policy.
    pub policy: PolicyKind,
    /// How committed transactions (and, for journaled modes, plain writes)
    /// are made durable.
    pub durability: Durability,
    /// In `Local` mode, persist commits that arrive during a persist
    /// together (on by default; off gives one persist per commit).
    pub journal_coalesce: bool,
    /// Read-ahead of sequential and strided streams (on by default; see
    /// [`PrefetchConfig`]). Hints ([`Region::prefetch`]) and a reference
    /// extractor ([`Region::set_reference_extractor`]) work either way.
    pub prefetch: PrefetchConfig,
}

/// Default local cache size: 64 MiB.
pub const CACHE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions {
            cache_bytes: CACHE_BYTES_DEFAULT,
            policy: PolicyKind::default(),
            durability: Durability::default(),
            journal_coalesce: true,
            prefetch: PrefetchConfig::default(),
        }
    }
}

impl RegionOptions {
    /// Defaults with a cache of `cache_bytes`.
    pub fn with_cache_bytes(cache_bytes: u64) -> RegionOptions {
        RegionOptions {
            cache_bytes,
            ..RegionOptions::default()
        }
    }
}

/// Reads pages of the region whose id `region` gives at each attempt.
pub(crate) fn read_pages(
    link: &Link,
    region: &dyn Fn() -> u64,
    page_size: usize,
    pages: &[u64],
    out: &mut [u8],
) -> Result<(), ClientError> {
    if out.len() != pages.len() * page_size {
        return Err(ClientError::InvalidArgument(format!(
            "buffer of {} bytes for {} pages",
            out.len(),
            pages.len()
        )));
    }
    let batch = link.batch_pages_max(page_size);
    for (pages, out) in pages.chunks(batch).zip(out.chunks_mut(batch * page_size)) {
        fetch(link, region, pages, &mut [out], &|| Ok(()))?;
    }
    Ok(())
}

/// Reads `pages` (at most one batch) into `buffers`, whose lengths add up to
/// the pages' bytes; the reply's data is copied straight into them. Sent
/// again after a reconnect; `before` runs before each attempt.
fn fetch(
    link: &Link,
    region: &dyn Fn() -> u64,
    pages: &[u64],
    buffers: &mut [&mut [u8]],
    before: &dyn Fn() -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    let expected: usize = buffers.iter().map(|b| b.len()).sum();
    let reply = link.call_into_with(
        Retry::Safe,
        |buffer, id| encode_read_pages(buffer, id, 0, region(), pages),
        buffers,
        before,
    )?;
    if reply.delivered() {
        return Ok(());
    }
    // Not delivered: an error reply, or page data of the wrong size.
    let data = reply.pages_data()?;
    Err(ClientError::Protocol(format!(
        "asked for {expected} bytes of pages, got {}",
        data.len()
    )))
}

/// Writes pages of the region whose id `region` gives at each attempt.
pub(crate) fn write_pages(
    link: &Link,
    log: &WriterLog,
    region: &dyn Fn() -> u64,
    page_size: usize,
    pages: &[u64],
    buffers: &[&[u8]],
) -> Result<(), ClientError> {
    if buffers.len() != pages.len() || buffers.iter().any(|b| b.len() != page_size) {
        return Err(ClientError::InvalidArgument(
            "write needs one whole page of data per page".into(),
        ));
    }
    let batch = link.batch_pages_max(page_size);
    for (pages, buffers) in pages.chunks(batch).zip(buffers.chunks(batch)) {
        let reply = call_numbered(link, log, |buffer, id, epoch, lsn| {
            encode_write_pages(
                buffer,
                id,
                epoch,
                region(),
                lsn,
                pages,
                page_size,
                |index, out| out.extend_from_slice(buffers[index]),
            )
        })?;
        match reply.decode()? {
            Response::Done => {}
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected Done, got {:?}",
                    other.opcode()
                )));
            }
        }
    }
    Ok(())
}

/// The cache's backing store: the region's pages on the node.
pub(crate) struct RemotePages {
    pub(crate) link: Arc<Link>,
    /// The region's write log; `None` for a read-only open.
    log: Option<Arc<WriterLog>>,
    /// The region's name and (current) id.
    pub(crate) binding: Arc<RegionBinding>,
    page_size: usize,
    /// In `Local` mode: committed records go out before any fetch, so the
    /// fetch sees them.
    shipping: Option<Arc<Shipping>>,
    /// Fetch and write-back latency, for the application's metrics.
    histograms: RegionHistograms,
    /// The region's memory shared by a node on this host (co-located
    /// access), if it is.
    shared: RwLock<Option<Arc<SharedRegion>>>,
    /// When to try sharing the region again after a failed attempt.
    share_retry_at: Mutex<Option<std::time::Instant>>,
    region_bytes: u64,
}

impl RemotePages {
    /// The region's shared memory if it is current, sharing it (again) if
    /// allowed and at most once per `colocated::RETRY_AFTER` after a
    /// failure.
    fn shared_region(&self) -> Option<Arc<SharedRegion>> {
        let generation = self.link.reconnects();
        let id = self.binding.id();
        if let Some(shared) = &*self.shared.read()
            && shared.id() == id
            && shared.is_current(generation)
        {
            return Some(shared.clone());
        }
        let mut retry_at = self.share_retry_at.lock();
        let now = std::time::Instant::now();
        if retry_at.is_some_and(|at| now < at) {
            return None;
        }
        let shared = self
            .link
            .share_region(id, self.page_size, self.region_bytes)
            .map(Arc::new);
        *retry_at = shared
            .is_none()
            .then_some(now + crate::colocated::RETRY_AFTER);
        *self.shared.write() = shared.clone();
        shared
    }

    /// Copies what it can of `pages` from the shared memory into
    /// `buffers`; returns the indexes of the pages it could not.
    fn read_shared(
        &self,
        shared: &SharedRegion,
        pages: &[u64],
        buffers: &mut [&mut [u8]],
    ) -> Vec<usize> {
        let mut missing = Vec::new();
        for (index, (&page, buffer)) in pages.iter().zip(buffers.iter_mut()).enumerate() {
            if !shared.read_page(page, buffer) {
                missing.push(index);
            }
        }
        missing
    }
}

/// A read of one page sent over the connection and not waited for yet
/// (see [`RemotePages::send_page_read`]); its reply is copied into the
/// buffer it borrows.
pub(crate) struct PageRead<'a> {
    page: u64,
    buffer: &'a mut [u8],
    /// `None` when nothing was sent (the page is read when finished).
    call: Option<PendingCall>,
}

impl PageRead<'_> {
    /// Whether a request is in flight.
    pub(crate) fn in_flight(&self) -> bool {
        self.call.is_some()
    }
}

impl Drop for PageRead<'_> {
    fn drop(&mut self) {
        // Still in flight: no reader may write into the buffer once the
        // borrow ends.
        if let Some(call) = self.call.take()
            && let Some(connection) = call.connection()
        {
            connection.abandon(&call);
        }
    }
}

impl RemotePages {
    /// Sends a read of `page` into `buffer` (one page) and returns without
    /// waiting, so that the caller can work while it is in flight (a
    /// mapping's fault evicts meanwhile); [`RemotePages::finish_page_read`]
    /// waits for it. Sends nothing where a read must go another way
    /// (co-located, or with committed records to ship first): the finish
    /// reads the page then.
    pub(crate) fn send_page_read<'a>(&self, page: u64, buffer: &'a mut [u8]) -> PageRead<'a> {
        let call = if self.shipping.is_some() || self.shared_region().is_some() {
            None
        } else {
            let region = self.binding.id();
            self.link
                .send_into(
                    |out, id| encode_read_pages(out, id, 0, region, &[page]),
                    buffer,
                )
                .ok()
        };
        PageRead { page, buffer, call }
    }

    /// Waits for a read from [`RemotePages::send_page_read`]. A read that
    /// was not sent, failed, or was answered with an error is made again
    /// as [`Backing::read_pages`] makes it (with its retries and
    /// reconnects), so the outcome is that of a plain read.
    pub(crate) fn finish_page_read(&self, mut read: PageRead<'_>) -> Result<(), BackingError> {
        if let Some(call) = read.call.take() {
            let began = std::time::Instant::now();
            let delivered = self
                .link
                .wait_for(&call)
                .is_ok_and(|reply| reply.delivered());
            if let Some(connection) = call.connection() {
                // Nothing is left of a call answered or failed; abandoning
                // it makes sure no reader writes into the buffer below.
                connection.abandon(&call);
            }
            if delivered {
                self.histograms.fetch.record(began.elapsed().as_secs_f64());
                return Ok(());
            }
        }
        let page = read.page;
        self.read_pages(&[page], &mut [&mut *read.buffer])
    }
}

impl Backing for RemotePages {
    fn read_pages(&self, pages: &[u64], buffers: &mut [&mut [u8]]) -> Result<(), BackingError> {
        // In `Local` mode every committed record goes out before the fetch,
        // also before a fetch sent again after a reconnect (the shipper
        // then sends its unacknowledged records again first).
        let before = || match &self.shipping {
            Some(shipping) => shipping.send_pending(),
            None => Ok(()),
        };
        let region = || self.binding.id();
        let began = std::time::Instant::now();
        if let Some(shared) = self.shared_region() {
            // Co-located: committed records are applied by the node before
            // the pages are read from its memory. Over the connection it is
            // enough to send them first (the node serves a connection's
            // requests in order); a read from memory has no such order, so
            // it waits for their acknowledgement.
            if let Some(shipping) = &self.shipping {
                shipping.flush()?;
            }
            let missing = self.read_shared(&shared, pages, buffers);
            if !missing.is_empty() {
                // A write in progress, or the channel went down: these pages
                // over the connection.
                let mut wanted: Vec<u64> = missing.iter().map(|&index| pages[index]).collect();
                let mut rest: Vec<&mut [u8]> = buffers
                    .iter_mut()
                    .enumerate()
                    .filter(|(index, _)| missing.binary_search(index).is_ok())
                    .map(|(_, buffer)| &mut **buffer)
                    .collect();
                let batch = self.link.batch_pages_max(self.page_size);
                for (pages, buffers) in wanted.chunks_mut(batch).zip(rest.chunks_mut(batch)) {
                    fetch(&self.link, &region, pages, buffers, &before)?;
                }
            }
            self.histograms.fetch.record(began.elapsed().as_secs_f64());
            return Ok(());
        }
        let batch = self.link.batch_pages_max(self.page_size);
        for (pages, buffers) in pages.chunks(batch).zip(buffers.chunks_mut(batch)) {
            fetch(&self.link, &region, pages, buffers, &before)?;
        }
        self.histograms.fetch.record(began.elapsed().as_secs_f64());
        Ok(())
    }

    fn start_read(
        &self,
        pages: &[u64],
        mut buffer: Vec<u8>,
    ) -> Result<Box<dyn ReadAhead>, BackingError> {
        // Committed records go out first, as before a demand fetch.
        if let Some(shipping) = &self.shipping {
            shipping.send_pending()?;
        }
        if let Some(shared) = self.shared_region() {
            // Co-located: the read completes now, from shared memory (after
            // the node acknowledged the committed records, as above), or (a
            // page it could not copy) over the connection.
            if let Some(shipping) = &self.shipping {
                shipping.flush()?;
            }
            let mut buffers: Vec<&mut [u8]> = buffer.chunks_mut(self.page_size).collect();
            if self.read_shared(&shared, pages, &mut buffers).is_empty() {
                return Ok(Box::new(Served(Some(buffer))));
            }
        }
        let region = self.binding.id();
        let call = self.link.send_into(
            |out, id| encode_read_pages(out, id, 0, region, pages),
            &mut buffer,
        )?;
        Ok(Box::new(RemoteRead {
            call,
            buffer: Some(buffer),
        }))
    }

    fn write_pages(&self, pages: &[u64], buffers: &[&[u8]]) -> Result<(), BackingError> {
        let log = self.log.as_ref().ok_or_else(|| {
            ClientError::InvalidArgument("the region is open for reading only".into())
        })?;
        // A region whose writer lease is lost writes nothing more, not even
        // pages dirtied before (another host may hold the region now).
        self.binding.check_lease()?;
        let began = std::time::Instant::now();
        let written = write_pages(
            &self.link,
            log,
            &|| self.binding.id(),
            self.page_size,
            pages,
            buffers,
        );
        // A lease lost during the write ends the writer role on the node
        // (the refusal is then `NotWriter`): say why.
        if written.is_err() {
            self.binding.check_lease()?;
        }
        written?;
        self.histograms
            .write_back
            .record(began.elapsed().as_secs_f64());
        Ok(())
    }
}

/// A read-ahead served from shared memory when it was started.
struct Served(Option<Vec<u8>>);

impl ReadAhead for Served {
    fn poll(&mut self, _receive: bool) -> Option<Result<Vec<u8>, BackingError>> {
        self.0.take().map(Ok)
    }
}

/// A read-ahead sent to the node: its reply lands in `buffer`.
struct RemoteRead {
    call: PendingCall,
    /// `None` once handed out.
    buffer: Option<Vec<u8>>,
}

impl ReadAhead for RemoteRead {
    fn poll(&mut self, receive: bool) -> Option<Result<Vec<u8>, BackingError>> {
        self.buffer.as_ref()?;
        let connection = self.call.connection().expect("sent through the link");
        let reply = match connection.poll(&self.call, receive)? {
            Ok(reply) => reply,
            Err(error) => {
                self.buffer = None;
                return Some(Err(error.into()));
            }
        };
        let buffer = self.buffer.take().expect("checked above");
        if reply.delivered() {
            return Some(Ok(buffer));
        }
        Some(Err(match reply.pages_data() {
            Ok(data) => ClientError::Protocol(format!(
                "asked for {} bytes of pages, got {}",
                buffer.len(),
                data.len()
            )),
            Err(error) => error,
        }
        .into()))
    }
}

impl Drop for RemoteRead {
    fn drop(&mut self) {
        // Still in flight: no reader may write into the buffer once it goes.
        if self.buffer.is_some()
            && let Some(connection) = self.call.connection()
        {
            connection.abandon(&self.call);
        }
    }
}

/// A region opened through a local cache. `Send + Sync`: share it between
/// threads with an `Arc`.
///
/// Writes land in the local cache and reach the node when their pages are
/// evicted or when [`Region::flush`] is called; dropping a region flushes it
/// on a best-effort basis (errors are logged), so call `flush` to know.
/// One connection at a time may write a region (the node enforces it with
/// the region's writer role, taken by [`crate::Client::open_region`]); any
/// number may read it ([`crate::Client::open_region_read_only`]). Caches of
/// different clients are not kept coherent.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let node = pagoda_node::Node::start(pagoda_node::NodeConfig::new(
/// #     "127.0.0.1:0".parse().unwrap(), 8 << 20, dir.path().into())).unwrap();
/// # let address = node.local_addr();
/// use pagoda::{Client, ClientOptions, RegionOptions};
///
/// let client = Client::connect(address, ClientOptions::default())?;
/// client.create_region("notes", 1 << 20, 4096)?;
/// let writer = client.open_region("notes", RegionOptions::with_cache_bytes(1 << 20))?;
/// writer.write_at(4090, b"across a page boundary")?; // any byte range
/// writer.flush()?; // on the node now, for every reader
/// // Another client, as another process would, reads with a cold cache.
/// let other = Client::connect(address, ClientOptions::default())?;
/// let reader = other.open_region_read_only("notes", RegionOptions::default())?;
/// let mut back = [0u8; 22];
/// reader.read_at(4090, &mut back)?;
/// assert_eq!(&back, b"across a page boundary");
/// assert!(reader.write_at(0, b"no").is_err(), "opened for reading only");
/// # Ok::<(), pagoda::ClientError>(())
/// ```
pub struct Region {
    info: RegionInfo,
    mode: OpenMode,
    /// Shared with the client's list of open regions
    /// ([`crate::Client::flush_on_signal`] flushes it from another thread).
    cache: Arc<RegionCache>,
    durability: Durability,
    locks: LockTable,
    commits: AtomicU64,
    conflicts: AtomicU64,
    remote_commit_ids: AtomicU64,
    /// The writer lease of a cluster client's write open, given back after
    /// the handle's flush and close (fields drop after `Drop::drop`).
    writer: Option<crate::cluster::WriterHold>,
}

/// A region's local cache over its pages on the node.
pub(crate) type RegionCache = PageCache<RemotePages>;

/// What a flush sent to the node.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flushed {
    /// Dirty pages written back.
    pub(crate) pages: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// Journal records shipped (`Local` mode).
    pub(crate) records: u64,
}

/// Flushes a region's cache as [`Region::flush`] does, counting what went
/// to the node: the pages written back meanwhile (evictions by concurrent
/// writers included), or the journal records that were not yet
/// acknowledged.
pub(crate) fn flush_counted(cache: &RegionCache) -> Result<Flushed, ClientError> {
    match &cache.backing().shipping {
        Some(shipping) => {
            let records = shipping.stats(0, 0).lag_records;
            shipping.flush()?;
            Ok(Flushed {
                records,
                ..Flushed::default()
            })
        }
        None => {
            let before = cache.stats().pages_written_back;
            cache.flush()?;
            let pages = cache.stats().pages_written_back.saturating_sub(before);
            Ok(Flushed {
                pages,
                bytes: pages * cache.page_size() as u64,
                records: 0,
            })
        }
    }
}

/// The name of the region a cache holds.
pub(crate) fn name_of(cache: &RegionCache) -> &str {
    cache.backing().binding.name()
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region").field("info", &self.info).finish()
    }
}

impl Region {
    /// A handle on a region just opened through `link` (one open of
    /// `binding`, in `mode`), given back when the handle is dropped or
    /// fails to build.
    pub(crate) fn new(
        link: Arc<Link>,
        info: RegionInfo,
        options: RegionOptions,
        binding: Arc<RegionBinding>,
        mode: OpenMode,
    ) -> Result<Region, ClientError> {
        let built = Region::build(link.clone(), info, options, binding.clone(), mode);
        if built.is_err() {
            link.close(&binding, mode);
        }
        built
    }

    fn build(
        link: Arc<Link>,
        info: RegionInfo,
        options: RegionOptions,
        binding: Arc<RegionBinding>,
        mode: OpenMode,
    ) -> Result<Region, ClientError> {
        let log = match mode {
            OpenMode::Write => Some(binding.log().expect("a write open has a write log").clone()),
            OpenMode::Read => None,
        };
        // The node is a peer: check the shape it reports against the same
        // limits it enforces, before sizing the cache and page table by it.
        let page_size = info.page_size as usize;
        let shape_valid = info.page_size.is_power_of_two()
            && (PAGE_BYTES_MIN..=PAGE_BYTES_MAX).contains(&info.page_size)
            && info.size > 0
            && info.size <= REGION_BYTES_MAX
            && info.size.is_multiple_of(page_size as u64);
        if !shape_valid {
            return Err(ClientError::Protocol(format!(
                "the node described region {:?} with an invalid shape ({} bytes in pages of {})",
                info.name, info.size, info.page_size
            )));
        }
        if mode == OpenMode::Read && options.durability.journaled() {
            return Err(ClientError::InvalidArgument(format!(
                "region {:?}: a read-only open takes no journaled durability mode \
                 (its writes would have nowhere to go); open it with Durability::WriteBack",
                info.name
            )));
        }
        let config = CacheConfig {
            capacity_bytes: options.cache_bytes,
            page_size,
            region_bytes: info.size,
            policy: options.policy,
            batch_pages_max: link.batch_pages_max(page_size),
            prefetch: options.prefetch,
        };
        let shipping = match &options.durability {
            Durability::Local { journal_dir } => Some(Shipping::open(
                journal_dir,
                pagoda_journal::JournalOptions {
                    coalesce: options.journal_coalesce,
                    ..pagoda_journal::JournalOptions::default()
                },
                link.clone(),
                log.clone().expect("a journaled region is open for writing"),
                binding.clone(),
            )?),
            Durability::WriteBack | Durability::Remote => None,
        };
        let backing = RemotePages {
            link,
            log,
            binding,
            page_size,
            shipping,
            histograms: RegionHistograms::new(&info.name),
            shared: RwLock::new(None),
            share_retry_at: Mutex::new(None),
            region_bytes: info.size,
        };
        // Co-located access is set up now rather than at the first miss, so
        // that `Client::transport` says at once which path reads take.
        let _ = backing.shared_region();
        Ok(Region {
            cache: Arc::new(PageCache::new(config, backing)),
            info,
            mode,
            durability: options.durability,
            locks: LockTable::default(),
            commits: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            remote_commit_ids: AtomicU64::new(0),
            writer: None,
        })
    }

    /// This handle, holding `writer` (a cluster client's writer lease on
    /// the region) until it is dropped.
    pub(crate) fn with_writer(mut self, writer: crate::cluster::WriterHold) -> Region {
        self.writer = Some(writer);
        self
    }

    /// The cache, for the client's list of open regions.
    pub(crate) fn cache(&self) -> &Arc<RegionCache> {
        &self.cache
    }

    pub(crate) fn locks(&self) -> &LockTable {
        &self.locks
    }

    /// Runs `body` as a transaction and commits its writes; see the
    /// `transaction` module documentation for isolation and durability.
    /// When it returns `Ok`, the writes are durable under the region's
    /// durability mode, and after any crash either all of them are present
    /// or none. If `body` returns an error the transaction is abandoned and
    /// nothing is written. `body` may run more than once (after a conflict
    /// with another transaction), so it should have no other side effects.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let node = pagoda_node::Node::start(pagoda_node::NodeConfig::new(
    /// #     "127.0.0.1:0".parse().unwrap(), 8 << 20, dir.path().into())).unwrap();
    /// # let address = node.local_addr();
    /// use pagoda::{Client, ClientError, ClientOptions, Durability, RegionOptions};
    ///
    /// let client = Client::connect(address, ClientOptions::default())?;
    /// // Remote: a commit returns once the node has persisted it.
    /// let options = RegionOptions { durability: Durability::Remote, ..RegionOptions::default() };
    /// let region = client.open_or_create_region("ledger", 1 << 20, 4096, options)?;
    /// region.write_value(0, &100u64)?;
    /// let left = region.transaction(|tx| {
    ///     let balance = tx.read_value::<u64>(0)? - 10;
    ///     tx.write_value(0, &balance)?;
    ///     tx.write_value(8192, &10u64)?; // another page, in the same commit
    ///     Ok(balance)
    /// })?;
    /// assert_eq!(left, 90);
    /// // A body that fails writes nothing.
    /// let refused = region.transaction(|tx| {
    ///     tx.write_value(0, &0u64)?;
    ///     Err::<(), _>(ClientError::InvalidArgument("overdrawn".into()))
    /// });
    /// assert!(refused.is_err());
    /// assert_eq!(region.read_value::<u64>(0)?, 90);
    /// # Ok::<(), ClientError>(())
    /// ```
    pub fn transaction<T>(
        &self,
        mut body: impl FnMut(&mut Transaction<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut attempt = 0u32;
        loop {
            let mut tx = Transaction {
                region: self,
                tx: self.locks.begin(),
                held: Vec::new(),
                writes: Vec::new(),
                conflicted: false,
            };
            let result = body(&mut tx);
            if tx.conflicted {
                drop(tx);
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                conflict_backoff(attempt);
                attempt = attempt.saturating_add(1);
                continue;
            }
            let value = result?;
            self.commit(&tx)?;
            return Ok(value);
        }
    }

    fn commit(&self, tx: &Transaction<'_>) -> Result<(), ClientError> {
        if tx.writes.is_empty() {
            return Ok(());
        }
        self.check_writable()?;
        let bytes: usize = tx.writes.iter().map(|(_, data)| data.len()).sum();
        if self.durability.journaled()
            && (bytes > JOURNAL_BYTES_MAX || tx.writes.len() > JOURNAL_ENTRIES_MAX)
        {
            return Err(ClientError::InvalidArgument(format!(
                "a transaction writes at most {JOURNAL_BYTES_MAX} bytes in {JOURNAL_ENTRIES_MAX} \
                 writes; this one writes {bytes} bytes in {}",
                tx.writes.len()
            )));
        }
        match &self.durability {
            Durability::WriteBack => {
                for (offset, data) in &tx.writes {
                    self.cache.write_at(*offset, data)?;
                }
            }
            Durability::Local { .. } => {
                let shipping = self
                    .cache
                    .backing()
                    .shipping
                    .as_ref()
                    .expect("a Local region has a journal");
                let mut record = shipping.journal.begin();
                for (offset, data) in &tx.writes {
                    record.push(self.info.id, *offset, data);
                }
                shipping
                    .journal
                    .commit(record)
                    .map_err(|e| ClientError::Journal(format!("commit failed: {e}")))?;
                // Durable from here on. Shipping now keeps the lag short; if
                // it fails the record stays in the journal for the next open.
                if let Err(error) = shipping.send_pending() {
                    tracing::warn!(%error, "shipping a committed record failed");
                }
                for (offset, data) in &tx.writes {
                    self.cache.update_resident(*offset, data)?;
                }
            }
            Durability::Remote => {
                let writes: Vec<(u64, &[u8])> = tx
                    .writes
                    .iter()
                    .map(|(offset, data)| (*offset, data.as_slice()))
                    .collect();
                let id = self.remote_commit_ids.fetch_add(1, Ordering::Relaxed) + 1;
                let backing = self.cache.backing();
                let log = backing
                    .log
                    .as_ref()
                    .expect("a journaled region is open for writing");
                let reply = call_numbered(&backing.link, log, |out, request, epoch, lsn| {
                    let region = backing.binding.id();
                    encode_apply(out, request, epoch, region, lsn, id, &writes)
                })?;
                check_applied(reply)?;
                for (offset, data) in &tx.writes {
                    self.cache.update_resident(*offset, data)?;
                }
            }
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The region's durability mode.
    pub fn durability(&self) -> &Durability {
        &self.durability
    }

    /// Commits, persists and the shipping lag (records and milliseconds not
    /// yet acknowledged by the node, `Local` mode).
    pub fn journal_stats(&self) -> JournalStats {
        let commits = self.commits.load(Ordering::Relaxed);
        let conflicts = self.conflicts.load(Ordering::Relaxed);
        match &self.cache.backing().shipping {
            Some(shipping) => shipping.stats(conflicts, commits),
            None => JournalStats {
                commits,
                conflicts,
                ..JournalStats::default()
            },
        }
    }

    /// Whether the region was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.mode == OpenMode::Read
    }

    fn check_writable(&self) -> Result<(), ClientError> {
        if self.mode == OpenMode::Read {
            return Err(ClientError::InvalidArgument(format!(
                "region {:?} was opened read-only; open it with Client::open_region to write",
                self.info.name
            )));
        }
        // A fenced handle (a newer writer took the region over) or one
        // whose earlier write's outcome is unknown takes no more writes; nor
        // does one whose writer lease is lost.
        if let Some(log) = &self.cache.backing().log {
            log.check()?;
        }
        self.cache.backing().binding.check_lease()
    }

    /// Whether a newer writer took the region over while this handle
    /// reconnected: every write through it fails with `StaleEpoch`.
    pub fn is_fenced(&self) -> bool {
        self.cache
            .backing()
            .log
            .as_ref()
            .is_some_and(|log| log.is_fenced())
    }

    /// The address of the node this handle's requests go to now (after a
    /// failover: the new primary).
    pub fn peer(&self) -> std::net::SocketAddr {
        self.cache.backing().link.peer()
    }

    /// How many times the connection this handle's requests go through was
    /// made again after it failed (shared by every region of a client made
    /// with `Client::connect`; a cluster client has one per region).
    pub fn reconnects(&self) -> u64 {
        self.cache.backing().link.reconnects()
    }

    /// The region's description.
    pub fn info(&self) -> &RegionInfo {
        &self.info
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.info.size
    }

    /// Whether the region is empty (never: regions have at least one page).
    pub fn is_empty(&self) -> bool {
        self.info.size == 0
    }

    /// Page size in bytes.
    pub fn page_size(&self) -> usize {
        self.info.page_size as usize
    }

    /// Reads `buf.len()` bytes at `offset`; any range within the region.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        Ok(self.cache.read_at(offset, buf)?)
    }

    /// Reads several ranges at once, each `(offset, buffer)` filled as
    /// [`Region::read_at`] would: the pages none of them has in the local
    /// cache are fetched together, so independent misses (the records a
    /// lookup needs, the rows of a join) cost one round trip rather than one
    /// each. Ranges may be in any order and may overlap; if any is outside
    /// the region, nothing is read and the error says which.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let node = pagoda_node::Node::start(pagoda_node::NodeConfig::new(
    /// #     "127.0.0.1:0".parse().unwrap(), 32 << 20, dir.path().into())).unwrap();
    /// # let client = pagoda::Client::connect(node.local_addr(), Default::default())?;
    /// let options = pagoda::RegionOptions::default();
    /// let region = client.open_or_create_region("rows", 16 << 20, 4096, options)?;
    /// region.write_at(4096 * 100, b"row 100")?;
    /// region.write_at(4096 * 3000, b"row 3000")?;
    /// let (mut a, mut b) = ([0u8; 7], [0u8; 8]);
    /// region.read_many(&mut [(4096 * 3000, &mut b[..]), (4096 * 100, &mut a[..])])?;
    /// assert_eq!((&a, &b), (b"row 100", b"row 3000"));
    /// # Ok::<(), pagoda::ClientError>(())
    /// ```
    pub fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> Result<(), ClientError> {
        Ok(self.cache.read_many(reads)?)
    }

    /// Writes `buf` at `offset`; any range within the region. In a
    /// journaled mode (`Local`, `Remote`) this is a one-write transaction.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), ClientError> {
        self.check_writable()?;
        if self.durability.journaled() {
            return self.transaction(|tx| tx.write_at(offset, buf));
        }
        Ok(self.cache.write_at(offset, buf)?)
    }

    /// Returns once everything written before the call is on the node: dirty
    /// pages (write-back mode) or committed records (`Local` mode).
    pub fn flush(&self) -> Result<(), ClientError> {
        match &self.cache.backing().shipping {
            Some(shipping) => shipping.flush(),
            None => Ok(self.cache.flush()?),
        }
    }

    /// The local cache's counters, read-ahead's included.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Hints that the bytes at `offsets` will be used soon: their pages are
    /// fetched now, without waiting, and kept if they arrive within
    /// `deadline`. One that does not is dropped and fetched on demand when
    /// used, as if no hint had been given; nothing ever waits for a hint.
    /// Returns the pages sent (those not resident and not already on their
    /// way). An offset outside the region is an error.
    pub fn prefetch(
        &self,
        offsets: &[u64],
        deadline: std::time::Duration,
    ) -> Result<usize, ClientError> {
        Ok(self.cache.prefetch(offsets, deadline)?)
    }

    /// Tells the region which pages refer to which: when a page is used for
    /// the first time after it arrived, `extract(bytes, out)` pushes onto
    /// `out` the region offsets the page refers to (the record ids of an
    /// index page, the children of a tree node), and those pages are read
    /// ahead with `deadline`, as [`Region::prefetch`] does. Offsets outside
    /// the region are ignored and counted in
    /// [`CacheStats::references_invalid`]. The extractor runs on the
    /// accessing thread while the page is pinned: it must be quick and must
    /// not call into this region.
    pub fn set_reference_extractor(
        &self,
        extract: impl Fn(&[u8], &mut Vec<u64>) + Send + Sync + 'static,
        deadline: std::time::Duration,
    ) {
        self.cache
            .set_reference_extractor(Some(Arc::new(extract)), deadline);
    }

    /// Removes the reference extractor.
    pub fn clear_reference_extractor(&self) {
        self.cache
            .set_reference_extractor(None, std::time::Duration::ZERO);
    }

    /// The local cache's eviction policy.
    pub fn policy_name(&self) -> &'static str {
        self.cache.policy_name()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Some(shipping) = &self.cache.backing().shipping {
            shipping.close();
        } else if let Err(error) = self.cache.flush() {
            tracing::warn!(region = %self.info.name, %error, "flush on drop failed; unflushed writes are lost");
        }
        // Give back this handle's open (for writing: its hold on the writer
        // role). If the connection has failed, the node has released it
        // already, and a reconnect grants one open fewer.
        let backing = self.cache.backing();
        backing.link.close(&backing.binding, self.mode);
    }
}
