//! The journal: micro-journals, commit with coalesced persists, release and reclamation.

use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::device::{Device, FileStorage, Storage};
use crate::format::{self, SegmentHeader};
use crate::recovery::{self, RecoveryReport};
use crate::{CommitId, Entry, JournalError, Record};

/// Micro-journals kept on the free list; more are dropped when they come back.
const FREE_MICRO_JOURNALS_MAX: usize = 256;
/// A micro-journal whose buffers hold more than this goes back to the allocator rather
/// than the free list, so one huge transaction does not pin its memory for good.
const RECYCLED_MICRO_JOURNAL_BYTES_MAX: usize = 4 << 20;
/// Spare data buffers one micro-journal keeps for reuse by `push`.
const SPARE_BUFFERS_MAX: usize = 1024;
/// The smallest segment size accepted (a header and a few small records).
pub const SEGMENT_BYTES_MIN: u64 = 1024;
/// The most `JournalOptions::preallocate_bytes` may ask for.
pub const PREALLOCATE_BYTES_MAX: u64 = 1 << 30;
/// The least a segment is zeroed ahead of its tail at a time (if `preallocate_bytes`
/// allows that much). A segment is zeroed ahead by as much as it holds, between this and
/// `preallocate_bytes`, so a journal that sees little traffic keeps a small file.
const ZERO_AHEAD_BYTES_MIN: u64 = 64 << 10;
/// Bytes of zeros one `write_at` call writes while pre-zeroing.
const ZERO_WRITE_BYTES: usize = 256 << 10;
/// The zeros pre-zeroing writes from.
static ZEROS: [u8; ZERO_WRITE_BYTES] = [0; ZERO_WRITE_BYTES];
/// The longest a leader waits for committers still writing before it persists.
const GATHER_WAIT_US_MAX: u64 = 1000;
/// The most times a gathering leader yields its CPU before it persists anyway.
const GATHER_YIELDS_MAX: u32 = 10_000;

/// What recovery does when it finds damage that acknowledged commits lie beyond.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnCorruption {
    /// Refuse to open: return `JournalError::Corrupt` and change nothing.
    #[default]
    Fail,
    /// Salvage: keep the valid prefix, truncate the log at the damage, and discard every
    /// record after it (acknowledged or not). For an operator who has decided to accept
    /// the loss.
    Truncate,
}

/// How a journal behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalOptions {
    /// Persist commits that arrive during a persist together, with the next one.
    pub coalesce: bool,
    /// A segment file is closed and a new one started when a record would take it past
    /// this size. A record larger than this gets a segment of its own.
    pub segment_bytes: u64,
    /// The largest record (header and entries) a commit may write, and recovery read.
    pub record_bytes_max: u64,
    /// What recovery does about damage that acknowledged commits lie beyond.
    pub on_corruption: OnCorruption,
    /// How far ahead of its tail, at most, the active segment is kept written with zeros
    /// (never past `segment_bytes`, unless a record itself goes further). A record then
    /// overwrites allocated blocks inside the file's size, so the persist covering it
    /// needs no file-system metadata write; the file grows, and a persist writes
    /// metadata, once per chunk of zeros. A chunk is as large as the segment already is,
    /// from 64 KiB up to this, so a quiet journal's file stays small. 0 appends to a
    /// growing file instead.
    pub preallocate_bytes: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            coalesce: true,
            segment_bytes: 64 << 20,
            record_bytes_max: 64 << 20,
            on_corruption: OnCorruption::Fail,
            preallocate_bytes: 1 << 20,
        }
    }
}

impl JournalOptions {
    fn validate(&self) -> Result<(), JournalError> {
        let header = format::RECORD_HEADER_BYTES as u64;
        if self.record_bytes_max < header || self.record_bytes_max > format::RECORD_BYTES_LIMIT {
            return Err(JournalError::InvalidOptions(format!(
                "record_bytes_max is {}; it must be between {header} and {}",
                self.record_bytes_max,
                format::RECORD_BYTES_LIMIT
            )));
        }
        if self.segment_bytes < SEGMENT_BYTES_MIN {
            return Err(JournalError::InvalidOptions(format!(
                "segment_bytes is {}; it must be at least {SEGMENT_BYTES_MIN}",
                self.segment_bytes
            )));
        }
        if self.preallocate_bytes > PREALLOCATE_BYTES_MAX {
            return Err(JournalError::InvalidOptions(format!(
                "preallocate_bytes is {}; it must be at most {PREALLOCATE_BYTES_MAX}",
                self.preallocate_bytes
            )));
        }
        Ok(())
    }
}

