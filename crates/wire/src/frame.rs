//! The frame: a fixed 32-byte header and a payload.
//!
//! ```text
//! offset size field
//!  0     4    magic        0x41444750 ("PGDA" as little-endian bytes)
//!  4     1    version      1
//!  5     1    opcode       see `Opcode`
//!  6     2    flags        0; reserved (a frame with any bit set is refused)
//!  8     4    payload_len  bytes after the header, at most FRAME_PAYLOAD_BYTES_MAX
//! 12     8    request_id   chosen by the client, echoed in the reply
//! 20     8    epoch        fencing epoch of the sender's lease; 0 = none
//! 28     4    checksum     crc32c of header bytes 0..28 followed by the payload
//! ```
//! All integers are little-endian.

use crate::error::WireError;
use crate::limits::FRAME_PAYLOAD_BYTES_MAX;

/// The magic number that starts every frame.
pub const MAGIC: u32 = u32::from_le_bytes(*b"PGDA");
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of the frame header.
pub const HEADER_BYTES: usize = 32;

pub(crate) const CHECKSUM_OFFSET: usize = 28;

/// Operation codes. Replies to a request carry the request's opcode with the
/// high bit set; `Error` answers any request that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Authenticates the connection; must be the first request.
    Hello = 0x01,
    /// Echoes a payload of the requested size; for liveness and measurement.
    Ping = 0x02,
    /// Answers the node's challenge with a proof of the token.
    AuthProof = 0x03,
    /// Creates a region.
    CreateRegion = 0x10,
    /// Looks a region up by name.
    OpenRegion = 0x11,
    /// Returns a region's statistics.
    StatRegion = 0x12,
    /// Lists the node's regions.
    ListRegions = 0x13,
    /// Deletes a region and frees its RAM.
    DeleteRegion = 0x14,
    /// Takes a checkpoint of a region to the storage backend.
    Checkpoint = 0x15,
    /// Starts rebuilding a region on this node from its baseline and a source.
    RecoverRegion = 0x16,
    /// Returns the progress of a region's recovery.
    RecoveryStatus = 0x17,
    /// Gives back a write open of a region (and with the last, the writer
    /// role).
    CloseRegion = 0x18,
    /// Returns digests of a region's contents, whole or per segment.
    RegionChecksum = 0x19,
    /// Creates a region as a replica of a primary (node to node).
    CreateReplica = 0x1a,
    /// Makes this node's replica of a region its primary.
    Promote = 0x1b,
    /// Describes a region's replication.
    ReplicaStatus = 0x1c,
    /// Reads a batch of pages.
    ReadPages = 0x20,
    /// Writes a batch of pages.
    WritePages = 0x21,
    /// Lists the pages written since a checkpoint or a mark.
    DirtyPages = 0x22,
    /// Makes a region read-only (it has moved to another node).
    FreezeRegion = 0x23,
    /// Applies a committed transaction's writes and keeps them durable.
    ApplyJournal = 0x24,
    /// A primary's log entry for a replica (node to node).
    Replicate = 0x25,
    /// Says which of a region's segments the node holds pages of.
    StoredSegments = 0x26,
    /// Hands a co-located client a region's memory files (local socket only).
    ShareRegion = 0x27,
    /// Returns the node's statistics.
    NodeStat = 0x30,
    /// Asks where the node's local socket is.
    LocalSocket = 0x31,
    /// Reply to `Hello`.
    HelloOk = 0x81,
    /// Reply to `Ping`.
    Pong = 0x82,
    /// Reply to `Hello`: the credential's salt and the node's nonce.
    AuthChallenge = 0x83,
    /// Reply carrying one region's description.
    RegionInfo = 0x90,
    /// Reply to `OpenRegion`: the region, the writer epoch and the log
    /// position.
    RegionOpened = 0x98,
    /// Reply with a region's replication.
    ReplicaSet = 0x99,
    /// Reply carrying one region's statistics.
    RegionStat = 0x92,
    /// Reply carrying a list of regions.
    RegionList = 0x93,
    /// Reply to a request that succeeded with nothing to return.
    Done = 0x94,
    /// Reply to `Checkpoint`.
    CheckpointDone = 0x95,
    /// Reply carrying a recovery's progress.
    Recovery = 0x96,
    /// Reply carrying a region's digest or a page of its segment digests.
    Checksum = 0x97,
    /// Reply carrying page contents.
    PagesData = 0xa0,
    /// Reply carrying a list of dirty page ranges.
    DirtyPageList = 0xa1,
    /// Reply carrying a write mark.
    Mark = 0xa2,
    /// Reply carrying a bit per segment: held by the node or not.
    SegmentMap = 0xa3,
    /// Reply to `ShareRegion`; the memory files travel beside it.
    RegionShared = 0xa4,
    /// Reply carrying node statistics.
    NodeStatReply = 0xb0,
    /// Reply carrying the node's local socket path.
    LocalSocketPath = 0xb1,
    /// Reply to a request that failed.
    Error = 0xff,
}

