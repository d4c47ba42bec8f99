//! The node's errors.

use pagoda_wire::ErrorCode;

/// An error serving a request or running the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A request named a region that does not exist.
    #[error("region {0:?} not found")]
    RegionNotFound(String),
    /// A request named a region id that does not exist.
    #[error("region id {0} not found")]
    RegionIdNotFound(u64),
    /// A region with the name exists already.
    #[error("region {0:?} exists already")]
    RegionExists(String),
    /// A page lies outside the region.
    #[error("page {page} is out of range: the region has {pages} pages")]
    OutOfRange {
        /// The page asked for.
        page: u64,
        /// The region's page count.
        pages: u64,
    },
    /// No RAM is left for a new segment.
    #[error(
        "out of memory: the node's capacity of {capacity_bytes} bytes is fully allocated \
         ({segments} segments of {segment_bytes} bytes)"
    )]
    OutOfMemory {
        /// The node's page capacity.
        capacity_bytes: u64,
        /// Segments in the arena.
        segments: u64,
        /// Bytes per segment.
        segment_bytes: u64,
    },
    /// Both of the node's tiers are full: RAM, and the bulk tier on disk.
    #[error(
        "out of memory: the node's RAM ({ram_bytes} bytes) and its bulk tier ({bulk_bytes} bytes) \
         are both full"
    )]
    TiersFull {
        /// The node's RAM for pages.
        ram_bytes: u64,
        /// The bulk tier's capacity.
        bulk_bytes: u64,
    },
    /// The bulk tier has no room for a segment's new blocks.
    #[error("the bulk tier is full ({capacity_bytes} bytes)")]
    BulkFull {
        /// Its capacity.
        capacity_bytes: u64,
    },
    /// A write to the bulk tier failed; it takes no more pages.
    #[error("the bulk tier failed: {0}")]
    BulkFailed(String),
    /// A block read from the bulk tier does not match its checksum.
    #[error("bulk tier {path}: block {block} does not match its checksum")]
    BulkCorrupt {
        /// The bulk file.
        path: String,
        /// The block.
        block: u64,
    },
    /// A request lost a race too many times in a row (a segment kept moving
    /// between tiers); it may be sent again.
    #[error("busy: {0}")]
    Contended(String),
    /// The node could not allocate memory for a region's metadata.
    #[error("out of memory: the node could not allocate {bytes} bytes for region metadata")]
    MetadataAllocation {
        /// What was asked for.
        bytes: u64,
    },
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The node holds its maximum number of regions.
    #[error("the node holds its maximum of {0} regions")]
    TooManyRegions(usize),
    /// The catalog's region ids are used up (only a damaged or hand-edited
    /// catalog gets there): it takes no new region.
    #[error("the catalog's region ids are used up (next id {0}); no region can be created")]
    RegionIdsExhausted(u64),
    /// The metadata store failed; it refuses changes until the node restarts.
    #[error("metadata store failed: {0}")]
    MetadataFailed(String),
    /// The data dir's contents are invalid.
    #[error("data dir {path}: {detail}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The catalog and the storage backend disagree (a missing catalog, a
    /// region whose newest checkpoint is gone); the node refuses to start
    /// unless told to accept it.
    #[error("{0}")]
    CatalogMismatch(String),
    /// Configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The region cannot serve now (recovering, or its baseline failed to
    /// load).
    #[error("region {name:?} is unavailable: {reason}")]
    RegionUnavailable {
        /// The region.
        name: String,
        /// Why.
        reason: String,
    },
    /// The region moved to another node and takes no writes here.
    #[error("region {0:?} is read-only: it has moved to another node")]
    ReadOnly(String),
    /// The storage backend failed.
    #[error("storage failed: {context}: {cause}")]
    Storage {
        /// What was being done, and with which backend.
        context: String,
        /// What the backend said.
        cause: StorageCause,
    },
    /// An object in the storage backend failed verification.
    #[error("corrupt object {key}: {detail}")]
    CorruptObject {
        /// The object's key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// A recovery named a source this node may not connect to.
    #[error("{0}")]
    PeerNotAllowed(String),
    /// Another node (a recovery's source) failed or refused.
    #[error("source node: {context}: {error}")]
    Peer {
        /// What was asked of it.
        context: String,
        /// What it answered (its error code, for a refusal).
        error: pagoda::ClientError,
    },
    /// The node's journal of a region failed; it refuses records until the
    /// node restarts.
    #[error("journal failed: {context}: {error}")]
    Journal {
        /// Which journal, and what was being done.
        context: String,
        /// The journal's error.
        error: pagoda_journal::JournalError,
    },
    /// The node has no storage backend.
    #[error("this node has no storage backend (start it with --storage)")]
    NoStorage,
    /// `DirtyPages` named a checkpoint the region no longer remembers.
    #[error(
        "region {region:?} does not remember checkpoint {checkpoint} (its latest is {latest}; \
         it keeps the last 16)"
    )]
    CheckpointUnknown {
        /// The region.
        region: String,
        /// The checkpoint asked for.
        checkpoint: u64,
        /// The region's latest checkpoint (0: none).
        latest: u64,
    },
    /// A request from a deposed writer or primary: the region has seen a
    /// newer epoch.
    #[error(
        "region {region:?}: {what} epoch {epoch} is stale; the region has seen {what} epoch \
         {current} (a newer {what} took over)"
    )]
    StaleEpoch {
        /// The region.
        region: String,
        /// Whose epoch: "writer" or "primary".
        what: &'static str,
        /// The request's epoch.
        epoch: u64,
        /// The newest the region has seen.
        current: u64,
    },
    /// Another connection holds the region's writer role.
    #[error("{0}")]
    WriterBusy(String),
    /// The result recorded for a request answered again (a retried
    /// duplicate of a request that was refused).
    #[error("{1}")]
    Recorded(ErrorCode, String),
    /// A mutating request skipped a log position.
    #[error(
        "region {region:?}: request numbered {lsn} arrived before {expected}; nothing was \
         applied (send the missing requests first)"
    )]
    LogGap {
        /// The region.
        region: String,
        /// The request's number.
        lsn: u64,
        /// The number the region expects next.
        expected: u64,
    },
    /// A retried request older than the results kept for retries.
    #[error(
        "region {region:?}: request numbered {lsn} was applied or refused long ago; results are \
         kept from {oldest} on"
    )]
    LogRetired {
        /// The region.
        region: String,
        /// The request's number.
        lsn: u64,
        /// The oldest number whose result is kept.
        oldest: u64,
    },
    /// A write sent to a node that is not the region's primary.
    #[error("{}", not_primary_message(region, primary))]
    NotPrimary {
        /// The region.
        region: String,
        /// Where its primary is, as far as this node knows.
        primary: String,
    },
    /// An I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl NodeError {
    /// The code sent to the client for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::RegionNotFound(_) | NodeError::RegionIdNotFound(_) => {
                ErrorCode::RegionNotFound
            }
            NodeError::RegionExists(_) => ErrorCode::RegionExists,
            NodeError::OutOfRange { .. } => ErrorCode::OutOfRange,
            NodeError::OutOfMemory { .. }
            | NodeError::TiersFull { .. }
            | NodeError::BulkFull { .. }
            | NodeError::MetadataAllocation { .. } => ErrorCode::OutOfMemory,
            NodeError::BulkCorrupt { .. } => ErrorCode::Corrupt,
            NodeError::Contended(_) => ErrorCode::Busy,
            NodeError::InvalidArgument(_) | NodeError::PeerNotAllowed(_) => {
                ErrorCode::InvalidArgument
            }
            NodeError::TooManyRegions(_) | NodeError::RegionIdsExhausted(_) => {
                ErrorCode::TooManyRegions
            }
            NodeError::RegionUnavailable { .. } => ErrorCode::RegionUnavailable,
            NodeError::ReadOnly(_) => ErrorCode::ReadOnly,
            NodeError::Storage { .. } => ErrorCode::StorageFailed,
            NodeError::CorruptObject { .. } => ErrorCode::Corrupt,
            NodeError::NoStorage => ErrorCode::NoStorage,
            NodeError::CheckpointUnknown { .. } => ErrorCode::CheckpointUnknown,
            NodeError::StaleEpoch { .. } => ErrorCode::StaleEpoch,
            NodeError::WriterBusy(_) => ErrorCode::WriterBusy,
            NodeError::Recorded(code, _) => *code,
            NodeError::LogGap { .. } => ErrorCode::LogGap,
            NodeError::LogRetired { .. } => ErrorCode::LogRetired,
            NodeError::NotPrimary { .. } => ErrorCode::NotPrimary,
            NodeError::MetadataFailed(_)
            | NodeError::BulkFailed(_)
            | NodeError::Journal { .. }
            | NodeError::Peer { .. }
            | NodeError::Corrupt { .. }
            | NodeError::CatalogMismatch(_)
            | NodeError::Config(_)
            | NodeError::Io { .. } => ErrorCode::Internal,
        }
    }

    /// A storage failure that is not the backend's own error.
    pub(crate) fn storage(context: impl Into<String>, detail: impl Into<String>) -> NodeError {
        NodeError::Storage {
            context: context.into(),
            cause: StorageCause::Failed(detail.into()),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> NodeError {
        NodeError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Why a storage operation failed, as far as the caller can act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageCause {
    /// The object does not exist.
    NotFound,
    /// The backend refused: credentials or permissions.
    Denied(String),
    /// Anything else: an I/O error, a full disk, the network, a timeout.
    Failed(String),
}

impl std::fmt::Display for StorageCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageCause::NotFound => f.write_str("not found"),
            StorageCause::Denied(detail) => write!(f, "access denied: {detail}"),
            StorageCause::Failed(detail) => f.write_str(detail),
        }
    }
}

impl From<&object_store::Error> for StorageCause {
    fn from(error: &object_store::Error) -> StorageCause {
        match error {
            object_store::Error::NotFound { .. } => StorageCause::NotFound,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                StorageCause::Denied(error.to_string())
            }
            other => StorageCause::Failed(other.to_string()),
        }
    }
}

fn not_primary_message(region: &str, primary: &str) -> String {
    if primary.is_empty() {
        format!(
            "region {region:?} is not led by this node, which does not know who leads it now \
             (its coordinator lease lapsed, or it was deposed): ask the coordinator for the \
             region's primary"
        )
    } else {
        format!("region {region:?} is a replica on this node; write to its primary {primary}")
    }
}
