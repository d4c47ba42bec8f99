//! The journal's on-disk format, byte by byte.
//!
//! A journal is a directory of *segment files* named `segment-NNNNNNNNNNNNNNNNNNNN.log`
//! (the segment's sequence number, twenty decimal digits, so names sort in order).
//! Sequence numbers start at 1 and grow by one per rotation; segments are deleted oldest
//! first, so the files present always form one unbroken run of sequence numbers.
//! Every integer is little-endian.
//!
//! # Segment header (40 bytes, at offset 0 of every segment)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic, the ASCII bytes `PGJLSEG` followed by one zero byte |
//! | 8 | 2 | format version, `2` (`1` is still read; see below) |
//! | 10 | 6 | reserved, zero |
//! | 16 | 8 | segment sequence number (must equal the number in the file name) |
//! | 24 | 8 | `first_id`: the commit id the first commit record in this segment carries (1 to 2^62) |
//! | 32 | 4 | CRC-32C (Castagnoli) of bytes 0..32 |
//! | 36 | 4 | reserved, zero |
//!
//! Records follow the header back to back, with no padding, from offset 40. The log in a
//! segment ends at the first offset that does not hold a valid record; when every byte from
//! there to the end of the file is zero, that is the segment's clean end, not a hole.
//!
//! # Pre-zeroed segments
//!
//! The journal keeps the active segment's file written with zeros some way ahead of its
//! tail (`JournalOptions::preallocate_bytes`, 1 MiB by default, at most to
//! `segment_bytes`), growing it a chunk at a time before a record would pass the zeroed
//! end. A record then overwrites blocks that are already allocated and written inside the
//! file's size, so the persist that covers it (`fdatasync`) writes no file-system metadata;
//! only the persist after a chunk was added does. Nothing relies on the zeros being
//! durable: bytes beyond the valid records are never replayed, whatever they hold.
//!
//! # Record (a 40-byte header, then a body of `body_bytes` bytes)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic, the ASCII bytes `PGJR` |
//! | 4 | 4 | CRC-32C of the record's bytes from offset 8 to the end of the body |
//! | 8 | 2 | format version, `2` (the segment's version) |
//! | 10 | 2 | kind: `1` commit, `2` release marker |
//! | 12 | 4 | `body_bytes`: length of the body |
//! | 16 | 8 | `id`: a commit's id (1 to 2^62); for a release marker, the id released through |
//! | 24 | 8 | `durable_through`: the highest commit id whose persist had completed when this record was written |
//! | 32 | 4 | `entry_count`: number of entries in the body |
//! | 36 | 4 | `segment`: the low 32 bits of the sequence number of the segment the record was written to |
//!
//! A commit's body is `entry_count` entries back to back, each:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | region |
//! | 8 | 8 | byte offset within the region |
//! | 16 | 8 | `length` of the data |
//! | 24 | `length` | the data |
//!
//! A release marker has an empty body and `entry_count` zero. It records that everything
//! with id at most `id` is safe elsewhere, so recovery does not return those records again.
//!
//! # What makes a record valid
//!
//! A record is valid when: the magic matches; the version is its segment's version; the
//! kind is known; the `segment` field equals the low 32 bits of the sequence number of the
//! segment it is read from; `40 + body_bytes` is at most the journal's `record_bytes_max`
//! and the record ends within the file; the CRC matches; the entries exactly fill the
//! body; a commit's `durable_through` is below its `id`, and a release marker's `id` is
//! at most its `durable_through`. Every length is checked against `record_bytes_max` and
//! the file's size before anything is allocated for it.
//!
//! Commit ids are assigned in the order records are appended, so along the log (segment by
//! segment, offset by offset) commit records carry the ids `first_id`, `first_id + 1`, ...
//! with no gaps. A record whose id breaks this sequence is treated like an invalid one.
//!
//! # Why the `segment` field
//!
//! A file's bytes beyond the log are not only zeros: a segment file whose space is reused
//! for a later segment (overwritten from its header on, with a new sequence number) still
//! holds the old segment's records beyond the new tail, each with a valid CRC. The
//! `segment` field ties every record to the segment it was written for, so such a stale
//! record never continues the log, never ends a segment as if it were its clean end, and
//! never serves as proof of durability (below). A reused file's new sequence number
//! differs from the one its stale records carry by less than 2^32 (the journal never holds
//! that many segments), so the low 32 bits tell them apart. The commit-id sequence is a
//! second, independent guard: stale commits carry ids the log has already passed.
//!
//! # Format version 1
//!
//! Version 1 is version 2 without the `segment` field (bytes 36..40 of a record are
//! reserved, zero) and without pre-zeroing. A journal written in version 1 opens: its
//! segments are read by version 1's rules, its records replayed as usual, and the first
//! record appended after opening goes to a new version-2 segment (the journal rotates
//! rather than mix versions in one file). Version-1 segments are removed like any other
//! once their records are released.
//!
//! # Why `durable_through`
//!
//! Recovery keeps the longest valid prefix of the log and truncates the rest (a torn tail
//! after a crash). That alone would silently drop acknowledged commits if a byte in the
//! middle of the log went bad. `durable_through` tells the two cases apart: if a valid
//! record *beyond* the first invalid one says that commit `m` (the first id the prefix
//! lacks) had already been persisted when it was written, the invalid bytes were durable
//! once, so they were damaged after the fact, and recovery refuses to open the journal
//! (see [`crate::OnCorruption`]) instead of discarding acknowledged commits.
//!
//! # Invariants
//!
//! - Each record is appended with one write, under the commit lock, right after the
//!   previous one; commit records carry ascending ids with no gaps along the log, and each
//!   carries the sequence number of the segment it is written to.
//! - The active segment's bytes from its tail to its zeroed end were written as zeros
//!   (before any persist that covers a record beyond them), or are zero because the file
//!   was just created or truncated.
//! - A commit is acknowledged only after a persist that began after its write returned.
//! - A record's `durable_through` never exceeds the highest commit id a completed persist
//!   covered when the record was written; the journal's durable id only grows, only
//!   after a persist succeeds, and never after a write or persist failed.
//! - Only durable commits are released; a release marker is persisted before
//!   `release_through` returns and before any segment it frees is removed.
//! - Segment files are removed oldest first, each removal persisted before the next, and
//!   the active segment is never removed, so the files present have no gap.
//! - Before new records are appended after a torn tail, the tail is durably gone
//!   (later segments removed and the directory persisted, then the segment truncated and
//!   persisted), so nothing discarded can reappear after a later crash. A segment whose
//!   valid records end in zeros only is not truncated: there is nothing to discard.
//!
//! # Assumptions about the media
//!
//! - A successful `fdatasync` makes durable every byte written to the file before it
//!   began, and the file's size; a successful `fsync` of the directory makes durable the
//!   files created and removed before it began.
//! - Bytes written and not yet covered by a successful sync may survive a crash whole, in
//!   part, or not at all, in any order relative to each other (at sector granularity or
//!   finer); the same holds for creations and removals not covered by a directory sync.
//! - Truncation and removal are atomic (all or nothing) at a crash.
//! - After a failed write or sync, nothing is known about unsynced data, and a later sync
//!   may report success without having written it (Linux reports a writeback error once).
//!   The journal therefore latches failed and never reports anything durable again.
//! - Durable bytes do not change by themselves. If they do, the CRC detects it; damage
//!   followed by a record that proves an acknowledged commit lay at or after it is
//!   reported, but damage to the last persisted batch looks exactly like a torn tail and
//!   is truncated.

