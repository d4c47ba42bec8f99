//! The journal's errors.

use std::io;
use std::path::PathBuf;

use crate::CommitId;

/// An error opening, committing to or releasing from a journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An operation on the log's storage failed. If it was a write or a persist, the
    /// journal is now latched failed (see [`JournalError::Failed`]).
    #[error("{context}: {source}")]
    Io {
        /// What the journal was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An earlier write or persist failed, so the journal refuses every later commit: it
    /// cannot know what reached the media. Reopening runs recovery.
    #[error("journal failed earlier and accepts no more commits: {cause}")]
    Failed {
        /// The first failure.
        cause: String,
    },
    /// Recovery found damage it cannot repair without losing commits that were reported
    /// durable.
    #[error("journal segment {segment} is corrupt at byte {offset}: {detail}")]
    Corrupt {
        /// The segment's sequence number.
        segment: u64,
        /// Byte offset of the damage within the segment.
        offset: u64,
        /// What is wrong, and the evidence that it was durable.
        detail: String,
    },
    /// A transaction is larger than `record_bytes_max`; nothing was written.
    #[error("record of {bytes} bytes exceeds record_bytes_max of {max} bytes")]
    RecordTooLarge {
        /// The encoded record's size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// Every commit id the format allows is taken (the log continues one that reached
    /// `format::COMMIT_ID_MAX`); nothing was written, since recovery would discard a
    /// record with a higher id.
    #[error("no commit id is left: the next would be {id}, beyond the format's maximum")]
    IdsExhausted {
        /// The id the commit would have had.
        id: CommitId,
    },
    /// `release_through` named a commit that is not durable yet.
    #[error("cannot release through commit {id}: only commits through {durable} are durable")]
    ReleaseBeyondDurable {
        /// The id asked for.
        id: CommitId,
        /// The highest durable id.
        durable: CommitId,
    },
    /// The options are invalid.
    #[error("invalid journal options: {0}")]
    InvalidOptions(String),
    /// Another journal holds the directory open.
    #[error("journal directory {path} is locked by another process or journal")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
}

impl JournalError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