/// Counters since the journal was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Commits reported durable.
    pub commits: u64,
    /// Persists completed: each makes durable every record written before it began, and
    /// may cover many commits.
    pub persists: u64,
    /// `Device::sync` calls made by persists (a persist after a rotation syncs the
    /// closed segment too).
    pub syncs: u64,
    /// Bytes appended to the log (records, including release markers).
    pub bytes_appended: u64,
    /// Bytes of zeros written ahead of the tail (see `JournalOptions::preallocate_bytes`).
    pub bytes_zeroed: u64,
    /// `release_through` calls that released something.
    pub releases: u64,
    /// Segments created by rotation.
    pub segments_created: u64,
    /// Segments removed because all their records were released.
    pub segments_removed: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    persists: AtomicU64,
    syncs: AtomicU64,
    bytes_appended: AtomicU64,
    bytes_zeroed: AtomicU64,
    releases: AtomicU64,
    segments_created: AtomicU64,
    segments_removed: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }
}

/// A segment before the active one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SegmentSpan {
    pub sequence: u64,
    /// The highest commit id in the segment (or below its first id, if it holds none).
    pub last_id: CommitId,
}

/// The segment appends go to.
pub(crate) struct ActiveSegment {
    pub sequence: u64,
    /// Its format version; the journal appends only to a segment in the current one.
    pub version: u16,
    pub device: Arc<dyn Device>,
    /// Where the next record goes.
    pub offset: u64,
    /// Every byte from `offset` up to here is zero (written as zeros, or never written in
    /// a file that was created or truncated); at least `offset`.
    pub zeroed_end: u64,
}

/// What the commit lock guards: the id and the log's tail.
struct LogState {
    next_id: CommitId,
    /// Records (commits and release markers) appended since open; each record's
    /// position in this count is its *ticket*, which orders it for the persist logic.
    tickets: u64,
    active: ActiveSegment,
    sealed: VecDeque<SegmentSpan>,
}

/// What the persist logic guards.
struct SyncState {
    /// The highest ticket whose bytes are fully written, the highest commit id written
    /// by then, and the device it went to.
    written_ticket: u64,
    written_id: CommitId,
    written_device: Option<Arc<dyn Device>>,
    /// The sequence number of `written_device`'s segment.
    written_sequence: u64,
    /// Segments closed by rotation whose bytes no persist has covered yet.
    sealed: Vec<Arc<dyn Device>>,
    /// Whether a segment was created since the last persist (its directory entry must be
    /// persisted before records in it count as durable).
    directory_dirty: bool,
    /// Every ticket up to this one is durable.
    durable_ticket: u64,
    /// A leader is persisting.
    syncing: bool,
    /// Threads waiting for the running persist to end, each woken by the leader when it
    /// does (one per waiting thread at most).
    sleepers: Vec<thread::Thread>,
}

/// Counts a thread inside `commit` or `release_through` for as long as it lives.
struct Inside<'a>(&'a AtomicU64);

impl<'a> Inside<'a> {
    fn enter(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reusable transaction buffer. Take one with [`Journal::begin`], add writes with
/// [`MicroJournal::push`], and hand it to [`Journal::commit`]. Entries are encoded into
/// the log format as they are pushed, so committing only stamps the id and writes.
pub struct MicroJournal {
    /// The record being built; never shared until commit.
    record: Arc<Record>,
    /// The encoded record: a header placeholder, then the encoded entries.
    frame: Vec<u8>,
    /// CRC-32C of the encoded entries.
    body_crc: u32,
    /// Data buffers from recycled records, reused by `push`.
    spare: Vec<Vec<u8>>,
}

impl MicroJournal {
    fn from_parts(shell: Shell, mut record: Arc<Record>) -> Self {
        let Shell {
            mut frame,
            mut spare,
        } = shell;
        let owned = Arc::get_mut(&mut record).expect("free-list records are unshared");
        owned.id = 0;
        for entry in owned.entries.drain(..) {
            if spare.len() < SPARE_BUFFERS_MAX {
                spare.push(entry.data);
            }
        }
        format::start_frame(&mut frame);
        Self {
            record,
            frame,
            body_crc: 0,
            spare,
        }
    }

    /// Adds one write: `data` at byte `offset` of `region`.
    pub fn push(&mut self, region: u64, offset: u64, data: &[u8]) {
        let record = Arc::get_mut(&mut self.record).expect("a micro-journal owns its record");
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(data);
        record.entries.push(Entry {
            region,
            offset,
            data: buffer,
        });
        self.body_crc = format::append_entry(&mut self.frame, self.body_crc, region, offset, data);
    }

    /// Whether no write was pushed.
    pub fn is_empty(&self) -> bool {
        self.record.entries.is_empty()
    }

    /// The writes pushed so far.
    pub fn entries(&self) -> &[Entry] {
        &self.record.entries
    }

    /// Bytes the record will occupy in the log (checked against `record_bytes_max`).
    pub fn record_bytes(&self) -> u64 {
        self.frame.len() as u64
    }

    /// Drops every write pushed so far, keeping the buffers.
    pub fn clear(&mut self) {
        let record = Arc::get_mut(&mut self.record).expect("a micro-journal owns its record");
        for entry in record.entries.drain(..) {
            if self.spare.len() < SPARE_BUFFERS_MAX {
                self.spare.push(entry.data);
            }
        }
        format::start_frame(&mut self.frame);
        self.body_crc = 0;
    }
}

impl fmt::Debug for MicroJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MicroJournal")
            .field("entries", &self.record.entries.len())
            .field("record_bytes", &self.frame.len())
            .finish()
    }
}

