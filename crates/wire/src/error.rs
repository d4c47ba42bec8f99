//! Errors of the wire layer and the error codes carried in error replies.

use std::fmt;

/// What went wrong, as carried on the wire in an error reply. Codes are stable:
/// a peer that sees an unknown code reports it as `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The payload did not parse as the message its opcode names.
    Malformed = 1,
    /// The frame's protocol version is not one this peer speaks.
    UnsupportedVersion = 2,
    /// The frame's length exceeds the documented limit.
    FrameTooLarge = 3,
    /// The frame's checksum does not match its contents.
    BadChecksum = 4,
    /// The opcode is not one this peer knows.
    UnknownOpcode = 5,
    /// Authentication failed: no credential, an unknown one, a wrong proof,
    /// or a credential revoked since.
    Unauthorized = 6,
    /// A request arrived before a successful `Hello`.
    NotAuthenticated = 7,
    /// No region has that name or id.
    RegionNotFound = 8,
    /// A region with that name exists already.
    RegionExists = 9,
    /// A page or byte range lies outside the region.
    OutOfRange = 10,
    /// The node has no RAM left for a new segment.
    OutOfMemory = 11,
    /// An argument is invalid (a page size that is not a power of two, ...).
    InvalidArgument = 12,
    /// The node serves its maximum number of connections.
    TooManyConnections = 13,
    /// The node is shutting down.
    ShuttingDown = 14,
    /// The node failed internally (an I/O error on its data dir, ...).
    Internal = 15,
    /// The request carries a fencing epoch (a writer's or a primary's) older
    /// than one the region has seen: its sender was deposed.
    StaleEpoch = 16,
    /// The node holds its maximum number of regions.
    TooManyRegions = 17,
    /// The frame did not start with the protocol's magic number.
    BadMagic = 18,
    /// The region cannot serve now: it is being recovered, or its baseline
    /// failed to load.
    RegionUnavailable = 19,
    /// The region is read-only: it has moved to another node.
    ReadOnly = 20,
    /// The storage backend failed (an I/O error, a full disk, ...).
    StorageFailed = 21,
    /// An object in the storage backend failed verification.
    Corrupt = 22,
    /// No storage backend is configured on the node.
    NoStorage = 23,
    /// The frame header sets flags that are reserved.
    UnsupportedFlags = 24,
    /// The node cannot find the memory for this request's buffers within its
    /// connection memory budget now; the request was not served, and may be
    /// retried.
    Busy = 25,
    /// A frame, a reply or the handshake did not complete in time.
    TimedOut = 26,
    /// The connection's credential lacks the right the request needs.
    Forbidden = 27,
    /// Another connection holds the region's writer role.
    WriterBusy = 28,
    /// A write from a connection that does not hold the region's writer
    /// role (it did not open the region for writing, or lost the role).
    NotWriter = 29,
    /// `DirtyPages` named a checkpoint the node no longer remembers (it keeps
    /// the last 16); list since a newer one.
    CheckpointUnknown = 30,
    /// A mutating request's log sequence number is beyond the next one the
    /// region expects: an earlier request is missing (lost with a
    /// connection, or refused before it was numbered, e.g. `Busy`). Nothing
    /// was applied; send the missing ones first.
    LogGap = 31,
    /// A retried request is older than the results the node keeps for
    /// answering retries; it was applied or refused long ago.
    LogRetired = 32,
    /// The region is a replica on this node: writes go to its primary.
    NotPrimary = 33,
    /// The request is served only on the node's local (Unix) socket: it
    /// hands out memory, which only a process on the node's host can use.
    NotLocal = 34,
    /// A code this peer does not know.
    Unknown = 0xffff,
}

impl ErrorCode {
    /// Maps a code read from the wire; unknown values become `Unknown`.
    pub fn from_u16(value: u16) -> ErrorCode {
        use ErrorCode::*;
        match value {
            1 => Malformed,
            2 => UnsupportedVersion,
            3 => FrameTooLarge,
            4 => BadChecksum,
            5 => UnknownOpcode,
            6 => Unauthorized,
            7 => NotAuthenticated,
            8 => RegionNotFound,
            9 => RegionExists,
            10 => OutOfRange,
            11 => OutOfMemory,
            12 => InvalidArgument,
            13 => TooManyConnections,
            14 => ShuttingDown,
            15 => Internal,
            16 => StaleEpoch,
            17 => TooManyRegions,
            18 => BadMagic,
            19 => RegionUnavailable,
            20 => ReadOnly,
            21 => StorageFailed,
            22 => Corrupt,
            23 => NoStorage,
            24 => UnsupportedFlags,
            25 => Busy,
            26 => TimedOut,
            27 => Forbidden,
            28 => WriterBusy,
            29 => NotWriter,
            30 => CheckpointUnknown,
            31 => LogGap,
            32 => LogRetired,
            33 => NotPrimary,
            34 => NotLocal,
            _ => Unknown,
        }
    }

