//! The client's errors.

use pagoda_wire::{ErrorCode, WireError};

/// An error of a client operation. Callers can match on what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The node answered with an error.
    #[error("node refused: {code}: {message}")]
    Remote {
        /// What went wrong.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
    /// The connection broke; it cannot be used any more.
    #[error("connection to the node failed: {0}")]
    Disconnected(String),
    /// The connection failed while a request that is not safe to repeat
    /// (creating, deleting, checkpointing, recovering or freezing a region)
    /// was in flight: it may or may not have been carried out, and it was
    /// not sent again. Look before trying again (list the regions, ...). Also
    /// returned by the writes of a region handle after a write whose outcome
    /// could not be learned (the reconnect failed): reopen the region.
    #[error(
        "the connection failed during {request}, which was not sent again as it is not safe \
         to repeat: its outcome is unknown ({reason})"
    )]
    OutcomeUnknown {
        /// What was in flight.
        request: String,
        /// How the connection failed.
        reason: String,
    },
    /// The node did not answer in time; the connection is closed.
    #[error("no reply from the node within {0:?}")]
    Timeout(std::time::Duration),
    /// The node's reply made no sense.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A byte range lies outside the region.
    #[error("range of {len} bytes at offset {offset} lies outside the region of {size} bytes")]
    OutOfRange {
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
        /// The region's size.
        size: u64,
    },
    /// [`crate::Client::open_or_create_region`] found the region existing
    /// with another shape than the one asked for.
    #[error(
        "region {name:?} exists with {size} bytes in pages of {page_size} bytes, \
         not {size_asked} bytes in pages of {page_size_asked} as asked; \
         open it with its own shape or delete it first"
    )]
    RegionShapeMismatch {
        /// The region's name.
        name: String,
        /// The existing region's size in bytes.
        size: u64,
        /// The existing region's page size in bytes.
        page_size: u32,
        /// The size asked for.
        size_asked: u64,
        /// The page size asked for.
        page_size_asked: u32,
    },
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Another transaction holds a page this one needs; propagate it from
    /// the transaction's body and the transaction is run again.
    #[error("transaction conflict: another transaction holds a page it needs")]
    Conflict,
    /// The region's local journal failed (an I/O error on its directory).
    #[error("journal: {0}")]
    Journal(String),
    /// Another application host holds the right to write the region in the
    /// cluster coordinator (a client made with
    /// [`crate::Client::connect_cluster`]). Like the node's
    /// `ErrorCode::WriterBusy`, which [`ClientError::code`] reports for it:
    /// one writer at a time.
    #[error(
        "region {region:?} is open for writing by {holder} (under a lease of {lease_ms} ms in \
         coordinator {coordinator}); one writer at a time: it must close the region, or its \
         lease lapse, first"
    )]
    WriterBusy {
        /// The region.
        region: String,
        /// Who holds it, as it registered itself (client name, host, pid).
        holder: String,
        /// The lease the holder keeps, in milliseconds.
        lease_ms: u64,
        /// The coordinator's endpoint.
        coordinator: String,
    },
    /// This host lost its writer lease in the cluster coordinator: no
    /// renewal succeeded before the lease's local deadline, or the
    /// coordinator said it had expired (or was revoked). Another host may
    /// hold the region now, so this handle refuses every write from then on
    /// (writes not yet on the node are lost); open the region again to
    /// write. See [`crate::ClientOptions::lease`].
    #[error(
        "region {region:?}: this host lost its writer lease in coordinator {coordinator} \
         ({reason}); the handle refuses writes from now on, as another host may hold the \
         region: open it again to write"
    )]
    LeaseLost {
        /// The region.
        region: String,
        /// The coordinator's endpoint.
        coordinator: String,
        /// What happened to the lease.
        reason: String,
    },
    /// What was asked needs something this kernel or process does not
    /// allow (a mapped region: userfaultfd, its features, or the settings
    /// that grant it); the message names what to change.
    #[error("not supported here: {0}")]
    Unsupported(String),
    /// A local system call failed (memory, file descriptors, threads).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The cluster coordinator failed or refused (it could not be reached,
    /// a record is missing or damaged).
    #[error(transparent)]
    Coordinator(#[from] pagoda_cluster::ClusterError),
}

impl ClientError {
    /// The node's error code, if the node refused the request; also
    /// `WriterBusy` for [`ClientError::WriterBusy`] (the coordinator's
    /// refusal of a second writer), so that one match covers both.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Remote { code, .. } => Some(*code),
            ClientError::WriterBusy { .. } => Some(ErrorCode::WriterBusy),
            _ => None,
        }
    }

    /// Whether the connection failed (the socket broke, the node closed it,
    /// no reply in time), rather than the node answering with an error.
    pub fn is_connection_failure(&self) -> bool {
        crate::link::connection_failure(self)
    }
}

impl From<WireError> for ClientError {
    fn from(error: WireError) -> Self {
        ClientError::Protocol(error.to_string())
    }
}

impl From<pagoda_cache::CacheError> for ClientError {
    fn from(error: pagoda_cache::CacheError) -> Self {
        match error {
            pagoda_cache::CacheError::OutOfRange { offset, len, size } => {
                ClientError::OutOfRange { offset, len, size }
            }
            pagoda_cache::CacheError::Backing(inner) => match inner.downcast::<ClientError>() {
                Ok(client_error) => *client_error,
                Err(other) => ClientError::Protocol(other.to_string()),
            },
        }
    }
}
