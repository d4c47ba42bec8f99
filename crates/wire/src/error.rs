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
    /// The token was missing or wrong.
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
    /// The request's fencing epoch is older than the region's.
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
