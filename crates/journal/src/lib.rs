//! Pagoda's micro-journals: the durable transaction log on the application's host
//! (capability C8).
//!
//! A transaction's writes go into a [`MicroJournal`], a reusable buffer taken from a free
//! list with [`Journal::begin`]. [`Journal::commit`] takes a lock on the globally
//! ascending commit id, stamps the id into the record's header, appends the record to the
//! log, bumps the id and lets go; it returns once a persist has made the record durable.
//! Commits that arrive while a persist is under way are persisted together by the next
//! one (group commit), so concurrent committers share persists while a lone committer
//! pays exactly one. Committed records stay on an in-flight list, for a shipper to send
//! on ([`Journal::unreleased`]), until [`Journal::release_through`] says they are safe
//! elsewhere; whole log segments are then removed.
//!
//! [`Journal::open`] runs recovery: it keeps the longest valid prefix of the log, returns
//! its unreleased records in id order for the caller to replay, and truncates a torn
//! tail. The on-disk format is described byte by byte in [`format`](mod@format); recovery's argument
//! is in the `recovery` module. The journal reaches its media only through the
//! [`Storage`] and [`Device`] traits; [`testing::CrashStorage`] is a fault-injecting
//! implementation that separates written from durable bytes.
//!
//! The journal knows nothing of memory nodes, regions' contents, the network or the
//! command line: an entry is an opaque `(region, offset, bytes)` triple.

#![warn(missing_docs)]

pub mod device;
mod error;
pub mod format;
mod journal;
mod recovery;
pub mod testing;

pub use device::{Device, FileDevice, FileStorage, Storage};
pub use error::JournalError;
pub use journal::{
    Journal, JournalOptions, JournalStats, MicroJournal, OnCorruption, PREALLOCATE_BYTES_MAX,
    SEGMENT_BYTES_MIN,
};
pub use recovery::{Hole, RecoveryReport};

/// A commit's position in the global order. The first commit is 1; ids ascend with no
/// gaps and are never reused.
pub type CommitId = u64;

/// One write of a transaction: `data` at byte `offset` of `region`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The region written.
    pub region: u64,
    /// Byte offset within the region.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// One committed transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Its commit id.
    pub id: CommitId,
    /// Its writes, in the order they were pushed.
    pub entries: Vec<Entry>,
}