use crate::{CommitId, Entry};

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"PGJLSEG\0";
/// Magic at the start of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"PGJR";
/// The format version this crate writes.
pub const FORMAT_VERSION: u16 = 2;
/// The previous format version, which this crate still reads (records without the
/// `segment` field); the journal never appends to a segment in this version.
pub const FORMAT_VERSION_1: u16 = 1;
/// Bytes in a segment header.
pub const SEGMENT_HEADER_BYTES: usize = 40;
/// Bytes in a record header.
pub const RECORD_HEADER_BYTES: usize = 40;
/// Bytes in an entry header (region, offset, length).
pub const ENTRY_HEADER_BYTES: usize = 24;
/// The largest `record_bytes_max` the format supports (`body_bytes` is a `u32`; a
/// gibibyte keeps every record far below that).
pub const RECORD_BYTES_LIMIT: u64 = 1 << 30;

/// The highest commit id the format accepts: far beyond any real log, and low enough
/// that no id arithmetic on what is read from disk can overflow.
pub const COMMIT_ID_MAX: u64 = 1 << 62;

const KIND_COMMIT: u16 = 1;
const KIND_RELEASE: u16 = 2;

/// The parsed header of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's format version: [`FORMAT_VERSION`] or [`FORMAT_VERSION_1`]. Its
    /// records are read by this version's rules.
    pub version: u16,
    /// The segment's sequence number.
    pub sequence: u64,
    /// The id of the first commit record in the segment.
    pub first_id: CommitId,
}

