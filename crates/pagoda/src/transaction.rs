//! Transactions: atomic, isolated and (by the region's durability mode)
//! durable updates of several ranges at once.
//!
//! **Isolation.** A transaction locks every page it reads or writes, for its
//! whole life (strict two-phase locking, one exclusive lock per page), so
//! transactions touching a common page serialize and the outcome is
//! serializable; transactions on disjoint pages run in parallel. A lock held
//! by another transaction is never waited for: the transaction is aborted
//! (its writes were only buffered) and re-run after a randomized backoff, so
//! there is no deadlock. Reads inside a transaction see its own writes.
//! Plain `read_at` outside transactions takes no lock and sees each
//! transaction's writes all at once or (while it commits) partly.
//!
//! **Durability.** In `Local` mode a commit appends one record to the
//! region's journal on this host (a micro-journal with commit coalescing:
//! `pagoda-journal`), which is durable when the commit returns; a shipper
//! sends committed records to the node in commit order, and the node persists
//! and applies each (`ApplyJournal`) before acknowledging it, after which the
//! local record is released. In `Remote` mode there is no local journal: the
//! commit sends its record and returns once the node has persisted it.
//!
//! **Why the cache stays right.** In both modes a committed write reaches the
//! node only as a journal record, and in the cache it only updates pages that
//! are resident, leaving them clean: a durable region's cache never writes
//! pages back. Records are sent in commit order; before any page is fetched,
//! every committed record is sent first, and one connection is served in
//! order, so a fetch always sees every transaction committed before it.
//!
//! **Reconnects.** The shipper keeps each sent batch of records, with the
//! epoch and log sequence number it was numbered with, until the node
//! acknowledges it. When the connection fails the link reconnects and the
//! shipper sends every unacknowledged batch again, in order, with the same
//! numbers (the node applies each number once), before any new record, and
//! before the fetch that follows the reconnect: that fetch too first sends
//! whatever was left on the failed connection. Shipping stops only if the
//! reconnect fails (or a newer writer took the region over).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pagoda_journal::{CommitId, Journal, JournalOptions, Record};
use pagoda_wire::{Request, Response};
use parking_lot::{Condvar, Mutex};

use crate::connection::{Connection, PendingCall};
use crate::error::ClientError;
use crate::link::{CALL_RECONNECTS_MAX, Link, MOVE_PAUSE_MIN, RegionBinding, connection_failure};
use crate::write_log::{RETRY_FOR, WriterLog, take_number, unnumbered};
use pagoda_wire::limits::{JOURNAL_BYTES_MAX, JOURNAL_ENTRIES_MAX};

/// How a region's committed transactions are made durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// No journal: writes stay in the local cache until evicted or flushed.
    /// Transactions are atomic and isolated in this process, not durable.
    #[default]
    WriteBack,
    /// A commit is durable in a journal on this host (fsync) when it returns
    /// and is shipped to the node in the background.
    Local {
        /// The region's journal directory (one per region).
        journal_dir: PathBuf,
    },
    /// A commit returns once the node has persisted it.
    Remote,
}

impl Durability {
    /// Whether commits (and plain writes, which become one-write
    /// transactions) go through journal records.
    pub fn journaled(&self) -> bool {
        !matches!(self, Durability::WriteBack)
    }
}

/// The shipping lag of a region in `Local` mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Transactions committed (all modes).
    pub commits: u64,
    /// Persists of the local journal (fewer than commits when coalesced).
    pub persists: u64,
    /// Records committed but not yet acknowledged by the node.
    pub lag_records: u64,
    /// Age of the oldest record not yet acknowledged, in milliseconds.
    pub lag_ms: u64,
    /// Records acknowledged by the node since the region was opened.
    pub shipped: u64,
    /// Transactions re-run after a lock conflict.
    pub conflicts: u64,
    /// Why shipping stopped, if it did (the records stay in the journal
    /// and are replayed when the region is opened again).
    pub failure: Option<String>,
}

/// Page locks of the transactions in flight on one region.
#[derive(Default)]
pub(crate) struct LockTable {
    owners: Mutex<HashMap<u64, u64>>,
    next_tx: AtomicU64,
}