    /// A short human name for the code.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Malformed => "malformed message",
            UnsupportedVersion => "unsupported protocol version",
            FrameTooLarge => "frame too large",
            BadChecksum => "bad checksum",
            UnknownOpcode => "unknown opcode",
            Unauthorized => "unauthorized",
            NotAuthenticated => "not authenticated",
            RegionNotFound => "region not found",
            RegionExists => "region exists",
            OutOfRange => "out of range",
            OutOfMemory => "out of memory",
            InvalidArgument => "invalid argument",
            TooManyConnections => "too many connections",
            ShuttingDown => "shutting down",
            Internal => "internal error",
            StaleEpoch => "stale epoch",
            TooManyRegions => "too many regions",
            BadMagic => "bad magic",
            RegionUnavailable => "region unavailable",
            ReadOnly => "read-only",
            StorageFailed => "storage failed",
            Corrupt => "corrupt object",
            NoStorage => "no storage backend",
            UnsupportedFlags => "unsupported header flags",
            Busy => "busy",
            TimedOut => "timed out",
            Forbidden => "forbidden",
            WriterBusy => "writer role busy",
            NotWriter => "not the writer",
            CheckpointUnknown => "checkpoint unknown",
            LogGap => "log gap",
            LogRetired => "log position retired",
            NotPrimary => "not the primary",
            NotLocal => "only on the local socket",
            Unknown => "unknown error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error reading, decoding or validating a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream at a frame boundary.
    #[error("connection closed by peer")]
    Closed,
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed in the middle of a frame ({received} of {expected} bytes)")]
    Truncated {
        /// Bytes of the frame received.
        received: usize,
        /// Bytes the frame header announced.
        expected: usize,
    },
    /// The frame did not start with the magic number.
    #[error("bad magic {found:#010x}: not a Pagoda frame")]
    BadMagic {
        /// The four bytes found, little-endian.
        found: u32,
    },
    /// The frame's version is not spoken here.
    #[error("unsupported protocol version {found} (this peer speaks {supported})")]
    UnsupportedVersion {
        /// The version in the frame.
        found: u8,
        /// The version this peer speaks.
        supported: u8,
    },
    /// The frame announces a payload beyond the limit.
    #[error("frame payload of {length} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The announced length.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// The frame's checksum does not match.
    #[error("bad checksum: frame says {expected:#010x}, contents give {actual:#010x}")]
    BadChecksum {
        /// The checksum in the header.
        expected: u32,
        /// The checksum computed over the received bytes.
        actual: u32,
    },
    /// The frame header sets reserved flags.
    #[error("reserved header flags {flags:#06x} are set; this peer supports none")]
    ReservedFlags {
        /// The flags found.
        flags: u16,
    },
    /// A read did not complete by its deadline: the handshake's, or that of a
    /// frame that had started to arrive.
    #[error("{what} not complete within {after:?}")]
    TimedOut {
        /// What was late ("the handshake", "a frame").
        what: &'static str,
        /// The time it was allowed.
        after: std::time::Duration,
    },
    /// No frame began within the reader's idle timeout; the stream is
    /// still usable (see `FrameReader::set_idle_timeout`).
    #[error("no frame began within {after:?}")]
    Idle {
        /// The idle timeout.
        after: std::time::Duration,
    },
    /// The opcode is not known.
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// The payload does not parse.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which message was being parsed.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl WireError {
    /// The error code to send to the peer that caused this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::Io(_) | WireError::Closed | WireError::Truncated { .. } => {
                ErrorCode::Malformed
            }
            WireError::BadMagic { .. } => ErrorCode::BadMagic,
            WireError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::BadChecksum { .. } => ErrorCode::BadChecksum,
            WireError::ReservedFlags { .. } => ErrorCode::UnsupportedFlags,
            WireError::TimedOut { .. } | WireError::Idle { .. } => ErrorCode::TimedOut,
            WireError::UnknownOpcode(_) => ErrorCode::UnknownOpcode,
            WireError::Malformed { .. } => ErrorCode::Malformed,
        }
    }

    /// Whether the stream can go on after this error. Framing errors leave the
    /// reader unable to find the next frame boundary (or unwilling to trust
    /// it), so the connection must be closed; a well-framed message with an
    /// unknown opcode or a malformed payload can be answered and skipped.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            WireError::UnknownOpcode(_) | WireError::Malformed { .. }
        )
    }

    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> WireError {
        WireError::Malformed {
            what,
            detail: detail.into(),
        }
    }
}