/// A micro-journal's buffers without its record (which travels to the in-flight list
/// at commit and comes back at release).
#[derive(Default)]
struct Shell {
    frame: Vec<u8>,
    spare: Vec<Vec<u8>>,
}

impl Shell {
    fn bytes(&self) -> usize {
        self.frame.capacity() + self.spare.iter().map(Vec::capacity).sum::<usize>()
    }
}

#[derive(Default)]
struct FreeList {
    shells: Vec<Shell>,
    records: Vec<Arc<Record>>,
}

/// A durable log of transactions on the application's host (capability C8).
///
/// Each transaction is built in a [`MicroJournal`] taken from a free list. [`commit`]
/// takes the commit lock, stamps the next commit id into the record's header, appends
/// the record to the log, bumps the id and lets go of the lock; it returns once a
/// persist has made the record durable. Persists are coalesced: commits that arrive
/// while one persist runs share the next. Committed records stay on an in-flight list,
/// for a shipper to send on, until [`release_through`] says they are safe elsewhere;
/// then their log segments are reclaimed. [`Journal::open`] recovers a crashed log.
///
/// [`commit`]: Journal::commit
/// [`release_through`]: Journal::release_through
pub struct Journal {
    storage: Arc<dyn Storage>,
    options: JournalOptions,
    /// The commit lock.
    log: Mutex<LogState>,
    sync: Mutex<SyncState>,
    /// Counts the persists that ended (successfully or not); a waiting thread sleeps
    /// until it changes.
    persists_ended: AtomicU64,
    /// Held around every `sync` and `sync_directory` call, so no two run at once: with
    /// concurrent fsyncs on one file, Linux reports a writeback error to only one of them.
    persist_lock: Mutex<()>,
    /// Serialises segment reclamation, so segments are removed strictly oldest first.
    reclaim_lock: Mutex<()>,
    /// Committed records not yet released, in id order.
    inflight: Mutex<VecDeque<Arc<Record>>>,
    free: Mutex<FreeList>,
    /// Every commit id up to this one is durable. Only grows, and only after a persist.
    durable_id: AtomicU64,
    /// Every segment up to this sequence number has been made durable (its header
    /// with it): by recovery, or by a persist whose target was in it (which also
    /// synced every segment closed before). Only grows. A segment is removed only if
    /// the one after it, which becomes the oldest, is at or below this.
    segments_durable: AtomicU64,
    /// Threads inside `commit` or `release_through` (between entering and returning).
    committers: AtomicU64,
    /// Copies of `SyncState::written_ticket` and `durable_ticket`, for a gathering leader
    /// to read without the lock; each is stored under the lock when its original changes.
    written_ticket: AtomicU64,
    durable_ticket: AtomicU64,
    /// How long the last persist took, in nanoseconds.
    persist_ns_last: AtomicU64,
    released_id: AtomicU64,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    counters: Counters,
    recovery: RecoveryReport,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("storage", &self.storage)
            .field("durable_id", &self.durable_id())
            .field("released_id", &self.released_id())
            .field("failed", &self.failed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, runs recovery, and returns the
    /// journal with the committed, unreleased records in commit-id order, for the caller
    /// to replay. The same records are on the in-flight list ([`Journal::unreleased`]).
    pub fn open(
        dir: &Path,
        options: JournalOptions,
    ) -> Result<(Journal, Vec<Arc<Record>>), JournalError> {
        let storage = FileStorage::open(dir)?;
        Self::open_with(Arc::new(storage), options)
    }

    /// [`Journal::open`] over any storage (a fault-injecting one, in tests).
    pub fn open_with(
        storage: Arc<dyn Storage>,
        options: JournalOptions,
    ) -> Result<(Journal, Vec<Arc<Record>>), JournalError> {
        options.validate()?;
        let recovered = recovery::recover(&*storage, &options)?;
        let records: Vec<Arc<Record>> = recovered.records.into_iter().map(Arc::new).collect();
        let durable_id = recovered.next_id - 1;
        // Recovery synced every segment it kept.
        let active_sequence = recovered.active.sequence;
        let journal = Journal {
            storage,
            options,
            log: Mutex::new(LogState {
                next_id: recovered.next_id,
                tickets: 0,
                active: recovered.active,
                sealed: recovered.sealed,
            }),
            sync: Mutex::new(SyncState {
                written_ticket: 0,
                written_id: durable_id,
                written_device: None,
                written_sequence: 0,
                sealed: Vec::new(),
                directory_dirty: false,
                durable_ticket: 0,
                syncing: false,
                sleepers: Vec::new(),
            }),
            persists_ended: AtomicU64::new(0),
            persist_lock: Mutex::new(()),
            reclaim_lock: Mutex::new(()),
            inflight: Mutex::new(records.iter().cloned().collect()),
            free: Mutex::new(FreeList::default()),
            durable_id: AtomicU64::new(durable_id),
            segments_durable: AtomicU64::new(active_sequence),
            committers: AtomicU64::new(0),
            written_ticket: AtomicU64::new(0),
            durable_ticket: AtomicU64::new(0),
            persist_ns_last: AtomicU64::new(0),
            released_id: AtomicU64::new(recovered.released_id),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            counters: Counters::default(),
            recovery: recovered.report,
        };
        Ok((journal, records))
    }

    /// Takes a micro-journal from the free list (or makes one if the list is empty).
    pub fn begin(&self) -> MicroJournal {
        let (shell, record) = {
            let mut free = self.free.lock();
            (free.shells.pop(), free.records.pop())
        };
        MicroJournal::from_parts(
            shell.unwrap_or_default(),
            record.unwrap_or_else(|| Arc::new(Record::default())),
        )
    }

    /// Returns a micro-journal to the free list without committing it.
    pub fn discard(&self, micro_journal: MicroJournal) {
        let MicroJournal {
            record,
            frame,
            spare,
            ..
        } = micro_journal;
        self.recycle_shell(Shell { frame, spare });
        self.recycle_record(record);
    }

    /// Commits a transaction and returns its record once it is durable.
    ///
    /// Under the commit lock: stamps the next commit id (and the highest id already
    /// durable) into the record's header, writes the record to the log, bumps the id,
    /// and lets go. Then waits for a persist that began after the write (see
    /// `wait_durable`). With `coalesce` off, the persist runs under the commit lock, one
    /// per commit. On an error nothing is reported durable; a failed write or persist
    /// latches the journal, so this and every later commit fails.
    pub fn commit(&self, micro_journal: MicroJournal) -> Result<Arc<Record>, JournalError> {
        let MicroJournal {
            mut record,
            mut frame,
            body_crc,
            spare,
        } = micro_journal;
        let result = self.commit_frame(&mut record, &mut frame, body_crc);
        self.recycle_shell(Shell { frame, spare });
        match result {
            Ok(()) => Ok(record),
            Err(error) => {
                self.recycle_record(record);
                Err(error)
            }
        }
    }

    fn commit_frame(
        &self,
        record: &mut Arc<Record>,
        frame: &mut [u8],
        body_crc: u32,
    ) -> Result<(), JournalError> {
        self.check_failed()?;
        let _inside = Inside::enter(&self.committers);
        let record_bytes = frame.len() as u64;
        if record_bytes > self.options.record_bytes_max {
            return Err(JournalError::RecordTooLarge {
                bytes: record_bytes,
                max: self.options.record_bytes_max,
            });
        }
        let entry_count = u32::try_from(record.entries.len())
            .expect("each entry takes 24 bytes, so record_bytes_max bounds the count");

        let mut log = self.log.lock();
        self.check_failed()?;
        let id = log.next_id;
        if id > format::COMMIT_ID_MAX {
            // Recovery refuses such a record, so writing it would lose the commit.
            return Err(JournalError::IdsExhausted { id });
        }
        let durable = self.durable_id.load(Ordering::Acquire);
        let (device, sequence) = self.append(&mut log, frame, |frame, sequence| {
            format::seal_commit(frame, id, durable, entry_count, body_crc, sequence);
        })?;
        log.next_id = id + 1;
        let ticket = log.tickets;
        Arc::get_mut(record)
            .expect("a micro-journal owns its record")
            .id = id;
        // Pushed in id order under the commit lock; `unreleased` hands out only durable ones.
        self.inflight.lock().push_back(Arc::clone(record));
        if self.options.coalesce {
            drop(log);
        }
        // Without coalescing this runs with the commit lock held, so this committer is
        // always the leader and persists its own record alone.
        self.wait_durable(ticket, id, device, sequence)?;
        Counters::add(&self.counters.commits, 1);
        Ok(())
    }

    /// Appends one record at the log's tail, rotating first if it would overfill the
    /// active segment (or the active segment is in an older format). `seal` fills in the
    /// record's header once the segment it goes to is known: it is given the frame and
    /// that segment's sequence number. A failed write latches the journal.
    fn append(
        &self,
        log: &mut MutexGuard<'_, LogState>,
        frame: &mut [u8],
        seal: impl FnOnce(&mut [u8], u64),
    ) -> Result<(Arc<dyn Device>, u64), JournalError> {
        let length = frame.len() as u64;
        let fresh = log.active.offset == format::SEGMENT_HEADER_BYTES as u64;
        let full = !fresh && log.active.offset + length > self.options.segment_bytes;
        if full || log.active.version != format::FORMAT_VERSION {
            self.rotate(log)?;
        }
        seal(frame, log.active.sequence);
        self.zero_ahead(log, length)?;
        let device = Arc::clone(&log.active.device);
        if let Err(error) = device.write_at(log.active.offset, frame) {
            return Err(self.latch(JournalError::io(
                format!(
                    "writing {length} bytes at byte {} of journal segment {}",
                    log.active.offset, log.active.sequence
                ),
                error,
            )));
        }
        log.active.offset += length;
        log.active.zeroed_end = log.active.zeroed_end.max(log.active.offset);
        log.tickets += 1;
        Counters::add(&self.counters.bytes_appended, length);
        Ok((device, log.active.sequence))
    }

    /// Before a record of `length` bytes goes to the tail: if it would pass the active
    /// segment's zeroed end, writes zeros from past the record to some way beyond it (as
    /// far as the segment already reaches, at least `ZERO_AHEAD_BYTES_MIN`, at most
    /// `preallocate_bytes`, and never past `segment_bytes`), so the records after it
    /// overwrite blocks already allocated inside the file. The zeros need not be durable for anything to be
    /// correct (recovery reads nothing beyond the valid records as a record); the persist
    /// that covers the record writes them, and the file's new size, along with it.
    fn zero_ahead(
        &self,
        log: &mut MutexGuard<'_, LogState>,
        length: u64,
    ) -> Result<(), JournalError> {
        let preallocate = self.options.preallocate_bytes;
        let active = &mut log.active;
        let end = active.offset + length;
        if preallocate == 0 || end <= active.zeroed_end {
            return Ok(());
        }
        let ahead = end.max(ZERO_AHEAD_BYTES_MIN).min(preallocate);
        let target = (end + ahead).min(self.options.segment_bytes.max(end));
        let mut at = end.max(active.zeroed_end);
        // Bounded: each pass advances `at` by at least one byte toward `target`.
        while at < target {
            let piece = (target - at).min(ZERO_WRITE_BYTES as u64);
            if let Err(error) = active.device.write_at(at, &ZEROS[..piece as usize]) {
                return Err(self.latch(JournalError::io(
                    format!(
                        "writing zeros at byte {at} of journal segment {}",
                        active.sequence
                    ),
                    error,
                )));
            }
            Counters::add(&self.counters.bytes_zeroed, piece);
            at += piece;
        }
        active.zeroed_end = target.max(end);
        Ok(())
    }

    /// Closes the active segment and starts the next. The new segment's header and
    /// directory entry, and the rest of the closed segment, become durable with the next
    /// persist, which covers every record after them.
    fn rotate(&self, log: &mut MutexGuard<'_, LogState>) -> Result<(), JournalError> {
        let Some(sequence) = log.active.sequence.checked_add(1) else {
            return Err(self.latch(JournalError::io(
                "rotating the journal",
                std::io::Error::other("segment sequence numbers are exhausted"),
            )));
        };
        let device = self.storage.create(sequence).map_err(|error| {
            self.latch(JournalError::io(
                format!("creating journal segment {sequence}"),
                error,
            ))
        })?;
        let header = SegmentHeader::new(sequence, log.next_id);
        device.write_at(0, &header.encode()).map_err(|error| {
            self.latch(JournalError::io(
                format!("writing the header of journal segment {sequence}"),
                error,
            ))
        })?;
        let closed = mem::replace(
            &mut log.active,
            ActiveSegment {
                sequence,
                version: format::FORMAT_VERSION,
                device,
                offset: format::SEGMENT_HEADER_BYTES as u64,
                zeroed_end: format::SEGMENT_HEADER_BYTES as u64,
            },
        );
        let last_id = log.next_id - 1;
        log.sealed.push_back(SegmentSpan {
            sequence: closed.sequence,
            last_id,
        });
        {
            // Registered before any record goes to the new segment, so any leader whose
            // target lies in the new segment also persists the closed one.
            let mut sync = self.sync.lock();
            sync.sealed.push(closed.device);
            sync.directory_dirty = true;
        }
        Counters::add(&self.counters.segments_created, 1);
        Ok(())
    }

    /// Returns once every record up to `ticket` is durable, persisting as the leader if
    /// no persist is under way.
    ///
    /// # Why a commit never returns before its record is durable
    ///
    /// Records are written one at a time, in ticket order, under the commit lock; a
    /// committer publishes `(ticket, id, device)` into `written_*` only after its write
    /// returned. So when a leader reads `written_ticket = T`, every record with ticket
    /// at most `T` has been completely written. The leader then, with no lock held,
    /// syncs the closed segments registered by rotations (every closed segment that holds
    /// a record up to `T` was registered before that record's successor in the next
    /// segment was written, hence before `T` was published; or an earlier persist took and
    /// synced it), the directory if a segment was created, and the device of ticket `T`.
    /// Each sync covers every byte written before it began, so when all succeed, every
    /// record up to `T` is durable, and only then does the leader set
    /// `durable_ticket = T`. A committer returns only when `durable_ticket` reaches its own
    /// ticket, that is, after a persist that began after its write completed.
    ///
    /// Coalescing: at most one leader persists at a time (`syncing`). Committers that
    /// publish while it runs wait; when it ends, one of them leads the next persist, which
    /// covers all of them. Before it reads its target, a leader briefly waits for threads
    /// inside `commit` that have not written yet (`gather`), bounded by half the last
    /// persist's duration. A lone committer finds no persist running and nobody else
    /// inside, and leads exactly one persist without any added delay. Gathering only
    /// moves the moment the target is read; everything above holds for any target.
    ///
    /// Waiting: a committer that finds a persist running registers itself and sleeps
    /// with no lock held. When the persist ends, the leader stores `durable_ticket`,
    /// bumps `persists_ended`, and wakes every sleeper itself, so they wake in parallel
    /// (a condition variable would hand them the lock one after another); a sleeper
    /// whose ticket is covered returns without taking the lock again, and the others
    /// take it to lead or wait for the next persist.
    ///
    /// Failure: if a persist fails, or any write failed meanwhile, the leader does not
    /// advance `durable_ticket` and the journal is latched; every waiter then sees the
    /// latch and returns an error, and no later persist can mark anything durable,
    /// because the latch is checked before `durable_ticket` moves.
    fn wait_durable(
        &self,
        ticket: u64,
        id: CommitId,
        device: Arc<dyn Device>,
        sequence: u64,
    ) -> Result<(), JournalError> {
        let mut sync = self.sync.lock();
        if ticket > sync.written_ticket {
            sync.written_ticket = ticket;
            sync.written_id = id;
            sync.written_device = Some(device);
            sync.written_sequence = sequence;
            self.written_ticket.store(ticket, Ordering::Release);
        }
        loop {
            if sync.durable_ticket >= ticket {
                return Ok(());
            }
            if self.failed.load(Ordering::Acquire) {
                return Err(self.failed_error());
            }
            if sync.syncing {
                // Sleep until this persist ends, without the lock: the leader wakes every
                // sleeper directly, and one whose record it covered returns without
                // taking the lock again.
                let ended = self.persists_ended.load(Ordering::Acquire);
                sync.sleepers.push(thread::current());
                drop(sync);
                // Bounded by the running persist: its leader bumps `persists_ended` and
                // then unparks every sleeper. `park` may return early; the loop re-checks.
                while self.persists_ended.load(Ordering::Acquire) == ended {
                    thread::park();
                }
                // `durable_ticket` was stored before `persists_ended` moved.
                if self.durable_ticket.load(Ordering::Acquire) >= ticket {
                    return Ok(());
                }
                sync = self.sync.lock();
                continue;
            }
            sync.syncing = true;
            if self.options.coalesce {
                MutexGuard::unlocked(&mut sync, || self.gather());
            }
            let target_ticket = sync.written_ticket;
            let target_id = sync.written_id;
            let target_device = sync
                .written_device
                .clone()
                .expect("a published ticket names its device");
            let target_sequence = sync.written_sequence;
            let sealed = mem::take(&mut sync.sealed);
            let directory = mem::replace(&mut sync.directory_dirty, false);
            let result = MutexGuard::unlocked(&mut sync, || {
                let started = Instant::now();
                let result = self.persist(&sealed, directory, &*target_device);
                let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.persist_ns_last.store(took, Ordering::Relaxed);
                result
            });
            sync.syncing = false;
            let outcome = match result {
                Ok(()) if !self.failed.load(Ordering::Acquire) => {
                    sync.durable_ticket = target_ticket;
                    self.durable_ticket.store(target_ticket, Ordering::Release);
                    self.durable_id.fetch_max(target_id, Ordering::AcqRel);
                    self.segments_durable
                        .fetch_max(target_sequence, Ordering::AcqRel);
                    Counters::add(&self.counters.persists, 1);
                    Ok(())
                }
                Ok(()) => Err(self.failed_error()),
                Err(error) => Err(self.latch(error)),
            };
            self.persists_ended.fetch_add(1, Ordering::AcqRel);
            let sleepers = mem::take(&mut sync.sleepers);
            debug_assert!(
                outcome.is_err() || sync.durable_ticket >= ticket,
                "the leader covered itself"
            );
            drop(sync);
            for sleeper in sleepers {
                sleeper.unpark();
            }
            return outcome;
        }
    }

    /// Before a leader picks what its persist covers: waits, yielding the CPU, while some
    /// thread inside `commit` has not written its record yet, so that one persist covers
    /// it too, instead of it missing this persist and paying for the next.
    ///
    /// Without this, committers on a busy machine split into two cohorts that alternate:
    /// the one a persist releases is still waking up when the next persist begins, with
    /// only the other. A thread is counted from entering `commit` to returning, and has at
    /// most one record not yet durable, so while the threads inside outnumber the records
    /// written and not yet durable, someone is about to write one (or is still returning
    /// from the last persist). A lone committer never waits: it is the only one inside,
    /// with its record written. The wait is bounded by half the last persist's duration
    /// (and `GATHER_WAIT_US_MAX`), so it never costs more than a persist would save.
    fn gather(&self) {
        let persist_ns_last = self.persist_ns_last.load(Ordering::Relaxed);
        let bound = Duration::from_nanos(persist_ns_last / 2)
            .min(Duration::from_micros(GATHER_WAIT_US_MAX));
        let started = Instant::now();
        for _ in 0..GATHER_YIELDS_MAX {
            let pending = self
                .written_ticket
                .load(Ordering::Acquire)
                .saturating_sub(self.durable_ticket.load(Ordering::Acquire));
            if self.committers.load(Ordering::Acquire) <= pending || started.elapsed() >= bound {
                return;
            }
            thread::yield_now();
        }
    }

    /// Makes the closed segments, the directory (if asked) and `device` durable.
    fn persist(
        &self,
        sealed: &[Arc<dyn Device>],
        directory: bool,
        device: &dyn Device,
    ) -> Result<(), JournalError> {
        let _persisting = self.persist_lock.lock();
        for closed in sealed {
            closed
                .sync()
                .map_err(|error| JournalError::io("persisting a closed journal segment", error))?;
            Counters::add(&self.counters.syncs, 1);
        }
        if directory {
            self.storage
                .sync_directory()
                .map_err(|error| JournalError::io("persisting the journal directory", error))?;
        }
        device
            .sync()
            .map_err(|error| JournalError::io("persisting the journal", error))?;
        Counters::add(&self.counters.syncs, 1);
        Ok(())
    }

    /// Says that every commit through `id` is safe elsewhere (applied and persisted by
    /// the memory node, or covered by a checkpoint). Appends a release marker and waits
    /// for it to be durable, so reopening never returns those records again; drops them
    /// from the in-flight list; and removes log segments whose records are all released.
    /// Releasing an id at or below the current release point does nothing.
    pub fn release_through(&self, id: CommitId) -> Result<(), JournalError> {
        self.check_failed()?;
        if id <= self.released_id() {
            return Ok(());
        }
        let durable = self.durable_id();
        if id > durable {
            return Err(JournalError::ReleaseBeyondDurable { id, durable });
        }
        {
            let _inside = Inside::enter(&self.committers);
            let mut log = self.log.lock();
            self.check_failed()?;
            let durable = self.durable_id.load(Ordering::Acquire);
            let mut marker = [0u8; format::RECORD_HEADER_BYTES];
            let (device, sequence) = self.append(&mut log, &mut marker, |marker, sequence| {
                marker.copy_from_slice(&format::release_marker(id, durable, sequence));
            })?;
            let ticket = log.tickets;
            let written_id = log.next_id - 1;
            if self.options.coalesce {
                drop(log);
            }
            self.wait_durable(ticket, written_id, device, sequence)?;
        }
        self.released_id.fetch_max(id, Ordering::AcqRel);
        Counters::add(&self.counters.releases, 1);

        let released = self.released_id();
        {
            let mut inflight = self.inflight.lock();
            while inflight.front().is_some_and(|record| record.id <= released) {
                if let Some(record) = inflight.pop_front() {
                    self.recycle_record(record);
                }
            }
        }
        self.reclaim(released)
    }

    /// Removes closed segments whose records are all released, oldest first, persisting
    /// the directory after each removal so the files left never have a gap. A segment
    /// goes only once the one after it has been made durable: that one becomes the
    /// oldest, and a crash must not leave an oldest segment whose header never reached
    /// the disk (recovery could not tell the commit ids it continues). A segment kept for
    /// that reason goes at a later release.
    fn reclaim(&self, released: CommitId) -> Result<(), JournalError> {
        let _reclaiming = self.reclaim_lock.lock();
        let mut doomed = Vec::new();
        {
            let mut log = self.log.lock();
            let durable = self.segments_durable.load(Ordering::Acquire);
            while log
                .sealed
                .front()
                .is_some_and(|span| span.last_id <= released && span.sequence < durable)
            {
                doomed.extend(log.sealed.pop_front());
            }
        }
        for (index, span) in doomed.iter().enumerate() {
            let removed = {
                let _persisting = self.persist_lock.lock();
                self.storage.remove(span.sequence).map(|()| {
                    self.storage.sync_directory().map_err(|error| {
                        self.latch(JournalError::io("persisting the journal directory", error))
                    })
                })
            };
            match removed {
                Ok(synced) => synced?,
                Err(error) => {
                    // Keep the segments for a later release (or the next recovery).
                    let mut log = self.log.lock();
                    for span in doomed[index..].iter().rev() {
                        log.sealed.push_front(*span);
                    }
                    return Err(JournalError::io(
                        format!("removing released journal segment {}", span.sequence),
                        error,
                    ));
                }
            }
            Counters::add(&self.counters.segments_removed, 1);
        }
        Ok(())
    }

    /// Committed, durable records with id above `after`, at most `max` of them, in id
    /// order: what a shipper sends next.
    pub fn unreleased(&self, after: CommitId, max: usize) -> Vec<Arc<Record>> {
        let durable = self.durable_id();
        let inflight = self.inflight.lock();
        let start = inflight.partition_point(|record| record.id <= after);
        inflight
            .range(start..)
            .take_while(|record| record.id <= durable)
            .take(max)
            .cloned()
            .collect()
    }

    /// The highest commit id that is durable (every id up to it is).
    pub fn durable_id(&self) -> CommitId {
        self.durable_id.load(Ordering::Acquire)
    }

    /// The highest released commit id.
    pub fn released_id(&self) -> CommitId {
        self.released_id.load(Ordering::Acquire)
    }

    /// The id the next commit will get.
    pub fn next_id(&self) -> CommitId {
        self.log.lock().next_id
    }

    /// Counters since open.
    pub fn stats(&self) -> JournalStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        JournalStats {
            commits: load(&self.counters.commits),
            persists: load(&self.counters.persists),
            syncs: load(&self.counters.syncs),
            bytes_appended: load(&self.counters.bytes_appended),
            bytes_zeroed: load(&self.counters.bytes_zeroed),
            releases: load(&self.counters.releases),
            segments_created: load(&self.counters.segments_created),
            segments_removed: load(&self.counters.segments_removed),
        }
    }