impl SegmentHeader {
    /// The header of a new segment in the current format.
    pub fn new(sequence: u64, first_id: CommitId) -> Self {
        Self {
            version: FORMAT_VERSION,
            sequence,
            first_id,
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..10].copy_from_slice(&self.version.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.first_id.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..32]);
        bytes[32..36].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes and validates a header; the error says what is wrong.
    pub fn decode(bytes: &[u8; SEGMENT_HEADER_BYTES]) -> Result<Self, &'static str> {
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic");
        }
        if u32_at(bytes, 32) != crc32c::crc32c(&bytes[0..32]) {
            return Err("segment header checksum mismatch");
        }
        let version = u16_at(bytes, 8);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
            return Err("unknown segment format version");
        }
        if bytes[10..16].iter().chain(&bytes[36..40]).any(|&b| b != 0) {
            return Err("segment header reserved bytes are not zero");
        }
        let first_id = u64_at(bytes, 24);
        if first_id == 0 || first_id > COMMIT_ID_MAX {
            return Err("segment header first id is out of range");
        }
        Ok(Self {
            version,
            sequence: u64_at(bytes, 16),
            first_id,
        })
    }
}

/// What a record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A committed transaction.
    Commit,
    /// A release marker: everything through `id` is safe elsewhere.
    Release,
}

/// The parsed header of a record, validated on its own (before its body is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// What the record says.
    pub kind: Kind,
    /// The CRC stored in the record.
    pub crc: u32,
    /// Bytes in the body.
    pub body_bytes: u32,
    /// The commit id, or the id released through.
    pub id: CommitId,
    /// The highest commit id known durable when the record was written.
    pub durable_through: CommitId,
    /// Entries in the body.
    pub entry_count: u32,
}

impl RecordHeader {
    /// Bytes the whole record occupies: header plus body.
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES as u64 + u64::from(self.body_bytes)
    }

    /// Decodes and validates a header read from the segment whose format version and
    /// sequence number are `version` and `sequence`, against `record_bytes_max`; the error
    /// says what is wrong. Does not check the CRC (that needs the body).
    pub fn decode(
        bytes: &[u8; RECORD_HEADER_BYTES],
        record_bytes_max: u64,
        version: u16,
        sequence: u64,
    ) -> Result<Self, &'static str> {
        if bytes[0..4] != RECORD_MAGIC {
            return Err("bad record magic");
        }
        if u16_at(bytes, 8) != version {
            return Err("record format version differs from its segment's");
        }
        let kind = match u16_at(bytes, 10) {
            KIND_COMMIT => Kind::Commit,
            KIND_RELEASE => Kind::Release,
            _ => return Err("unknown record kind"),
        };
        match version {
            FORMAT_VERSION => {
                if u32_at(bytes, 36) != segment_tag(sequence) {
                    return Err("record belongs to another segment");
                }
            }
            _ => {
                if u32_at(bytes, 36) != 0 {
                    return Err("record reserved bytes are not zero");
                }
            }
        }
        let header = Self {
            kind,
            crc: u32_at(bytes, 4),
            body_bytes: u32_at(bytes, 12),
            id: u64_at(bytes, 16),
            durable_through: u64_at(bytes, 24),
            entry_count: u32_at(bytes, 32),
        };
        if header.record_bytes() > record_bytes_max {
            return Err("record length exceeds record_bytes_max");
        }
        match kind {
            Kind::Commit => {
                if u64::from(header.entry_count) * ENTRY_HEADER_BYTES as u64
                    > u64::from(header.body_bytes)
                {
                    return Err("entry count does not fit in the body");
                }
                if header.id == 0 || header.id > COMMIT_ID_MAX {
                    return Err("commit id is out of range");
                }
                if header.durable_through >= header.id {
                    return Err("commit id is not above durable_through");
                }
            }
            Kind::Release => {
                if header.body_bytes != 0 || header.entry_count != 0 {
                    return Err("release marker has a body");
                }
                if header.id > header.durable_through || header.durable_through > COMMIT_ID_MAX {
                    return Err("release marker releases beyond durable_through");
                }
            }
        }
        Ok(header)
    }

    /// Checks the stored CRC against the header bytes and the body.
    pub fn crc_matches(&self, bytes: &[u8; RECORD_HEADER_BYTES], body: &[u8]) -> bool {
        debug_assert_eq!(body.len(), self.body_bytes as usize);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[8..]), body);
        crc == self.crc
    }
}