impl LockTable {
    pub(crate) fn begin(&self) -> u64 {
        self.next_tx.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Locks pages `first..=last` for `tx`, recording new ones in `held`;
    /// false if another transaction holds one (nothing new is kept then).
    fn lock(&self, tx: u64, first: u64, last: u64, held: &mut Vec<u64>) -> bool {
        let mut owners = self.owners.lock();
        let before = held.len();
        for page in first..=last {
            match owners.get(&page) {
                Some(&owner) if owner == tx => {}
                Some(_) => {
                    for page in held.drain(before..) {
                        owners.remove(&page);
                    }
                    return false;
                }
                None => {
                    owners.insert(page, tx);
                    held.push(page);
                }
            }
        }
        true
    }

    fn unlock(&self, held: &mut Vec<u64>) {
        let mut owners = self.owners.lock();
        for page in held.drain(..) {
            owners.remove(&page);
        }
    }
}

/// A transaction in progress, given to the body of
/// [`Region::transaction`](crate::Region::transaction) (which shows one):
/// reads and writes through it are atomic and isolated, and durable as the
/// region's [`Durability`] says. Byte ranges with
/// [`Transaction::read_at`] and [`Transaction::write_at`], typed values
/// with [`Transaction::read_value`] and the like. See the module
/// documentation.
pub struct Transaction<'a> {
    pub(crate) region: &'a crate::Region,
    pub(crate) tx: u64,
    pub(crate) held: Vec<u64>,
    pub(crate) writes: Vec<(u64, Vec<u8>)>,
    pub(crate) conflicted: bool,
}

