//! The client's side of a region's write log: the writer epoch it holds and
//! the numbering of its mutating requests.
//!
//! Every mutating request (a page write batch, a journal record) carries
//! the writer epoch in its frame header and a log sequence number (LSN) in
//! its payload. The number is taken while the request is encoded, under the
//! connection's writer lock, so numbers go out in the order they were taken.
//! The node applies request `n` only after `n - 1` (see the node's
//! `write_log`): a retried duplicate is answered with its original result, a
//! gap is refused with `LogGap` and nothing applied.
//!
//! A request the node did not number (answered `Busy`, or refused as a gap
//! because an earlier one was) is sent again with the same number until the
//! node takes it: retries are safe because the node applies each number
//! once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pagoda_wire::ErrorCode;

use crate::connection::{Connection, Reply};
use crate::error::ClientError;

/// A region's writer epoch and next log sequence number, shared by every
/// handle that writes the region through one connection.
#[derive(Debug)]
pub struct WriterLog {
    epoch: AtomicU64,
    next: AtomicU64,
}

impl WriterLog {
    /// A log for a writer at `epoch` whose region has applied through `lsn`.
    pub fn new(epoch: u64, lsn: u64) -> WriterLog {
        WriterLog {
            epoch: AtomicU64::new(epoch),
            next: AtomicU64::new(lsn + 1),
        }
    }

    /// The writer epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The next number to be taken.
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Moves to a new epoch (a new write open was granted one), numbering
    /// from `lsn + 1`. An open that kept the epoch keeps the numbering: the
    /// node's position may lag requests still in flight.
    pub fn granted(&self, epoch: u64, lsn: u64) {
        if self.epoch.swap(epoch, Ordering::AcqRel) != epoch {
            self.next.store(lsn + 1, Ordering::Release);
        }
    }

    fn take(&self) -> u64 {
        self.next.fetch_add(1, Ordering::AcqRel)
    }
}

/// How long a numbered request keeps being retried while the node answers
/// `Busy` or `LogGap`, at most.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// The first pause between retries; it doubles up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE_MIN: Duration = Duration::from_micros(50);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(20);

/// Whether the node left a request unnumbered, so that sending it again
/// with the same number is the way forward.
fn unnumbered(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(ErrorCode::Busy) | Some(ErrorCode::LogGap)
    )
}

/// Sends a mutating request numbered from `log` and waits for its reply:
/// `encode(out, request_id, epoch, lsn)` builds it. Retries with the same
/// number while the node answers `Busy` or `LogGap`; any other reply
/// (success, or an error the node recorded for this number) is returned.
pub(crate) fn call_numbered(
    connection: &Connection,
    log: &WriterLog,
    encode: impl Fn(&mut Vec<u8>, u64, u64, u64),
) -> Result<Reply, ClientError> {
    let epoch = log.epoch();
    let mut lsn = 0;
    let began = Instant::now();
    let mut pause = RETRY_PAUSE_MIN;
    loop {
        let reply = connection.call(|out, id| {
            if lsn == 0 {
                lsn = log.take();
            }
            encode(out, id, epoch, lsn)
        })?;
        match reply.decode() {
            Err(error) if unnumbered(&error) && began.elapsed() < RETRY_FOR => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
            _ => return Ok(reply),
        }
    }
}

/// The number a pipelined request (sent with `Connection::send`) takes:
/// call inside its `encode` closure, so that it is taken under the
/// connection's writer lock.
pub(crate) fn take_number(log: &WriterLog) -> (u64, u64) {
    (log.epoch(), log.take())
}
