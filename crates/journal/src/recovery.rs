//! Recovery: turning whatever segments a crash left into the committed, unreleased
//! records, and the log into a clean prefix the journal can append to.
//!
//! # What recovery does
//!
//! 1. Reads the segments in sequence order and keeps the longest valid prefix of the
//!    log: each segment's header must be valid and continue the commit ids, each record
//!    must be valid (see `format`; among other things it must name the segment it is
//!    read from, so stale records in a reused file never count), and commit ids must
//!    follow one another without a gap. Where a segment's valid records stop and every
//!    byte after them is zero (the pre-zeroed space ahead of the tail), the segment ends
//!    cleanly there. The first thing that breaks this is the *hole*.
//! 2. If there is a hole, decides whether it is a torn tail (a crash cut the log while
//!    writes were still unpersisted) or damage to bytes that were once durable: it looks
//!    beyond the hole for a valid record whose `durable_through` is at least `m`, the first
//!    commit id the prefix lacks. Such a record proves a persist covering commit `m` (and
//!    so every byte written before it, the hole included) completed before it was
//!    written. With proof, and `OnCorruption::Fail`, recovery stops with
//!    `JournalError::Corrupt` rather than drop acknowledged commits.
//! 3. Discards the tail: removes every segment after the hole (newest first), persists the
//!    directory, then truncates the hole's segment at the hole (or removes it, if the hole
//!    is its header) and persists that.
//! 4. Removes leading segments whose records are all released, oldest first, persisting
//!    the directory after each so the remaining files never have a gap.
//! 5. Persists every remaining segment and the directory, so that what recovery read (a
//!    killed process can leave written-but-unpersisted bytes in the page cache) is
//!    durable before the caller replays it and before new commits are appended after it.
//!
//! # Why it is safe to crash during recovery
//!
//! Recovery decides everything from what is on the media, and each step leaves the media
//! in a state from which the same decision follows. While step 3 removes later segments,
//! the hole is still in place, so whichever of them survive a crash are again beyond the
//! hole and discarded again. The hole's segment is only truncated once the later segments
//! are durably gone, so a truncation that survives a crash can never make a later segment
//! look like a continuation. Truncation and removal are idempotent. Step 4 removes only
//! released records, oldest segment first. Nothing recovery writes can change which
//! records the valid prefix holds.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::device::{Device, Storage};
use crate::format::{self, Kind, RecordHeader, SegmentHeader};
use crate::journal::{ActiveSegment, SegmentSpan};
use crate::{CommitId, JournalError, JournalOptions, OnCorruption, Record};

/// Bytes read at a time while searching beyond a hole for proof of durability.
const PROOF_SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Bytes read at a time while checking that a segment holds only zeros after its records.
const ZERO_CHECK_CHUNK_BYTES: usize = 64 << 10;

/// What recovery found and did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments read.
    pub segments_scanned: usize,
    /// Unreleased commit records returned to the caller.
    pub records_recovered: usize,
    /// Valid commit records not returned because they were released.
    pub records_released: usize,
    /// Where the valid log ended before its end, if it did.
    pub hole: Option<Hole>,
    /// Segments removed because they lay beyond the hole.
    pub segments_discarded: usize,
    /// Segments removed because all their records were released.
    pub segments_reclaimed: usize,
    /// Whether recovery created a fresh segment (a new or emptied journal).
    pub segment_created: bool,
}

/// The place where the valid prefix of the log ends early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hole {
    /// The segment's sequence number.
    pub segment: u64,
    /// Byte offset within the segment; the log was truncated here (or the segment removed,
    /// when the offset is 0).
    pub offset: u64,
    /// Why the bytes there are not a valid record.
    pub reason: String,
}

/// The result of recovery: the journal's starting state.
pub(crate) struct Recovered {
    /// Unreleased commits, in id order.
    pub records: Vec<Record>,
    /// Everything through this id is released.
    pub released_id: CommitId,
    /// The id the next commit gets.
    pub next_id: CommitId,
    /// Segments before the active one, oldest first.
    pub sealed: VecDeque<SegmentSpan>,
    /// The segment appends go to.
    pub active: ActiveSegment,
    /// What happened.
    pub report: RecoveryReport,
}

/// A segment recovery read, up to where its valid records end.
struct Scanned {
    sequence: u64,
    version: u16,
    device: Arc<dyn Device>,
    end: u64,
    /// Every byte from `end` to here is zero.
    zeroed_end: u64,
    last_id: CommitId,
}

