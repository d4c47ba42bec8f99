//! A region's write log position and fencing state: the order in which the
//! node applies mutating requests, whichever connection brings them.
//!
//! Every mutating request (a page write batch, a journal record) carries the
//! writer's epoch and a log sequence number (LSN) the writer numbered it
//! with. The node applies request `n` only right after `n - 1`:
//!
//! - `n <= applied`: a retried duplicate (the writer reconnected and sent it
//!   again). It is not applied again; the original result is answered, if it
//!   is still among the last [`RESULTS_KEPT`], else `LogRetired`.
//! - `n == applied + 1`: applied, and its result remembered.
//! - `n > applied + 1`: a gap (an earlier request was lost or refused
//!   before it reached the log, e.g. `Busy`): refused with `LogGap`, not
//!   applied, so the writer sends the missing ones first.
//!
//! A request whose epoch is below the highest writer epoch the region has
//! seen is refused with `StaleEpoch`: once a new writer has taken the region
//! over, nothing the deposed one sends can land. The highest epoch is
//! persisted (in the catalog) before the new writer learns it, so a restart
//! cannot forget it.
//!
//! The log's lock is held from the check until the result is recorded, so
//! requests are applied one at a time in LSN order even when a retry and the
//! original race on two connections.

use std::collections::VecDeque;

use pagoda_wire::ErrorCode;
use parking_lot::{Mutex, MutexGuard};

use crate::error::NodeError;

/// Results of the most recent requests kept for answering retries. A writer
/// retries only requests still in flight, far fewer than this.
pub const RESULTS_KEPT: usize = 4096;

/// The outcome of an applied (or refused, but numbered) request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied.
    Done,
    /// Refused after it was numbered (out of range, out of memory...); its
    /// number is used up all the same.
    Failed(ErrorCode, String),
}

impl Applied {
    /// The outcome of `result`.
    pub fn of(result: &Result<(), NodeError>) -> Applied {
        match result {
            Ok(()) => Applied::Done,
            Err(error) => Applied::Failed(error.code(), error.to_string()),
        }
    }
}

/// What a write log says of a request.
pub enum Order<'a> {
    /// Apply it now; record the result with [`Slot::record`].
    Apply(Slot<'a>),
    /// A retried duplicate: answer its original result.
    Duplicate(Applied),
}

/// The log's state.
#[derive(Debug, Default)]
struct State {
    writer_epoch: u64,
    applied: u64,
    /// `(lsn, result)` of the last requests, oldest first.
    results: VecDeque<(u64, Applied)>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct WriteLog {
    state: Mutex<State>,
}

/// The right to apply one request: the log's lock, held until its result is
/// recorded.
pub struct Slot<'a> {
    state: MutexGuard<'a, State>,
    lsn: u64,
}

impl Slot<'_> {
    /// The request's LSN.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Records the request's result and advances the log.
    pub fn record(mut self, result: Applied) {
        let state = &mut *self.state;
        state.applied = self.lsn;
        if state.results.len() == RESULTS_KEPT {
            state.results.pop_front();
        }
        state.results.push_back((self.lsn, result));
    }
}

impl WriteLog {
    /// A log at `applied`, fenced at `writer_epoch`.
    pub fn new(writer_epoch: u64, applied: u64) -> WriteLog {
        WriteLog {
            state: Mutex::new(State {
                writer_epoch,
                applied,
                results: VecDeque::new(),
            }),
        }
    }

    /// The last applied LSN.
    pub fn applied(&self) -> u64 {
        self.state.lock().applied
    }

    /// The highest writer epoch seen.
    pub fn writer_epoch(&self) -> u64 {
        self.state.lock().writer_epoch
    }

    /// Raises the writer epoch (a new writer took the region over, or a
    /// replica learned of one). Never lowers it.
    pub fn raise_writer_epoch(&self, epoch: u64) {
        let mut state = self.state.lock();
        state.writer_epoch = state.writer_epoch.max(epoch);
    }

    /// Moves the log to `applied` without applying anything (the region was
    /// reloaded or rebuilt up to there); forgets older results.
    pub fn reset(&self, applied: u64) {
        let mut state = self.state.lock();
        state.applied = applied;
        state.results.clear();
    }