impl Opcode {
    /// Maps a byte from the wire to an opcode.
    pub fn from_u8(value: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match value {
            0x01 => Hello,
            0x02 => Ping,
            0x03 => AuthProof,
            0x10 => CreateRegion,
            0x11 => OpenRegion,
            0x12 => StatRegion,
            0x13 => ListRegions,
            0x14 => DeleteRegion,
            0x15 => Checkpoint,
            0x16 => RecoverRegion,
            0x17 => RecoveryStatus,
            0x18 => CloseRegion,
            0x1a => CreateReplica,
            0x1b => Promote,
            0x1c => ReplicaStatus,
            0x19 => RegionChecksum,
            0x20 => ReadPages,
            0x21 => WritePages,
            0x22 => DirtyPages,
            0x23 => FreezeRegion,
            0x24 => ApplyJournal,
            0x25 => Replicate,
            0x26 => StoredSegments,
            0x27 => ShareRegion,
            0x30 => NodeStat,
            0x31 => LocalSocket,
            0x81 => HelloOk,
            0x82 => Pong,
            0x83 => AuthChallenge,
            0x90 => RegionInfo,
            0x98 => RegionOpened,
            0x99 => ReplicaSet,
            0x92 => RegionStat,
            0x93 => RegionList,
            0x94 => Done,
            0x95 => CheckpointDone,
            0x96 => Recovery,
            0x97 => Checksum,
            0xa0 => PagesData,
            0xa1 => DirtyPageList,
            0xa2 => Mark,
            0xa3 => SegmentMap,
            0xa4 => RegionShared,
            0xb0 => NodeStatReply,
            0xb1 => LocalSocketPath,
            0xff => Error,
            _ => return None,
        })
    }
}

/// A decoded and validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The raw opcode byte (validated against [`Opcode`] by the message layer,
    /// so that an unknown opcode can be answered rather than dropped).
    pub opcode: u8,
    /// Reserved flags; 0.
    pub flags: u16,
    /// Bytes of payload that follow the header.
    pub payload_len: u32,
    /// The request id the reply must echo.
    pub request_id: u64,
    /// The sender's fencing epoch; 0 means none.
    pub epoch: u64,
    /// The checksum the header announces.
    pub checksum: u32,
}

impl FrameHeader {
    /// Parses and validates a header: magic, version, reserved flags and
    /// payload length.
    /// The checksum is checked by [`FrameHeader::verify`] once the payload
    /// is in.
    pub fn parse(bytes: &[u8; HEADER_BYTES]) -> Result<FrameHeader, WireError> {
        let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
        if magic != MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        if bytes[4] != VERSION {
            return Err(WireError::UnsupportedVersion {
                found: bytes[4],
                supported: VERSION,
            });
        }
        let payload_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        if payload_len as usize > FRAME_PAYLOAD_BYTES_MAX {
            return Err(WireError::FrameTooLarge {
                length: payload_len as usize,
                limit: FRAME_PAYLOAD_BYTES_MAX,
            });
        }
        // Reserved flags are refused rather than ignored, so that a later
        // version can give them a meaning without an old peer misreading
        // the frame.
        let flags = u16::from_le_bytes(bytes[6..8].try_into().unwrap());
        if flags != 0 {
            return Err(WireError::ReservedFlags { flags });
        }
        Ok(FrameHeader {
            opcode: bytes[5],
            flags,
            payload_len,
            request_id: u64::from_le_bytes(bytes[12..20].try_into().unwrap()),
            epoch: u64::from_le_bytes(bytes[20..28].try_into().unwrap()),
            checksum: u32::from_le_bytes(bytes[28..32].try_into().unwrap()),
        })
    }

    /// Checks the header's checksum against the header bytes and payload.
    pub fn verify(&self, header: &[u8; HEADER_BYTES], payload: &[u8]) -> Result<(), WireError> {
        let actual = checksum(header, payload);
        if actual != self.checksum {
            return Err(WireError::BadChecksum {
                expected: self.checksum,
                actual,
            });
        }
        Ok(())
    }
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[..CHECKSUM_OFFSET]);
    crc32c::crc32c_append(crc, payload)
}

/// Builds frames into a reusable buffer: `begin` writes a header placeholder,
/// the caller appends the payload, `finish` fills in the length and checksum.
#[derive(Debug)]
pub struct FrameBuilder<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> FrameBuilder<'a> {
    /// Starts a frame at the end of `out`.
    pub fn begin(out: &'a mut Vec<u8>, opcode: Opcode, request_id: u64, epoch: u64) -> Self {
        let start = out.len();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(VERSION);
        out.push(opcode as u8);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&request_id.to_le_bytes());
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        FrameBuilder { out, start }
    }

    /// The buffer to append the payload to.
    pub fn payload(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Fills in the payload length and checksum.
    ///
    /// Panics if the payload exceeds the frame limit: building an oversized
    /// frame is a bug in the sender, which must split batches itself.
    pub fn finish(self) {
        let payload_len = self.out.len() - self.start - HEADER_BYTES;
        assert!(
            payload_len <= FRAME_PAYLOAD_BYTES_MAX,
            "frame payload of {payload_len} bytes exceeds the limit"
        );
        let header_start = self.start;
        self.out[header_start + 8..header_start + 12]
            .copy_from_slice(&(payload_len as u32).to_le_bytes());
        let (head, payload) = self.out[header_start..].split_at(HEADER_BYTES);
        let crc = checksum(head, payload);
        self.out[header_start + CHECKSUM_OFFSET..header_start + HEADER_BYTES]
            .copy_from_slice(&crc.to_le_bytes());
    }
}