/// The running state of the scan across segments.
struct Scan {
    /// The id the next commit record must carry; `None` until a segment header is read.
    expected: Option<CommitId>,
    released: CommitId,
    records: VecDeque<Record>,
    records_released: usize,
}

enum SegmentScan {
    /// The segment's records run to `end`, and every byte from there to the end of the
    /// file, `zeroed_end`, is zero.
    Clean {
        version: u16,
        end: u64,
        zeroed_end: u64,
    },
    /// The valid records end at `offset`. `version` is the segment header's, if it had a
    /// valid one.
    Hole {
        version: Option<u16>,
        offset: u64,
        reason: String,
    },
}

enum FrameRead {
    /// A valid record; its body is in the caller's buffer.
    Valid(RecordHeader),
    /// The bytes are not a valid record, for this reason.
    Invalid(&'static str),
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> JournalError {
    move |source| JournalError::io(context, source)
}

/// Runs recovery over `storage`.
pub(crate) fn recover(
    storage: &dyn Storage,
    options: &JournalOptions,
) -> Result<Recovered, JournalError> {
    let mut sequences = storage
        .list()
        .map_err(io_error("listing journal segments".into()))?;
    sequences.sort_unstable();

    let mut report = RecoveryReport::default();
    let mut scan = Scan {
        expected: None,
        released: 0,
        records: VecDeque::new(),
        records_released: 0,
    };
    let mut scanned: Vec<Scanned> = Vec::new();
    let mut hole: Option<(usize, Hole)> = None;
    let mut body = Vec::new();

    for (index, &sequence) in sequences.iter().enumerate() {
        if index > 0 && sequence != sequences[index - 1] + 1 {
            let reason = format!(
                "segment {} is missing (segments {} and {} are present)",
                sequences[index - 1] + 1,
                sequences[index - 1],
                sequence
            );
            hole = Some((index, hole_at(sequence, 0, reason)));
            break;
        }
        let device = storage
            .open(sequence)
            .map_err(io_error(format!("opening journal segment {sequence}")))?;
        report.segments_scanned += 1;
        let outcome = scan_segment(&*device, sequence, options, &mut scan, &mut body)?;
        let last_id = scan.expected.map_or(0, |expected| expected - 1);
        match outcome {
            SegmentScan::Clean {
                version,
                end,
                zeroed_end,
            } => scanned.push(Scanned {
                sequence,
                version,
                device,
                end,
                zeroed_end,
                last_id,
            }),
            SegmentScan::Hole {
                version,
                offset,
                reason,
            } => {
                if index == 0 && offset == 0 && sequence != 1 {
                    // Segments before this one were removed, which happens only after a
                    // persist covered this segment's header: it was durable once.
                    return Err(JournalError::Corrupt {
                        segment: sequence,
                        offset: 0,
                        detail: format!(
                            "{reason}; it is the oldest segment, so the commit ids it \
                             continues cannot be determined"
                        ),
                    });
                }
                if offset > 0 {
                    // Truncated at the hole below, so nothing lies beyond `offset`.
                    scanned.push(Scanned {
                        sequence,
                        version: version.expect("a hole after records follows a valid header"),
                        device,
                        end: offset,
                        zeroed_end: offset,
                        last_id,
                    });
                }
                hole = Some((index, hole_at(sequence, offset, reason)));
                break;
            }
        }
    }

    if let Some((index, hole)) = &hole {
        // The first commit id the valid prefix lacks. With no segment header read yet the
        // prefix is empty, and 1 is the lowest id there is.
        let missing_id = scan.expected.unwrap_or(1);
        let proof = match options.on_corruption {
            OnCorruption::Fail => {
                find_proof(storage, &sequences[*index..], hole, missing_id, options)?
            }
            OnCorruption::Truncate => None,
        };
        if let Some(proof) = proof {
            return Err(JournalError::Corrupt {
                segment: hole.segment,
                offset: hole.offset,
                detail: format!(
                    "{}; but the valid record at byte {} of segment {} says commit \
                     {} was durable before it was written, so these bytes were damaged \
                     after they were persisted",
                    hole.reason, proof.offset, proof.segment, proof.durable_through
                ),
            });
        }
        discard_tail(storage, &sequences, *index, hole, &scanned, &mut report)?;
        tracing::warn!(
            segment = hole.segment,
            offset = hole.offset,
            reason = %hole.reason,
            "journal recovery truncated the log"
        );
    }
    report.hole = hole.map(|(_, hole)| hole);

    // Leading segments whose records are all released. The last segment stays: appends
    // continue there.
    let mut reclaimable = 0;
    while reclaimable + 1 < scanned.len() && scanned[reclaimable].last_id <= scan.released {
        reclaimable += 1;
    }
    if reclaimable > 0 {
        // The segments that stay are made durable before the older ones go: a crash
        // between must not leave an oldest segment whose header never reached the disk
        // (the commit ids it continues could not be told).
        for segment in &scanned[reclaimable..] {
            segment.device.sync().map_err(io_error(format!(
                "persisting journal segment {}",
                segment.sequence
            )))?;
        }
    }
    for segment in scanned.drain(..reclaimable) {
        storage.remove(segment.sequence).map_err(io_error(format!(
            "removing released segment {}",
            segment.sequence
        )))?;
        storage
            .sync_directory()
            .map_err(io_error("persisting the journal directory".into()))?;
        report.segments_reclaimed += 1;
    }

    let next_id = scan.expected.unwrap_or(1);
    if scanned.is_empty() {
        // A new journal, or one whose only segment (sequence 1) held no valid header.
        debug_assert!(sequences.is_empty() || sequences[0] == 1);
        let device = storage
            .create(1)
            .map_err(io_error("creating journal segment 1".into()))?;
        let header = SegmentHeader::new(1, next_id);
        device
            .write_at(0, &header.encode())
            .map_err(io_error("writing the header of journal segment 1".into()))?;
        scanned.push(Scanned {
            sequence: 1,
            version: format::FORMAT_VERSION,
            device,
            end: format::SEGMENT_HEADER_BYTES as u64,
            zeroed_end: format::SEGMENT_HEADER_BYTES as u64,
            last_id: next_id - 1,
        });
        report.segment_created = true;
    }

    for segment in &scanned {
        segment.device.sync().map_err(io_error(format!(
            "persisting journal segment {}",
            segment.sequence
        )))?;
    }
    storage
        .sync_directory()
        .map_err(io_error("persisting the journal directory".into()))?;

    let records: Vec<Record> = scan
        .records
        .into_iter()
        .filter(|record| record.id > scan.released)
        .collect();
    report.records_recovered = records.len();
    report.records_released = scan.records_released;

    let last = scanned.pop().expect("recovery leaves at least one segment");
    let sealed = scanned
        .into_iter()
        .map(|segment| SegmentSpan {
            sequence: segment.sequence,
            last_id: segment.last_id,
        })
        .collect();
    assert!(scan.released < next_id, "only written commits are released");
    Ok(Recovered {
        records,
        released_id: scan.released,
        next_id,
        sealed,
        active: ActiveSegment {
            sequence: last.sequence,
            version: last.version,
            device: last.device,
            offset: last.end,
            zeroed_end: last.zeroed_end,
        },
        report,
    })
}

fn hole_at(segment: u64, offset: u64, reason: impl Into<String>) -> Hole {
    Hole {
        segment,
        offset,
        reason: reason.into(),
    }
}

/// Reads one segment's records into `scan`, up to its end or the first invalid byte.
fn scan_segment(
    device: &dyn Device,
    sequence: u64,
    options: &JournalOptions,
    scan: &mut Scan,
    body: &mut Vec<u8>,
) -> Result<SegmentScan, JournalError> {
    let context = |what: &str| format!("{what} journal segment {sequence}");
    let headless = |reason: String| {
        Ok(SegmentScan::Hole {
            version: None,
            offset: 0,
            reason,
        })
    };
    let len = device.len().map_err(io_error(context("sizing")))?;
    if len < format::SEGMENT_HEADER_BYTES as u64 {
        return headless("segment is shorter than its header".into());
    }
    let mut header_bytes = [0u8; format::SEGMENT_HEADER_BYTES];
    device
        .read_at(0, &mut header_bytes)
        .map_err(io_error(context("reading the header of")))?;
    let header = match SegmentHeader::decode(&header_bytes) {
        Ok(header) => header,
        Err(reason) => return headless(reason.into()),
    };
    if header.sequence != sequence {
        return headless(format!("segment header names sequence {}", header.sequence));
    }
    let version = header.version;
    let hole = |offset: u64, reason: String| {
        Ok(SegmentScan::Hole {
            version: Some(version),
            offset,
            reason,
        })
    };
    match scan.expected {
        None => {
            // Everything before the oldest segment was released before it was removed.
            scan.expected = Some(header.first_id);
            scan.released = header.first_id - 1;
        }
        Some(expected) if expected != header.first_id => {
            return hole(
                0,
                format!(
                    "segment starts at commit {} but commit {expected} is next",
                    header.first_id
                ),
            );
        }
        Some(_) => {}
    }

    let mut offset = format::SEGMENT_HEADER_BYTES as u64;
    while offset < len {
        let frame = read_frame(
            device,
            (version, sequence),
            offset,
            len,
            options.record_bytes_max,
            body,
        )
        .map_err(io_error(context("reading")))?;
        let header = match frame {
            FrameRead::Valid(header) => header,
            FrameRead::Invalid(reason) => {
                if is_zero(device, offset, len).map_err(io_error(context("reading")))? {
                    return Ok(SegmentScan::Clean {
                        version,
                        end: offset,
                        zeroed_end: len,
                    });
                }
                return hole(offset, reason.into());
            }
        };
        let expected = scan.expected.expect("set from the segment header");
        match header.kind {
            Kind::Commit => {
                if header.id != expected {
                    return hole(
                        offset,
                        format!("commit {} where commit {expected} is next", header.id),
                    );
                }
                let entries = match format::decode_entries(body, header.entry_count) {
                    Ok(entries) => entries,
                    Err(reason) => return hole(offset, reason.into()),
                };
                scan.records.push_back(Record {
                    id: header.id,
                    entries,
                });
                scan.expected = Some(expected + 1);
            }
            Kind::Release => {
                if header.id >= expected {
                    return hole(
                        offset,
                        format!(
                            "release marker through commit {} but only commits before \
                             {expected} are written",
                            header.id
                        ),
                    );
                }
                scan.released = scan.released.max(header.id);
                while scan
                    .records
                    .front()
                    .is_some_and(|record| record.id <= scan.released)
                {
                    scan.records.pop_front();
                    scan.records_released += 1;
                }
            }
        }
        offset += header.record_bytes();
    }
    Ok(SegmentScan::Clean {
        version,
        end: len,
        zeroed_end: len,
    })
}

/// Whether every byte of `device` from `offset` to `len` is zero. Reads at most
/// `len - offset` bytes, a chunk at a time, and stops at the first other byte.
fn is_zero(device: &dyn Device, offset: u64, len: u64) -> std::io::Result<bool> {
    let mut chunk = vec![0u8; ZERO_CHECK_CHUNK_BYTES.min((len - offset) as usize)];
    let mut position = offset;
    while position < len {
        let size = (len - position).min(chunk.len() as u64) as usize;
        device.read_at(position, &mut chunk[..size])?;
        if chunk[..size].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        position += size as u64;
    }
    Ok(true)
}

/// Reads and validates the record at `offset` of a device of `len` bytes, leaving its
/// body in `body`. `segment` is the format version and sequence number of the segment
/// the device holds. Lengths are checked against `record_bytes_max` and `len` before the
/// body buffer is sized.
fn read_frame(
    device: &dyn Device,
    segment: (u16, u64),
    offset: u64,
    len: u64,
    record_bytes_max: u64,
    body: &mut Vec<u8>,
) -> std::io::Result<FrameRead> {
    if len - offset < format::RECORD_HEADER_BYTES as u64 {
        return Ok(FrameRead::Invalid(
            "partial record header at the end of the segment",
        ));
    }
    let mut header_bytes = [0u8; format::RECORD_HEADER_BYTES];
    device.read_at(offset, &mut header_bytes)?;
    let (version, sequence) = segment;
    let header = match RecordHeader::decode(&header_bytes, record_bytes_max, version, sequence) {
        Ok(header) => header,
        Err(reason) => return Ok(FrameRead::Invalid(reason)),
    };
    if header.record_bytes() > len - offset {
        return Ok(FrameRead::Invalid(
            "record extends beyond the end of the segment",
        ));
    }
    body.clear();
    body.resize(header.body_bytes as usize, 0);
    device.read_at(offset + format::RECORD_HEADER_BYTES as u64, body)?;
    if !header.crc_matches(&header_bytes, body) {
        return Ok(FrameRead::Invalid("record checksum mismatch"));
    }
    Ok(FrameRead::Valid(header))
}

/// A valid record beyond a hole that proves the hole was durable.
struct Proof {
    segment: u64,
    offset: u64,
    durable_through: CommitId,
}

/// Searches every byte position from the hole to the end of the log for a valid record
/// with `durable_through >= missing_id`. Records are not aligned, so the search tries
/// every position where the record magic appears; a candidate's body is read only if its
/// header is valid and claims the durability that matters, so the work stays near one
/// pass over the bytes.
fn find_proof(
    storage: &dyn Storage,
    sequences: &[u64],
    hole: &Hole,
    missing_id: CommitId,
    options: &JournalOptions,
) -> Result<Option<Proof>, JournalError> {
    let magic = format::RECORD_MAGIC;
    let mut chunk = vec![0u8; PROOF_SCAN_CHUNK_BYTES];
    let mut body = Vec::new();
    for &sequence in sequences {
        if sequence < hole.segment {
            continue;
        }
        let context = |what: &str| format!("{what} journal segment {sequence}");
        let device = storage
            .open(sequence)
            .map_err(io_error(context("opening")))?;
        let len = device.len().map_err(io_error(context("sizing")))?;
        // Records are read by their segment's version; with no readable header, by the
        // current one (a proof must then also name this segment).
        let mut header_bytes = [0u8; format::SEGMENT_HEADER_BYTES];
        let version = if len >= format::SEGMENT_HEADER_BYTES as u64 {
            device
                .read_at(0, &mut header_bytes)
                .map_err(io_error(context("reading")))?;
            SegmentHeader::decode(&header_bytes).map_or(format::FORMAT_VERSION, |h| h.version)
        } else {
            format::FORMAT_VERSION
        };
        let segment = (version, sequence);
        let mut position = if sequence == hole.segment {
            hole.offset
        } else {
            0
        };
        while len.saturating_sub(position) >= magic.len() as u64 {
            let size = (len - position).min(PROOF_SCAN_CHUNK_BYTES as u64) as usize;
            device
                .read_at(position, &mut chunk[..size])
                .map_err(io_error(context("reading")))?;
            let candidates = size - magic.len() + 1;
            for at in 0..candidates {
                if chunk[at..at + magic.len()] != magic {
                    continue;
                }
                let offset = position + at as u64;
                if len - offset < format::RECORD_HEADER_BYTES as u64 {
                    continue;
                }
                let mut header_bytes = [0u8; format::RECORD_HEADER_BYTES];
                device
                    .read_at(offset, &mut header_bytes)
                    .map_err(io_error(context("reading")))?;
                let claims_durability = RecordHeader::decode(
                    &header_bytes,
                    options.record_bytes_max,
                    version,
                    sequence,
                )
                .is_ok_and(|header| header.durable_through >= missing_id);
                if !claims_durability {
                    continue;
                }
                let frame = read_frame(
                    &*device,
                    segment,
                    offset,
                    len,
                    options.record_bytes_max,
                    &mut body,
                )
                .map_err(io_error(context("reading")))?;
                if let FrameRead::Valid(header) = frame {
                    return Ok(Some(Proof {
                        segment: sequence,
                        offset,
                        durable_through: header.durable_through,
                    }));
                }
            }
            position += candidates as u64;
        }
    }
    Ok(None)
}

/// Removes everything from the hole on, in the order that keeps a crash in the middle
/// safe (see the module comment).
fn discard_tail(
    storage: &dyn Storage,
    sequences: &[u64],
    index: usize,
    hole: &Hole,
    scanned: &[Scanned],
    report: &mut RecoveryReport,
) -> Result<(), JournalError> {
    let later = &sequences[index + 1..];
    for &sequence in later.iter().rev() {
        storage.remove(sequence).map_err(io_error(format!(
            "removing journal segment {sequence} beyond the torn tail"
        )))?;
        report.segments_discarded += 1;
    }
    if !later.is_empty() {
        storage
            .sync_directory()
            .map_err(io_error("persisting the journal directory".into()))?;
    }
    if hole.offset == 0 {
        storage.remove(hole.segment).map_err(io_error(format!(
            "removing journal segment {}",
            hole.segment
        )))?;
        storage
            .sync_directory()
            .map_err(io_error("persisting the journal directory".into()))?;
        report.segments_discarded += 1;
    } else {
        let segment = scanned
            .last()
            .filter(|segment| segment.sequence == hole.segment)
            .expect("a hole inside a segment follows that segment's valid records");
        segment
            .device
            .truncate(hole.offset)
            .map_err(io_error(format!(
                "truncating journal segment {}",
                hole.segment
            )))?;
        segment.device.sync().map_err(io_error(format!(
            "persisting journal segment {}",
            hole.segment
        )))?;
    }
    Ok(())
}