    /// Orders request `lsn` from a writer at `epoch` on region `name`.
    pub fn order(&self, name: &str, epoch: u64, lsn: u64) -> Result<Order<'_>, NodeError> {
        let state = self.state.lock();
        if epoch < state.writer_epoch {
            return Err(NodeError::StaleEpoch {
                region: name.to_owned(),
                what: "writer",
                epoch,
                current: state.writer_epoch,
            });
        }
        if epoch > state.writer_epoch {
            // Epochs are handed out by this node (or its primary) and
            // persisted before use: a higher one was never handed out.
            return Err(NodeError::InvalidArgument(format!(
                "writer epoch {epoch} of region {name:?} was never handed out (the newest is {})",
                state.writer_epoch
            )));
        }
        if lsn == 0 {
            return Err(NodeError::InvalidArgument(
                "log sequence numbers start at 1".into(),
            ));
        }
        if lsn <= state.applied {
            let first = state.results.front().map_or(u64::MAX, |(first, _)| *first);
            if lsn < first {
                return Err(NodeError::LogRetired {
                    region: name.to_owned(),
                    lsn,
                    oldest: first.min(state.applied + 1),
                });
            }
            let index = (lsn - first) as usize;
            let (kept, result) = &state.results[index];
            debug_assert_eq!(*kept, lsn);
            return Ok(Order::Duplicate(result.clone()));
        }
        if lsn > state.applied + 1 {
            return Err(NodeError::LogGap {
                region: name.to_owned(),
                lsn,
                expected: state.applied + 1,
            });
        }
        Ok(Order::Apply(Slot { state, lsn }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(log: &WriteLog, epoch: u64, lsn: u64, result: Applied) -> Result<Applied, NodeError> {
        match log.order("r", epoch, lsn)? {
            Order::Apply(slot) => {
                slot.record(result.clone());
                Ok(result)
            }
            Order::Duplicate(original) => Err(NodeError::InvalidArgument(format!(
                "duplicate: {original:?}"
            ))),
        }
    }

    // Guards the ordering rules: in order applies, a duplicate answers its
    // original result without applying, a gap and a stale epoch are refused.
    #[test]
    fn applies_in_order_answers_duplicates_refuses_gaps_and_stale_epochs() {
        let log = WriteLog::new(3, 10);
        apply(&log, 3, 11, Applied::Done).unwrap();
        let failed = Applied::Failed(ErrorCode::OutOfRange, "page 9 is out of range".into());
        apply(&log, 3, 12, failed.clone()).unwrap();
        assert_eq!(log.applied(), 12);
        match log.order("r", 3, 12).unwrap() {
            Order::Duplicate(result) => assert_eq!(result, failed),
            Order::Apply(_) => panic!("a duplicate was ordered for applying"),
        }
        match log.order("r", 3, 11).unwrap() {
            Order::Duplicate(result) => assert_eq!(result, Applied::Done),
            Order::Apply(_) => panic!("a duplicate was ordered for applying"),
        }
        let gap = log.order("r", 3, 14).err().unwrap();
        assert!(
            matches!(gap, NodeError::LogGap { expected: 13, .. }),
            "{gap}"
        );
        assert_eq!(log.applied(), 12, "a refused gap changes nothing");
        log.raise_writer_epoch(4);
        let stale = log.order("r", 3, 13).err().unwrap();
        assert!(matches!(stale, NodeError::StaleEpoch { .. }), "{stale}");
        assert_eq!(stale.code(), ErrorCode::StaleEpoch);
        apply(&log, 4, 13, Applied::Done).unwrap();
        let future = log.order("r", 5, 14).err().unwrap();
        assert!(matches!(future, NodeError::InvalidArgument(_)), "{future}");
    }

    // Guards the bound on remembered results: a duplicate older than the
    // window is refused, not answered with a made-up result.
    #[test]
    fn duplicates_beyond_the_window_are_retired() {
        let log = WriteLog::new(1, 0);
        for lsn in 1..=(RESULTS_KEPT as u64 + 5) {
            apply(&log, 1, lsn, Applied::Done).unwrap();
        }
        let retired = log.order("r", 1, 3).err().unwrap();
        assert!(matches!(retired, NodeError::LogRetired { .. }), "{retired}");
        assert!(matches!(log.order("r", 1, 6).unwrap(), Order::Duplicate(_)));
        log.reset(100);
        let retired = log.order("r", 1, 99).err().unwrap();
        assert!(matches!(retired, NodeError::LogRetired { .. }), "{retired}");
        assert!(matches!(log.order("r", 1, 101).unwrap(), Order::Apply(_)));
    }
}