    /// What recovery found and did when the journal was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The options the journal runs with.
    pub fn options(&self) -> &JournalOptions {
        &self.options
    }

    /// The first failure, if the journal is latched failed.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    /// Latches the journal failed (first cause wins) and passes the error on.
    fn latch(&self, error: JournalError) -> JournalError {
        let mut failure = self.failure.lock();
        if failure.is_none() {
            tracing::error!(%error, "journal failed; refusing further commits");
            *failure = Some(error.to_string());
        }
        self.failed.store(true, Ordering::Release);
        error
    }

    fn check_failed(&self) -> Result<(), JournalError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.failed_error());
        }
        Ok(())
    }

    fn failed_error(&self) -> JournalError {
        JournalError::Failed {
            cause: self
                .failure
                .lock()
                .clone()
                .unwrap_or_else(|| "unknown".into()),
        }
    }

    fn recycle_shell(&self, shell: Shell) {
        if shell.bytes() > RECYCLED_MICRO_JOURNAL_BYTES_MAX {
            return;
        }
        let mut free = self.free.lock();
        if free.shells.len() < FREE_MICRO_JOURNALS_MAX {
            free.shells.push(shell);
        }
    }

    /// Puts a record back on the free list if nobody else holds it (a shipper may).
    fn recycle_record(&self, mut record: Arc<Record>) {
        let Some(owned) = Arc::get_mut(&mut record) else {
            return;
        };
        let bytes: usize = owned
            .entries
            .iter()
            .map(|entry| entry.data.capacity())
            .sum();
        if bytes > RECYCLED_MICRO_JOURNAL_BYTES_MAX {
            return;
        }
        let mut free = self.free.lock();
        if free.records.len() < FREE_MICRO_JOURNALS_MAX {
            free.records.push(record);
        }
    }
}