/// Recomputes the checksum of `frame`, one whole frame built by
/// [`FrameBuilder`] whose payload was changed in place afterwards (a server
/// fills in pages read later) without changing its length.
pub fn reseal(frame: &mut [u8]) {
    assert!(frame.len() >= HEADER_BYTES, "a frame holds its header");
    let (head, payload) = frame.split_at(HEADER_BYTES);
    assert_eq!(
        u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize,
        payload.len(),
        "the frame's length is unchanged"
    );
    let crc = checksum(head, payload);
    frame[CHECKSUM_OFFSET..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the header layout against accidental change: a built frame parses
    // back with the same fields and a valid checksum.
    #[test]
    fn built_frame_round_trips() {
        let mut out = Vec::new();
        let mut builder = FrameBuilder::begin(&mut out, Opcode::Ping, 42, 7);
        builder.payload().extend_from_slice(b"hello");
        builder.finish();
        assert_eq!(out.len(), HEADER_BYTES + 5);
        let header_bytes: [u8; HEADER_BYTES] = out[..HEADER_BYTES].try_into().unwrap();
        let header = FrameHeader::parse(&header_bytes).unwrap();
        assert_eq!(header.opcode, Opcode::Ping as u8);
        assert_eq!(header.payload_len, 5);
        assert_eq!(header.request_id, 42);
        assert_eq!(header.epoch, 7);
        header.verify(&header_bytes, &out[HEADER_BYTES..]).unwrap();
    }

    // A payload changed in place fails its checksum until resealed.
    #[test]
    fn a_resealed_frame_verifies() {
        let mut out = Vec::new();
        let mut builder = FrameBuilder::begin(&mut out, Opcode::PagesData, 9, 0);
        builder.payload().extend_from_slice(&[0u8; 64]);
        builder.finish();
        out[HEADER_BYTES + 10] = 0xab;
        let header_bytes: [u8; HEADER_BYTES] = out[..HEADER_BYTES].try_into().unwrap();
        let header = FrameHeader::parse(&header_bytes).unwrap();
        assert!(header.verify(&header_bytes, &out[HEADER_BYTES..]).is_err());
        reseal(&mut out);
        let header_bytes: [u8; HEADER_BYTES] = out[..HEADER_BYTES].try_into().unwrap();
        let header = FrameHeader::parse(&header_bytes).unwrap();
        header.verify(&header_bytes, &out[HEADER_BYTES..]).unwrap();
    }

    // Guards that any flipped bit in header or payload is caught.
    #[test]
    fn flipped_bits_fail_the_checksum() {
        let mut out = Vec::new();
        let mut builder = FrameBuilder::begin(&mut out, Opcode::Ping, 1, 0);
        builder.payload().extend_from_slice(&[9u8; 64]);
        builder.finish();
        for bit in [12 * 8, 20 * 8 + 3, (HEADER_BYTES + 10) * 8 + 1] {
            let mut copy = out.clone();
            copy[bit / 8] ^= 1 << (bit % 8);
            let header_bytes: [u8; HEADER_BYTES] = copy[..HEADER_BYTES].try_into().unwrap();
            let header = FrameHeader::parse(&header_bytes).unwrap();
            assert!(matches!(
                header.verify(&header_bytes, &copy[HEADER_BYTES..]),
                Err(WireError::BadChecksum { .. })
            ));
        }
    }

    // Guards the reserved flags: a header with any flag bit set is refused,
    // so that the bits stay free for a later version to define.
    #[test]
    fn reserved_flags_are_refused() {
        for flags in [1u16, 0x8000, 0xffff] {
            let mut out = Vec::new();
            FrameBuilder::begin(&mut out, Opcode::Ping, 1, 0).finish();
            out[6..8].copy_from_slice(&flags.to_le_bytes());
            let header_bytes: [u8; HEADER_BYTES] = out[..HEADER_BYTES].try_into().unwrap();
            match FrameHeader::parse(&header_bytes) {
                Err(WireError::ReservedFlags { flags: found }) => assert_eq!(found, flags),
                other => panic!("flags {flags:#06x} gave {other:?}"),
            }
        }
    }

    // Guards the length limit: an oversized announcement is rejected from the
    // header alone, before any payload is buffered.
    #[test]
    fn oversized_length_is_rejected_from_the_header() {
        let mut out = Vec::new();
        FrameBuilder::begin(&mut out, Opcode::Ping, 1, 0).finish();
        out[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let header_bytes: [u8; HEADER_BYTES] = out[..HEADER_BYTES].try_into().unwrap();
        assert!(matches!(
            FrameHeader::parse(&header_bytes),
            Err(WireError::FrameTooLarge { .. })
        ));
    }
}