/// Decodes a commit's body into entries. `entry_count` was checked by
/// [`RecordHeader::decode`] against the body length, so the `Vec` it sizes is bounded by
/// the body, which is bounded by `record_bytes_max`.
pub fn decode_entries(body: &[u8], entry_count: u32) -> Result<Vec<Entry>, &'static str> {
    let mut entries = Vec::with_capacity(entry_count as usize);
    let mut rest = body;
    for _ in 0..entry_count {
        if rest.len() < ENTRY_HEADER_BYTES {
            return Err("entry header runs past the body");
        }
        let region = u64_at(rest, 0);
        let offset = u64_at(rest, 8);
        let length = u64_at(rest, 16);
        rest = &rest[ENTRY_HEADER_BYTES..];
        if length > rest.len() as u64 {
            return Err("entry data runs past the body");
        }
        let (data, tail) = rest.split_at(length as usize);
        entries.push(Entry {
            region,
            offset,
            data: data.to_vec(),
        });
        rest = tail;
    }
    if !rest.is_empty() {
        return Err("bytes left over after the last entry");
    }
    Ok(entries)
}

/// Starts a commit frame in `frame`: a zeroed header to be filled in by [`seal_commit`].
pub fn start_frame(frame: &mut Vec<u8>) {
    frame.clear();
    frame.resize(RECORD_HEADER_BYTES, 0);
}

/// Appends one entry to a frame started by [`start_frame`] and returns the CRC of the
/// body so far, given the CRC of the body before it (`body_crc`, 0 for an empty body).
pub fn append_entry(
    frame: &mut Vec<u8>,
    body_crc: u32,
    region: u64,
    offset: u64,
    data: &[u8],
) -> u32 {
    let start = frame.len();
    frame.extend_from_slice(&region.to_le_bytes());
    frame.extend_from_slice(&offset.to_le_bytes());
    frame.extend_from_slice(&(data.len() as u64).to_le_bytes());
    frame.extend_from_slice(data);
    crc32c::crc32c_append(body_crc, &frame[start..])
}