impl Transaction<'_> {
    fn lock_range(&mut self, offset: u64, len: usize) -> Result<(), ClientError> {
        if self.conflicted {
            return Err(ClientError::Conflict);
        }
        let size = self.region.len();
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > size) {
            return Err(ClientError::OutOfRange {
                offset,
                len: len as u64,
                size,
            });
        }
        if len == 0 {
            return Ok(());
        }
        let page_size = self.region.page_size() as u64;
        let (first, last) = (offset / page_size, (offset + len as u64 - 1) / page_size);
        if self
            .region
            .locks()
            .lock(self.tx, first, last, &mut self.held)
        {
            Ok(())
        } else {
            self.conflicted = true;
            Err(ClientError::Conflict)
        }
    }

    /// Reads `buf.len()` bytes at `offset`, including this transaction's own
    /// writes. Returns `ClientError::Conflict` if another transaction holds
    /// one of the pages: propagate it (with `?`) and the transaction re-runs.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        self.lock_range(offset, buf.len())?;
        self.region.read_at(offset, buf)?;
        let end = offset + buf.len() as u64;
        for (at, data) in &self.writes {
            let (start, stop) = ((*at).max(offset), (at + data.len() as u64).min(end));
            if start < stop {
                buf[(start - offset) as usize..(stop - offset) as usize]
                    .copy_from_slice(&data[(start - at) as usize..(stop - at) as usize]);
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset` when the transaction commits.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.lock_range(offset, data.len())?;
        if !data.is_empty() {
            self.writes.push((offset, data.to_vec()));
        }
        Ok(())
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        self.region.locks().unlock(&mut self.held);
    }
}

/// Sleeps a little longer after each conflict, with jitter.
pub(crate) fn conflict_backoff(attempt: u32) {
    let ceiling = 1u64 << attempt.min(10); // up to ~1 ms
    let micros = rand_below(ceiling) + 1;
    if micros < 4 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(micros));
    }
}

fn rand_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState is freshly keyed: enough randomness for a backoff.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(bound);
    hasher.finish() % bound.max(1)
}

/// Encodes a record's writes as an `ApplyJournal` request.
pub(crate) fn encode_apply(
    out: &mut Vec<u8>,
    request_id: u64,
    epoch: u64,
    region: u64,
    lsn: u64,
    commit_id: u64,
    writes: &[(u64, &[u8])],
) {
    Request::ApplyJournal {
        region,
        lsn,
        commit_id,
        entries: writes.to_vec(),
    }
    .encode(out, request_id, epoch);
}

/// Checks an `ApplyJournal` reply.
pub(crate) fn check_applied(reply: crate::connection::Reply) -> Result<(), ClientError> {
    match reply.decode()? {
        Response::Done => Ok(()),
        other => Err(ClientError::Protocol(format!(
            "expected Done, got {:?}",
            other.opcode()
        ))),
    }
}

/// Records sent together in one `ApplyJournal`, not yet acknowledged.
struct Shipment {
    /// The highest commit id among them.
    id: CommitId,
    /// The records, kept to send them again after a reconnect.
    records: Vec<Arc<Record>>,
    /// The writer epoch and log sequence number it was numbered with, for
    /// good: it is sent again with the same.
    epoch: u64,
    lsn: u64,
    /// When it was first sent.
    sent: Instant,
    /// Where it is on the wire; `None`: it must be sent (again).
    on: Option<OnWire>,
    /// Bumped at each send, so that the shipper knows whether the call it
    /// waited for is still the one that counts.
    sends: u64,
}

/// A shipment's request on a connection.
struct OnWire {
    connection: Arc<Connection>,
    generation: u64,
    call: PendingCall,
}

struct ShipState {
    /// The highest id sent.
    last_sent: CommitId,
    /// Sent, awaiting the node's reply, in id (and number) order.
    pending: VecDeque<Shipment>,
    failure: Option<String>,
    stop: bool,
    /// Since when the node has been leaving the front shipment unnumbered
    /// (`Busy`, `LogGap`).
    refused_since: Option<Instant>,
}

/// The local journal of a `Local` region and its shipper.
pub(crate) struct Shipping {
    pub(crate) journal: Arc<Journal>,
    link: Arc<Link>,
    log: Arc<WriterLog>,
    /// The region's (current) id.
    binding: Arc<RegionBinding>,
    state: Mutex<ShipState>,
    changed: Condvar,
    /// The highest id the node has acknowledged (all below it too).
    acked: AtomicU64,
    shipped: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Acknowledged shipments after which the shipper releases them.
const RELEASE_BATCH: u64 = 256;
/// Idle time after which the shipper releases what was acknowledged.
const RELEASE_IDLE: Duration = Duration::from_millis(50);
/// Records sent per `send_pending` call at most (the rest on the next).
const SEND_BATCH: usize = 4096;
/// The pause before sending shipments again that the node left unnumbered.
const REFUSED_PAUSE: Duration = Duration::from_millis(1);

/// A batch's writes, as `ApplyJournal` entries.
fn writes_of(records: &[Arc<Record>]) -> Vec<(u64, &[u8])> {
    records
        .iter()
        .flat_map(|record| record.entries.iter())
        .map(|entry| (entry.offset, entry.data.as_slice()))
        .collect()
}

impl Shipping {
    /// Opens the journal in `dir` and starts the shipper; records left from
    /// before (committed, never acknowledged) are sent at once, and the call
    /// returns when the node has acknowledged them all.
    pub(crate) fn open(
        dir: &std::path::Path,
        options: JournalOptions,
        link: Arc<Link>,
        log: Arc<WriterLog>,
        binding: Arc<RegionBinding>,
    ) -> Result<Arc<Shipping>, ClientError> {
        let (journal, replay) = Journal::open(dir, options).map_err(|e| {
            ClientError::Journal(format!("opening the journal in {}: {e}", dir.display()))
        })?;
        let released = journal.released_id();
        let shipping = Arc::new(Shipping {
            journal: Arc::new(journal),
            link,
            log,
            binding,
            state: Mutex::new(ShipState {
                last_sent: released,
                pending: VecDeque::new(),
                failure: None,
                stop: false,
                refused_since: None,
            }),
            changed: Condvar::new(),
            acked: AtomicU64::new(released),
            shipped: AtomicU64::new(0),
            thread: Mutex::new(None),
        });
        let thread_shipping = shipping.clone();
        let handle = std::thread::Builder::new()
            .name("pagoda-shipper".into())
            .spawn(move || thread_shipping.run())
            .map_err(|e| ClientError::Journal(format!("starting the shipper: {e}")))?;
        *shipping.thread.lock() = Some(handle);
        if !replay.is_empty() {
            tracing::info!(
                records = replay.len(),
                "replaying journal records the node has not acknowledged"
            );
            shipping.send_pending()?;
            shipping.wait_shipped(replay.last().map_or(0, |r| r.id))?;
        }
        Ok(shipping)
    }

    /// The thread woken when a shipment's reply arrives: the shipper.
    fn waiter(&self) -> std::thread::Thread {
        self.thread
            .lock()
            .as_ref()
            .map(|handle| handle.thread().clone())
            .unwrap_or_else(std::thread::current)
    }

    /// Sends every committed record not sent yet, in id order, after
    /// sending again whatever a failed connection left unacknowledged.
    pub(crate) fn send_pending(&self) -> Result<(), ClientError> {
        let mut state = self.state.lock();
        if let Some(failure) = &state.failure {
            return Err(ClientError::Journal(format!("shipping failed: {failure}")));
        }
        let waiter = self.waiter();
        self.resend(&mut state, &waiter)?;
        let mut attempts = 0;
        loop {
            let records = self.journal.unreleased(state.last_sent, SEND_BATCH);
            if records.is_empty() {
                break;
            }
            // Consecutive records travel together in one request, which the
            // node persists with one sync: under load, shipping keeps up
            // with coalesced commits instead of paying a sync per record.
            let mut start = 0;
            while start < records.len() {
                let (mut end, mut bytes, mut entries) = (start, 0usize, 0usize);
                while end < records.len() {
                    let record = &records[end];
                    let record_bytes: usize = record.entries.iter().map(|e| e.data.len()).sum();
                    let fits = bytes + record_bytes <= JOURNAL_BYTES_MAX
                        && entries + record.entries.len() <= JOURNAL_ENTRIES_MAX;
                    if end > start && !fits {
                        break;
                    }
                    bytes += record_bytes;
                    entries += record.entries.len();
                    end += 1;
                }
                let batch: Vec<Arc<Record>> = records[start..end].to_vec();
                let last = batch.last().expect("a batch has a record").id;
                let writes = writes_of(&batch);
                let (connection, generation) = self.link.current();
                // Numbered under the connection's writer lock (and this
                // state's lock), so records go out in the order of their
                // numbers.
                let mut number = None;
                let sent = connection.send(
                    |out, id| {
                        let (epoch, lsn) = take_number(&self.log);
                        number = Some((epoch, lsn));
                        encode_apply(out, id, epoch, self.binding.id(), lsn, last, &writes)
                    },
                    waiter.clone(),
                );
                drop(writes);
                let Some((epoch, lsn)) = number else {
                    // Refused before it was numbered: the connection had
                    // failed. Reconnect (sending again what it left) and
                    // try this batch again.
                    let error = sent.err().unwrap_or_else(|| {
                        ClientError::Protocol("a request sent without being encoded".into())
                    });
                    attempts += 1;
                    if attempts > CALL_RECONNECTS_MAX || !connection_failure(&error) {
                        return Err(self.fail_locked(&mut state, error));
                    }
                    if let Err(error) = self.link.reconnect(generation) {
                        return Err(self.fail_locked(&mut state, error));
                    }
                    self.resend(&mut state, &waiter)?;
                    continue;
                };
                let numbered = sent.is_ok();
                state.pending.push_back(Shipment {
                    id: last,
                    records: batch,
                    epoch,
                    lsn,
                    sent: Instant::now(),
                    on: sent.ok().map(|call| OnWire {
                        connection,
                        generation,
                        call,
                    }),
                    sends: 1,
                });
                state.last_sent = last;
                start = end;
                if !numbered {
                    // Numbered, and perhaps not sent whole: send it again
                    // (after a reconnect) before anything else.
                    self.resend(&mut state, &waiter)?;
                }
            }
        }
        self.changed.notify_all();
        Ok(())
    }

    /// Sends again, in order and with their original epochs and numbers,
    /// the pending shipments that are not on the current connection (sent
    /// on one that failed, or left unnumbered by the node), reconnecting if
    /// the connection has failed. Runs under the state lock, so that no new
    /// record goes out ahead of them.
    fn resend(
        &self,
        state: &mut ShipState,
        waiter: &std::thread::Thread,
    ) -> Result<(), ClientError> {
        let mut reconnects = 0;
        loop {
            let (connection, generation) = self.link.current();
            let first = state.pending.iter().position(|shipment| {
                shipment
                    .on
                    .as_ref()
                    .is_none_or(|on| on.generation != generation)
            });
            let Some(first) = first else {
                return Ok(());
            };
            if connection.is_failed() {
                reconnects += 1;
                let reconnected = if reconnects > CALL_RECONNECTS_MAX {
                    Err(ClientError::Disconnected(
                        "the connection kept failing".into(),
                    ))
                } else {
                    self.link.reconnect(generation)
                };
                if let Err(error) = reconnected.and_then(|()| self.log.check()) {
                    return Err(self.fail_locked(state, error));
                }
                continue;
            }
            let region = self.binding.id();
            for shipment in state.pending.iter_mut().skip(first) {
                let writes = writes_of(&shipment.records);
                let (epoch, lsn, last) = (shipment.epoch, shipment.lsn, shipment.id);
                let sent = connection.send(
                    |out, id| encode_apply(out, id, epoch, region, lsn, last, &writes),
                    waiter.clone(),
                );
                shipment.sends += 1;
                match sent {
                    Ok(call) => {
                        shipment.on = Some(OnWire {
                            connection: connection.clone(),
                            generation,
                            call,
                        });
                    }
                    Err(_) => {
                        // The connection failed: the loop reconnects.
                        shipment.on = None;
                        break;
                    }
                }
            }
        }
    }

    /// Stops shipping for good (the records stay in the journal, replayed
    /// at the next open), and returns `error`.
    fn fail_locked(&self, state: &mut ShipState, error: ClientError) -> ClientError {
        tracing::warn!(%error, "shipping journal records failed; they stay in the journal");
        if state.failure.is_none() {
            state.failure = Some(error.to_string());
        }
        state.pending.clear();
        self.changed.notify_all();
        error
    }

    fn run(self: Arc<Shipping>) {
        let mut unreleased = 0u64;
        let waiter = std::thread::current();
        loop {
            let front = {
                let mut state = self.state.lock();
                loop {
                    if state.failure.is_some() {
                        break None;
                    }
                    if let Some(front) = state.pending.front() {
                        let on = front
                            .on
                            .as_ref()
                            .map(|on| (on.connection.clone(), on.generation, on.call.clone()));
                        break Some((front.id, front.sends, on));
                    }
                    if state.stop {
                        break None;
                    }
                    if unreleased > 0 {
                        // Idle with acknowledged records: release them once
                        // no more arrive for a while. A release costs a
                        // persist, which must not land on every commit.
                        let timed_out = self.changed.wait_for(&mut state, RELEASE_IDLE).timed_out();
                        if timed_out && state.pending.is_empty() {
                            break None;
                        }
                        continue;
                    }
                    self.changed.wait(&mut state);
                }
            };
            let Some((id, sends, on)) = front else {
                if unreleased > 0 {
                    self.release(&mut unreleased);
                    continue;
                }
                return;
            };
            let Some((connection, generation, call)) = on else {
                // Left to be sent again: do it now.
                let mut state = self.state.lock();
                let _ = self.resend(&mut state, &waiter);
                continue;
            };
            let outcome = connection.wait_for(&call).and_then(check_applied);
            let mut state = self.state.lock();
            let Some(front) = state.pending.front() else {
                // Shipping failed meanwhile.
                continue;
            };
            let same_call = front.id == id && front.sends == sends;
            match outcome {
                Ok(()) if front.id == id => {
                    // Applied, by this send or an earlier one with the same
                    // number: either way the node has it.
                    state.pending.pop_front();
                    state.refused_since = None;
                    self.acked.store(id, Ordering::Release);
                    self.shipped.fetch_add(1, Ordering::Relaxed);
                    unreleased += 1;
                    drop(state);
                    self.changed.notify_all();
                    if unreleased >= RELEASE_BATCH {
                        self.release(&mut unreleased);
                    }
                }
                Ok(()) => {}
                // Sent again meanwhile: wait for that one.
                Err(_) if !same_call => {}
                // A connection that failed, or one the link has already
                // replaced: a record it carried that reached the node after
                // the new connection resumed the writer role is refused
                // there (NotWriter). Numbered, it is sent again on the
                // current connection and applied at most once.
                Err(error)
                    if connection_failure(&error) || self.link.superseded(&error, generation) =>
                {
                    drop(state);
                    let reconnected = self.link.reconnect(generation);
                    let mut state = self.state.lock();
                    match reconnected.and_then(|()| self.log.check()) {
                        Ok(()) => {
                            let _ = self.resend(&mut state, &waiter);
                        }
                        Err(error) => {
                            self.fail_locked(&mut state, error);
                        }
                    }
                }
                Err(error) if unnumbered(&error) => {
                    // Not taken (the node was short of memory, or an earlier
                    // number had not arrived): send it and everything after
                    // it again, in order, with the same numbers.
                    let since = *state.refused_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > RETRY_FOR {
                        self.fail_locked(&mut state, error);
                        continue;
                    }
                    for shipment in state.pending.iter_mut() {
                        shipment.on = None;
                    }
                    drop(state);
                    std::thread::sleep(REFUSED_PAUSE);
                    let mut state = self.state.lock();
                    let _ = self.resend(&mut state, &waiter);
                }
                Err(error) if self.link.led_elsewhere(&error) => {
                    // A cluster link on a node that no longer leads the
                    // region: move to where the coordinator says it is led
                    // and send everything unacknowledged again there, with
                    // the same numbers.
                    let since = *state.refused_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > self.link.reconnect_for() {
                        self.fail_locked(&mut state, error);
                        continue;
                    }
                    drop(state);
                    let mut pause = MOVE_PAUSE_MIN;
                    let moved = self.link.move_off(generation, &mut pause);
                    let mut state = self.state.lock();
                    match moved.and_then(|()| self.log.check()) {
                        Ok(()) => {
                            let _ = self.resend(&mut state, &waiter);
                        }
                        Err(error) => {
                            self.fail_locked(&mut state, error);
                        }
                    }
                }
                Err(error) => {
                    if error.code() == Some(pagoda_wire::ErrorCode::StaleEpoch) {
                        self.log.fence(error.to_string());
                    }
                    self.fail_locked(&mut state, error);
                }
            }
        }
    }

    fn release(&self, unreleased: &mut u64) {
        let acked = self.acked.load(Ordering::Acquire);
        if let Err(error) = self.journal.release_through(acked) {
            tracing::warn!(%error, "releasing shipped journal records failed");
        }
        *unreleased = 0;
    }

    /// Waits until the node has acknowledged every record through `id`.
    pub(crate) fn wait_shipped(&self, id: CommitId) -> Result<(), ClientError> {
        let mut state = self.state.lock();
        loop {
            if self.acked.load(Ordering::Acquire) >= id {
                return Ok(());
            }
            if let Some(failure) = &state.failure {
                return Err(ClientError::Journal(format!("shipping failed: {failure}")));
            }
            self.changed.wait_for(&mut state, Duration::from_millis(10));
        }
    }

    /// Ships everything committed so far and waits for the node to have it.
    pub(crate) fn flush(&self) -> Result<(), ClientError> {
        let durable = self.journal.durable_id();
        self.send_pending()?;
        self.wait_shipped(durable)
    }

    pub(crate) fn stats(&self, conflicts: u64, commits: u64) -> JournalStats {
        let state = self.state.lock();
        let journal = self.journal.stats();
        JournalStats {
            commits,
            persists: journal.persists,
            lag_records: self
                .journal
                .durable_id()
                .saturating_sub(self.acked.load(Ordering::Acquire)),
            lag_ms: state
                .pending
                .front()
                .map_or(0, |front| front.sent.elapsed().as_millis() as u64),
            shipped: self.shipped.load(Ordering::Relaxed),
            conflicts,
            failure: state.failure.clone(),
        }
    }

    /// Ships what is left (best effort), then stops the shipper.
    pub(crate) fn close(&self) {
        // After a shipping failure this fails at once; the records stay.
        if let Err(error) = self.flush() {
            tracing::warn!(%error, "records left unshipped at close; they are replayed at the next open");
        }
        self.state.lock().stop = true;
        self.changed.notify_all();
        if let Some(handle) = self.thread.lock().take() {
            let _ = handle.join();
        }
    }
}
