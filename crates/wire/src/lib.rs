//! Pagoda's wire protocol.
//!
//! Every message travels in a frame: a 32-byte header (magic, version, opcode,
//! flags, payload length, request id, fencing epoch, crc32c) followed by the
//! payload. `docs/design.md` gives the layout byte by byte. This crate holds the
//! frame codec ([`frame`]), the messages ([`message`]), the handshake's
//! cryptography ([`auth`]), the limits every peer enforces ([`limits`]) and a
//! frame reader for byte streams that spins briefly before it blocks ([`io`]).
//! It knows nothing of regions' storage, caches or the command line.

#![warn(missing_docs)]

pub mod auth;
pub mod checksum;
pub mod error;
pub mod frame;
pub mod io;
pub mod limits;
pub mod message;
pub mod spin;
pub mod tls;

pub use error::{ErrorCode, WireError};
pub use frame::{FrameHeader, HEADER_BYTES, MAGIC, Opcode, VERSION};
pub use message::{
    CheckpointInfo, OpenMode, PageRange, RecoveryPhase, RecoveryProgress, RegionInfo, RegionStat,
    RegionState, ReplicaInfo, ReplicaRole, ReplicaSet, ReplicateKind, ReplicationMode, Request,
    Response, Since,
};