/// Fills in a commit frame's header. `body_crc` is the CRC of the body alone, as
/// [`append_entry`] computed it, so sealing costs a 32-byte CRC and a combine, not a pass
/// over the body: this runs under the commit lock.
/// `sequence` is the sequence number of the segment the record will be written to.
pub fn seal_commit(
    frame: &mut [u8],
    id: CommitId,
    durable_through: CommitId,
    entry_count: u32,
    body_crc: u32,
    sequence: u64,
) {
    assert!(
        frame.len() >= RECORD_HEADER_BYTES,
        "a frame starts with its header"
    );
    assert!(
        durable_through < id,
        "a commit is never durable before it is written"
    );
    let body_bytes = frame.len() - RECORD_HEADER_BYTES;
    let body_bytes_u32 =
        u32::try_from(body_bytes).expect("commit() checked the record against record_bytes_max");
    write_header(
        frame,
        KIND_COMMIT,
        body_bytes_u32,
        id,
        durable_through,
        entry_count,
        sequence,
    );
    let header_crc = crc32c::crc32c(&frame[8..RECORD_HEADER_BYTES]);
    let crc = crc32c::crc32c_combine(header_crc, body_crc, body_bytes);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes a release marker: everything through `id` is safe elsewhere. `sequence` is
/// the sequence number of the segment the marker will be written to.
pub fn release_marker(
    id: CommitId,
    durable_through: CommitId,
    sequence: u64,
) -> [u8; RECORD_HEADER_BYTES] {
    assert!(id <= durable_through, "only durable commits are released");
    let mut frame = [0u8; RECORD_HEADER_BYTES];
    write_header(
        &mut frame,
        KIND_RELEASE,
        0,
        id,
        durable_through,
        0,
        sequence,
    );
    let crc = crc32c::crc32c(&frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    frame
}

fn write_header(
    frame: &mut [u8],
    kind: u16,
    body_bytes: u32,
    id: CommitId,
    durable_through: CommitId,
    entry_count: u32,
    sequence: u64,
) {
    frame[0..4].copy_from_slice(&RECORD_MAGIC);
    frame[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    frame[10..12].copy_from_slice(&kind.to_le_bytes());
    frame[12..16].copy_from_slice(&body_bytes.to_le_bytes());
    frame[16..24].copy_from_slice(&id.to_le_bytes());
    frame[24..32].copy_from_slice(&durable_through.to_le_bytes());
    frame[32..36].copy_from_slice(&entry_count.to_le_bytes());
    frame[36..40].copy_from_slice(&segment_tag(sequence).to_le_bytes());
}

/// What a version-2 record stores to name its segment: the low 32 bits of the segment's
/// sequence number (truncation intended; see "Why the `segment` field").
pub fn segment_tag(sequence: u64) -> u32 {
    sequence as u32
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The segment the records in these tests are written to.
    const SEQUENCE: u64 = 7;

    fn decode(
        bytes: &[u8; RECORD_HEADER_BYTES],
        record_bytes_max: u64,
    ) -> Result<RecordHeader, &'static str> {
        RecordHeader::decode(bytes, record_bytes_max, FORMAT_VERSION, SEQUENCE)
    }

    fn header_of(frame: &[u8]) -> [u8; RECORD_HEADER_BYTES] {
        frame[..RECORD_HEADER_BYTES].try_into().unwrap()
    }

    #[test]
    fn a_sealed_commit_decodes_to_what_was_appended() {
        let mut frame = Vec::new();
        start_frame(&mut frame);
        let mut crc = 0;
        crc = append_entry(&mut frame, crc, 7, 4096, b"hello");
        crc = append_entry(&mut frame, crc, 8, 0, b"");
        seal_commit(&mut frame, 42, 40, 2, crc, SEQUENCE);

        let bytes = header_of(&frame);
        let header = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(header.kind, Kind::Commit);
        assert_eq!(header.id, 42);
        assert_eq!(header.durable_through, 40);
        assert_eq!(header.record_bytes(), frame.len() as u64);
        let body = &frame[RECORD_HEADER_BYTES..];
        // The combined CRC equals a CRC computed over the bytes in one pass.
        assert!(header.crc_matches(&bytes, body));
        assert_eq!(
            header.crc,
            crc32c::crc32c(&frame[8..]),
            "combine must agree with a direct CRC"
        );
        let entries = decode_entries(body, header.entry_count).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (entries[0].region, entries[0].offset, &entries[0].data[..]),
            (7, 4096, &b"hello"[..])
        );
        assert_eq!(
            (entries[1].region, entries[1].offset, entries[1].data.len()),
            (8, 0, 0)
        );
    }

    #[test]
    fn an_empty_commit_and_a_release_marker_round_trip() {
        let mut frame = Vec::new();
        start_frame(&mut frame);
        seal_commit(&mut frame, 1, 0, 0, 0, SEQUENCE);
        let bytes = header_of(&frame);
        let header = decode(&bytes, 1 << 20).unwrap();
        assert!(header.crc_matches(&bytes, &[]));

        let marker = release_marker(5, 9, SEQUENCE);
        let header = decode(&marker, 1 << 20).unwrap();
        assert_eq!(
            (header.kind, header.id, header.durable_through),
            (Kind::Release, 5, 9)
        );
        assert!(header.crc_matches(&marker, &[]));
    }

    #[test]
    fn every_single_bit_flip_in_a_record_is_detected() {
        let mut frame = Vec::new();
        start_frame(&mut frame);
        let crc = append_entry(&mut frame, 0, 3, 17, &[0xAB; 33]);
        seal_commit(&mut frame, 9, 8, 1, crc, SEQUENCE);
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut damaged = frame.clone();
                damaged[byte] ^= 1 << bit;
                let bytes = header_of(&damaged);
                let valid = decode(&bytes, 1 << 20).is_ok_and(|header| {
                    header.record_bytes() == damaged.len() as u64
                        && header.crc_matches(&bytes, &damaged[RECORD_HEADER_BYTES..])
                });
                assert!(!valid, "flip of bit {bit} in byte {byte} went unnoticed");
            }
        }
    }

    #[test]
    fn lengths_beyond_the_limit_are_refused_before_reading_the_body() {
        let mut frame = Vec::new();
        start_frame(&mut frame);
        let crc = append_entry(&mut frame, 0, 0, 0, &[1; 100]);
        seal_commit(&mut frame, 2, 1, 1, crc, SEQUENCE);
        let bytes = header_of(&frame);
        assert!(decode(&bytes, frame.len() as u64).is_ok());
        assert_eq!(
            decode(&bytes, frame.len() as u64 - 1),
            Err("record length exceeds record_bytes_max")
        );
        // An entry count that could not fit in the body is refused before any Vec is sized.
        let mut lying = bytes;
        lying[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&lying, 1 << 20),
            Err("entry count does not fit in the body")
        );
    }

    #[test]
    fn a_segment_header_round_trips_and_refuses_damage() {
        let header = SegmentHeader::new(3, 1000);
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for byte in 0..SEGMENT_HEADER_BYTES {
            let mut damaged = bytes;
            damaged[byte] ^= 0x10;
            assert!(SegmentHeader::decode(&damaged).is_err(), "byte {byte}");
        }
    }

    /// Guards against a stale record (one written for an earlier segment whose file was
    /// reused) passing for a record of the segment it is read from, and against a
    /// version-2 record passing in a version-1 segment or the reverse.
    #[test]
    fn a_record_is_valid_only_in_the_segment_and_version_it_was_written_for() {
        let mut frame = Vec::new();
        start_frame(&mut frame);
        let crc = append_entry(&mut frame, 0, 1, 0, b"x");
        seal_commit(&mut frame, 5, 4, 1, crc, SEQUENCE);
        let bytes = header_of(&frame);
        assert!(RecordHeader::decode(&bytes, 1 << 20, FORMAT_VERSION, SEQUENCE).is_ok());
        for other in [SEQUENCE - 1, SEQUENCE + 1, SEQUENCE + (1 << 31)] {
            assert_eq!(
                RecordHeader::decode(&bytes, 1 << 20, FORMAT_VERSION, other),
                Err("record belongs to another segment"),
                "read from segment {other}"
            );
        }
        assert_eq!(
            RecordHeader::decode(&bytes, 1 << 20, FORMAT_VERSION_1, SEQUENCE),
            Err("record format version differs from its segment's")
        );
        let marker = release_marker(3, 4, SEQUENCE);
        assert_eq!(
            RecordHeader::decode(&marker, 1 << 20, FORMAT_VERSION, SEQUENCE + 1),
            Err("record belongs to another segment")
        );

        // A version-1 record: version 1 and bytes 36..40 zero (CRC over the result).
        let mut old = frame.clone();
        old[8..10].copy_from_slice(&FORMAT_VERSION_1.to_le_bytes());
        old[36..40].fill(0);
        let crc = crc32c::crc32c(&old[8..]);
        old[4..8].copy_from_slice(&crc.to_le_bytes());
        let old_bytes = header_of(&old);
        let header = RecordHeader::decode(&old_bytes, 1 << 20, FORMAT_VERSION_1, 99).unwrap();
        assert!(header.crc_matches(&old_bytes, &old[RECORD_HEADER_BYTES..]));
        assert_eq!(
            RecordHeader::decode(&old_bytes, 1 << 20, FORMAT_VERSION, 99),
            Err("record format version differs from its segment's")
        );
    }

    #[test]
    fn a_version_1_segment_header_still_decodes() {
        let header = SegmentHeader {
            version: FORMAT_VERSION_1,
            sequence: 4,
            first_id: 10,
        };
        assert_eq!(SegmentHeader::decode(&header.encode()), Ok(header));
        let unknown = SegmentHeader {
            version: 3,
            ..header
        };
        assert_eq!(
            SegmentHeader::decode(&unknown.encode()),
            Err("unknown segment format version")
        );
    }
}
