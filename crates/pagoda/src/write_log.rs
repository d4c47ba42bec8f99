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
//! once. So is a request whose connection failed: after the link
//! reconnected (resuming the epoch), it is sent again with its original
//! epoch and number.
//!
//! A log *latches* when writing through it can no longer be right: it is
//! fenced when the node says a newer writer took the region over
//! (`StaleEpoch`), and broken when a numbered request's outcome could not be
//! learned (the reconnect failed), since every later number would wait
//! behind a gap. Every later write through it fails at once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pagoda_wire::ErrorCode;

use crate::connection::Reply;
use crate::error::ClientError;
use crate::link::{
    CALL_RECONNECTS_MAX, Link, MOVE_PAUSE_MIN, REDIRECTS_MAX, connection_failure, redirect_of,
};

/// Why a write log latched; see the module documentation.
#[derive(Debug)]
enum Latch {
    /// A newer writer took the region over; the node's message.
    Fenced(String),
    /// A write's outcome is unknown.
    Broken(String),
}

/// A region's writer epoch and next log sequence number, shared by every
/// handle that writes the region through one connection.
#[derive(Debug)]
pub struct WriterLog {
    epoch: AtomicU64,
    next: AtomicU64,
    latch: OnceLock<Latch>,
}

impl WriterLog {
    /// A log for a writer at `epoch` whose region has applied through `lsn`.
    pub fn new(epoch: u64, lsn: u64) -> WriterLog {
        WriterLog {
            epoch: AtomicU64::new(epoch),
            next: AtomicU64::new(lsn + 1),
            latch: OnceLock::new(),
        }
    }

    /// Whether a newer writer took the region over: every write through
    /// this log fails with `StaleEpoch`.
    pub fn is_fenced(&self) -> bool {
        matches!(self.latch.get(), Some(Latch::Fenced(_)))
    }

    /// Whether the log is fenced or broken (see the module documentation).
    pub(crate) fn latched(&self) -> bool {
        self.latch.get().is_some()
    }

    /// Fences the log: a newer writer took the region over.
    pub(crate) fn fence(&self, message: String) {
        let _ = self.latch.set(Latch::Fenced(message));
    }

    /// Breaks the log: a write's outcome is unknown.
    pub(crate) fn break_off(&self, reason: String) {
        let _ = self.latch.set(Latch::Broken(reason));
    }

    /// Fails if the log latched.
    pub(crate) fn check(&self) -> Result<(), ClientError> {
        match self.latch.get() {
            None => Ok(()),
            Some(Latch::Fenced(message)) => Err(ClientError::Remote {
                code: ErrorCode::StaleEpoch,
                message: format!(
                    "{message} (writes through this handle stay refused: a newer writer holds \
                     the region)"
                ),
            }),
            Some(Latch::Broken(reason)) => Err(ClientError::OutcomeUnknown {
                request: "an earlier write through this region handle".into(),
                reason: format!("{reason}; reopen the region"),
            }),
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
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(30);
/// The first pause between retries; it doubles up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE_MIN: Duration = Duration::from_micros(50);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(20);

/// Whether the node left a request unnumbered, so that sending it again
/// with the same number is the way forward.
pub(crate) fn unnumbered(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(ErrorCode::Busy) | Some(ErrorCode::LogGap)
    )
}

/// Sends a mutating request numbered from `log` and waits for its reply:
/// `encode(out, request_id, epoch, lsn)` builds it. Retries with the same
/// epoch and number while the node answers `Busy` or `LogGap`, after the
/// link reconnected when the connection failed, and at the region's primary
/// when the node answered `NotPrimary`, and (a cluster link) where the
/// coordinator says the region is led when the node no longer leads it
/// (`Link::led_elsewhere`, for at most `ClientOptions::reconnect_for`); any
/// other reply (success, or an error the node recorded for this number) is
/// returned. A `StaleEpoch` reply fences the log.
pub(crate) fn call_numbered(
    link: &Link,
    log: &WriterLog,
    encode: impl Fn(&mut Vec<u8>, u64, u64, u64),
) -> Result<Reply, ClientError> {
    log.check()?;
    let epoch = log.epoch();
    let mut lsn = 0;
    let began = Instant::now();
    let mut pause = RETRY_PAUSE_MIN;
    let mut move_pause = MOVE_PAUSE_MIN;
    let (mut reconnects, mut redirects) = (0, 0);
    // Once numbered, a request that cannot be carried through leaves a gap
    // no later number can pass: the log breaks.
    let give_up = |lsn: u64, error: ClientError| {
        if lsn != 0 {
            log.break_off(format!("write number {lsn} (epoch {epoch}): {error}"));
        }
        error
    };
    loop {
        let (connection, generation) = link.current();
        let outcome = if connection.is_failed() {
            Err(ClientError::Disconnected("the connection failed".into()))
        } else {
            connection.call(|out, id| {
                if lsn == 0 {
                    lsn = log.take();
                }
                encode(out, id, epoch, lsn)
            })
        };
        let reply = match outcome {
            Ok(reply) => reply,
            Err(error) if connection_failure(&error) => {
                reconnects += 1;
                if reconnects > CALL_RECONNECTS_MAX {
                    return Err(give_up(lsn, error));
                }
                link.reconnect(generation)
                    .map_err(|reconnect| give_up(lsn, reconnect))?;
                // The reconnect may have found the region taken over.
                log.check()?;
                continue;
            }
            Err(error) => return Err(give_up(lsn, error)),
        };
        match reply.decode() {
            Err(error) if unnumbered(&error) && began.elapsed() < RETRY_FOR => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
            Err(error) if error.code() == Some(ErrorCode::StaleEpoch) => {
                log.fence(error.to_string());
                return Ok(reply);
            }
            // Refused on a connection the link has replaced since (the new
            // one resumed the writer role first): sent again on the
            // current one, with the same number.
            Err(error)
                if link.superseded(&error, generation) && reconnects < CALL_RECONNECTS_MAX =>
            {
                reconnects += 1;
                log.check()?;
            }
            // Not applied as a write of the region's leader: sent again,
            // with the same number, where the region is led now.
            Err(error) if link.led_elsewhere(&error) && began.elapsed() < link.reconnect_for() => {
                link.move_off(generation, &mut move_pause)
                    .map_err(|reconnect| give_up(lsn, reconnect))?;
                log.check()?;
            }
            Err(error) => match redirect_of(&error) {
                Some(primary) if redirects < REDIRECTS_MAX => {
                    redirects += 1;
                    link.redirect(generation, primary)
                        .map_err(|reconnect| give_up(lsn, reconnect))?;
                    log.check()?;
                }
                _ => return Ok(reply),
            },
            Ok(_) => return Ok(reply),
        }
    }
}

/// The number a pipelined request (sent with `Connection::send`) takes:
/// call inside its `encode` closure, so that it is taken under the
/// connection's writer lock.
pub(crate) fn take_number(log: &WriterLog) -> (u64, u64) {
    (log.epoch(), log.take())
}
