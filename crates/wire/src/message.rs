//! The messages carried in frames, their payload encodings and decoders.
//!
//! Strings are a u16 length followed by UTF-8 bytes; byte strings likewise.
//! Page lists are a u32 count followed by that many u64 page numbers. Decoders
//! borrow from the payload, check every length against the bytes present and
//! against [`crate::limits`], and never allocate more than the limits allow.

use crate::auth::{KEY_BYTES, Key, NONCE_BYTES, Nonce};
use crate::checksum::{DIGEST_BYTES, Digest};
use crate::error::{ErrorCode, WireError};
use crate::frame::{FrameBuilder, Opcode};
use crate::limits::*;

/// A list of page numbers, borrowed from a payload (u64 little-endian each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageList<'a> {
    bytes: &'a [u8],
}

impl<'a> PageList<'a> {
    /// Number of pages named.
    pub fn len(&self) -> usize {
        self.bytes.len() / 8
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The page numbers in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + Clone + 'a {
        self.bytes
            .chunks_exact(8)
            .map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap()))
    }
}

/// A request, decoded from a frame whose opcode is a request opcode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Starts the handshake (see [`crate::auth`]). The node answers
    /// `AuthChallenge`, or `HelloOk` at once if it has no credentials.
    Hello {
        /// A name for the client, for the node's logs.
        client_name: &'a str,
        /// The credential the client authenticates as; empty for none.
        credential: &'a str,
        /// The client's fresh random nonce.
        client_nonce: Nonce,
    },
    /// Answers the node's challenge with a proof of the credential's token.
    AuthProof {
        /// Client key XOR client signature.
        proof: Key,
    },
    /// Asks for a reply of `reply_bytes` bytes. Any payload after the field is
    /// padding, so the request size can be chosen too.
    Ping {
        /// Size of the reply's payload.
        reply_bytes: u32,
    },
    /// Creates a region.
    CreateRegion {
        /// The region's name.
        name: &'a str,
        /// Its size in bytes; a multiple of the page size.
        size: u64,
        /// Its page size; a power of two from 4 KiB to 2 MiB.
        page_size: u32,
        /// Nodes (`host:port`) to keep replicas on; empty for none. The
        /// node the request is sent to becomes the primary.
        replicas: Vec<&'a str>,
        /// How writes are acknowledged when there are replicas.
        mode: ReplicationMode,
    },
    /// Creates a region as a replica of a primary (sent by the primary).
    CreateReplica {
        /// The region's name.
        name: &'a str,
        /// Its size in bytes.
        size: u64,
        /// Its page size.
        page_size: u32,
        /// The region's uid, the same on every copy.
        uid: u64,
        /// The primary's epoch.
        primary_epoch: u64,
        /// The region's writer epoch.
        writer_epoch: u64,
        /// The primary's last applied log sequence number.
        lsn: u64,
        /// The replication mode.
        mode: ReplicationMode,
        /// The primary's address.
        primary: &'a str,
        /// Every replica's address (this one's included).
        replicas: Vec<&'a str>,
    },
    /// Makes this node's replica of a region its primary, at a new primary
    /// epoch.
    Promote {
        /// The region's name.
        name: &'a str,
        /// Promote even a replica that is not known to be in sync.
        force: bool,
    },
    /// Describes a region's replication as this node sees it.
    ReplicaStatus {
        /// The region's name.
        name: &'a str,
    },
    /// A primary's log entry (or a probe) for a replica.
    Replicate {
        /// The region's uid.
        uid: u64,
        /// The sender's primary epoch.
        primary_epoch: u64,
        /// The writer epoch the entry was written under.
        writer_epoch: u64,
        /// The entry's log sequence number (for a probe: the LSN the
        /// primary's epoch began at).
        lsn: u64,
        /// Whether the primary counts this replica as in sync.
        in_sync: bool,
        /// What the entry is.
        kind: ReplicateKind,
        /// Its body (see `ReplicateKind`).
        body: &'a [u8],
    },
    /// Looks a region up by name, for reading or for writing. Opening for
    /// writing takes the region's writer role for this connection.
    OpenRegion {
        /// The region's name.
        name: &'a str,
        /// Read-only or read-write.
        mode: OpenMode,
        /// For a write open: the writer epoch this client held before it
        /// lost its connection, to resume writing under it (its retried
        /// requests keep their numbers); 0 for a new writer, which is given
        /// the next epoch.
        claim_epoch: u64,
    },
    /// Gives back one write open of a region: the connection's writer role
    /// is released when its last write open is closed.
    CloseRegion {
        /// The region's id.
        region: u64,
    },
    /// Returns a region's statistics.
    StatRegion {
        /// The region's name.
        name: &'a str,
    },
    /// Lists all regions.
    ListRegions,
    /// Deletes a region.
    DeleteRegion {
        /// The region's name.
        name: &'a str,
    },
    /// Reads pages; the reply carries them in the order named.
    ReadPages {
        /// The region's id, from `OpenRegion` or `CreateRegion`.
        region: u64,
        /// The pages to read.
        pages: PageList<'a>,
    },
    /// Writes pages; `data` holds them in the order named.
    WritePages {
        /// The region's id.
        region: u64,
        /// The request's log sequence number; the frame header's epoch is
        /// the writer epoch.
        lsn: u64,
        /// The pages to write.
        pages: PageList<'a>,
        /// Their contents, `pages.len() * page_size` bytes.
        data: &'a [u8],
    },
    /// Returns the node's statistics.
    NodeStat,
    /// Asks where the node's local (Unix) socket is, for a client on the
    /// same host. Answered with `LocalSocketPath`.
    LocalSocket,
    /// Asks for a region's memory files, to read its pages from a shared
    /// mapping. Served only on the node's local socket and only with read
    /// access to the region; answered with `RegionShared`, the files beside
    /// it as `SCM_RIGHTS` (see `docs/design.md`, "Co-located access").
    ShareRegion {
        /// The region's id.
        region: u64,
    },
    /// Takes a checkpoint of a region; the reply comes when it is complete.
    Checkpoint {
        /// The region's name.
        name: &'a str,
        /// Write every page, not only those dirty since the last checkpoint
        /// (the new baseline then names no older object).
        full: bool,
    },
    /// Starts rebuilding a region on this node: from its latest baseline in
    /// the storage backend plus the pages dirty on `source` since then.
    RecoverRegion {
        /// The region's name.
        name: &'a str,
        /// The node holding the region now (`host:port`); empty for none.
        source: &'a str,
        /// The token for `source`; empty for none.
        source_token: &'a [u8],
        /// Allow recovery from the baseline alone when `source` is empty.
        baseline_only: bool,
    },
    /// Returns the progress of the recovery of a region on this node.
    RecoveryStatus {
        /// The region's name.
        name: &'a str,
    },
    /// Returns digests of a region's contents (see [`crate::checksum`]).
    /// Without `with_segments` the node walks every segment and returns the
    /// whole region's digest; with it, a page of at most
    /// [`CHECKSUM_SEGMENTS_MAX`] segment digests from `start_segment` on,
    /// from which the client computes the whole digest itself.
    RegionChecksum {
        /// The region's name.
        name: &'a str,
        /// The first segment to list (0 without `with_segments`).
        start_segment: u64,
        /// List segment digests rather than return the whole digest.
        with_segments: bool,
    },
    /// Lists the pages of a region written since a checkpoint or a mark, as
    /// ranges in ascending order, starting at `start_page`.
    DirtyPages {
        /// The region's id.
        region: u64,
        /// What `since` is.
        since: Since,
        /// The first page to consider (for continuing a long list).
        start_page: u64,
    },
    /// Says which segments of a region ([`SEGMENT_BYTES`] each) the node
    /// holds pages of: a page of a segment it does not hold has never been
    /// stored and reads as zeros. Answered with a `SegmentMap` of at most
    /// [`SEGMENT_MAP_BITS_MAX`] segments from `start_segment` on.
    StoredSegments {
        /// The region's id.
        region: u64,
        /// The first segment to describe.
        start_segment: u64,
    },
    /// Makes a region read-only and returns the mark after its last write.
    FreezeRegion {
        /// The region's id.
        region: u64,
    },
    /// Persists a committed transaction's writes on the node (until a
    /// checkpoint covers them) and applies them to the region, all or none.
    ApplyJournal {
        /// The region's id.
        region: u64,
        /// The request's log sequence number; the frame header's epoch is
        /// the writer epoch.
        lsn: u64,
        /// The commit id the client gave it (for logs).
        commit_id: u64,
        /// The writes: byte offset and bytes, in order.
        entries: Vec<(u64, &'a [u8])>,
    },
}

/// How a replicated region's writes are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplicationMode {
    /// Once every in-sync replica has the write.
    Sync = 0,
    /// By the primary alone; replicas follow with a bounded lag.
    Async = 1,
}

impl ReplicationMode {
    /// Maps a byte from the wire.
    pub fn from_u8(value: u8) -> Option<ReplicationMode> {
        match value {
            0 => Some(ReplicationMode::Sync),
            1 => Some(ReplicationMode::Async),
            _ => None,
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ReplicationMode::Sync => "sync",
            ReplicationMode::Async => "async",
        }
    }
}

/// What a `Replicate` request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplicateKind {
    /// Nothing to apply: the replica answers its position. The body is the
    /// primary's newest checkpoint (u64) and the LSN it holds (u64), then
    /// the primary's address; `lsn` is where the primary's epoch began.
    Probe = 0,
    /// A page write batch: the body is a `WritePages` payload's page list
    /// and data.
    Pages = 1,
    /// A journal record: the body is an `ApplyJournal` payload from
    /// `commit_id` on.
    Journal = 2,
    /// A number the primary used for a refused request: nothing to apply.
    Skip = 3,
    /// One segment's bytes, for a rebuild (`lsn` is 0): segment: u64, then
    /// the bytes.
    Segment = 4,
    /// The end of a rebuild: the replica's log moves to `lsn`.
    Reset = 5,
}

impl ReplicateKind {
    /// Maps a byte from the wire.
    pub fn from_u8(value: u8) -> Option<ReplicateKind> {
        Some(match value {
            0 => ReplicateKind::Probe,
            1 => ReplicateKind::Pages,
            2 => ReplicateKind::Journal,
            3 => ReplicateKind::Skip,
            4 => ReplicateKind::Segment,
            5 => ReplicateKind::Reset,
            _ => return None,
        })
    }
}

/// A region's role on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplicaRole {
    /// Not replicated.
    Solo = 0,
    /// The primary: serves reads and writes, forwards writes.
    Primary = 1,
    /// A replica: applies what the primary forwards.
    Replica = 2,
    /// A primary that learned of a newer one, or restarted without knowing
    /// whether it still leads: serves no writes.
    Fenced = 3,
}

impl ReplicaRole {
    /// Maps a byte from the wire.
    pub fn from_u8(value: u8) -> Option<ReplicaRole> {
        Some(match value {
            0 => ReplicaRole::Solo,
            1 => ReplicaRole::Primary,
            2 => ReplicaRole::Replica,
            3 => ReplicaRole::Fenced,
            _ => return None,
        })
    }

    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            ReplicaRole::Solo => "solo",
            ReplicaRole::Primary => "primary",
            ReplicaRole::Replica => "replica",
            ReplicaRole::Fenced => "fenced",
        }
    }
}

/// One replica, as its primary sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Its address.
    pub addr: String,
    /// The highest LSN it has acknowledged.
    pub acked: u64,
    /// Whether it counts for `sync` acknowledgements.
    pub in_sync: bool,
    /// Whether the primary is connected to it.
    pub connected: bool,
    /// Bytes of log entries it has not acknowledged.
    pub lag_bytes: u64,
    /// Age of the oldest entry it has not acknowledged, in milliseconds.
    pub lag_ms: u64,
    /// Bytes of log entries sent to it since the primary took over.
    pub sent_bytes: u64,
    /// Bytes of segments sent to it by rebuilds, and how many rebuilds.
    pub rebuilt_bytes: u64,
    /// Rebuilds by digests it went through.
    pub rebuilds: u64,
    /// What it is doing or why it is out of sync (empty when in sync).
    pub message: String,
}

/// A region's replication, as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSet {
    /// This node's role for the region.
    pub role: ReplicaRole,
    /// The replication mode.
    pub mode: ReplicationMode,
    /// The primary's address, as this node knows it.
    pub primary: String,
    /// The highest primary epoch this node has seen.
    pub primary_epoch: u64,
    /// The highest writer epoch this node has seen.
    pub writer_epoch: u64,
    /// This node's last applied LSN.
    pub lsn: u64,
    /// The newest checkpoint of the region known to this node (on a
    /// replica: its primary's, as the primary last said), and the LSN it
    /// holds; 0 for none.
    pub checkpoint: u64,
    /// The LSN that checkpoint holds.
    pub checkpoint_lsn: u64,
    /// On a replica: whether it believes itself in sync (so promotable
    /// without `--force`), and why not in `message`.
    pub in_sync: bool,
    /// A note: why a replica is not in sync, why a primary is fenced.
    pub message: String,
    /// On a primary: its replicas.
    pub replicas: Vec<ReplicaInfo>,
}

/// Most replicas a region may have.
pub const REPLICAS_MAX: usize = 8;

/// How a region is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpenMode {
    /// Reads only; any number of connections may.
    Read = 0,
    /// Reads and writes; takes the region's writer role, which one
    /// connection holds at a time.
    Write = 1,
}

impl OpenMode {
    /// Maps a byte from the wire.
    pub fn from_u8(value: u8) -> Option<OpenMode> {
        match value {
            0 => Some(OpenMode::Read),
            1 => Some(OpenMode::Write),
            _ => None,
        }
    }
}

/// The point a dirty page list starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// Pages written since the checkpoint of this number began (0: since the
    /// region was created or loaded).
    Checkpoint(u64),
    /// Pages written after a mark returned by an earlier `DirtyPages` or
    /// `FreezeRegion`.
    Mark(u64),
}

/// Most segments one `SegmentMap` reply describes (2 TiB of region in
/// 2 MiB segments, in 128 KiB of bits).
pub const SEGMENT_MAP_BITS_MAX: u32 = 1 << 20;

/// Most bytes of a local socket path (a Unix socket address's path is at
/// most 108 bytes with its terminating NUL).
pub const LOCAL_SOCKET_PATH_BYTES_MAX: usize = 107;

/// Most ranges in one `DirtyPageList` reply.
pub const DIRTY_RANGES_MAX: usize = 256 * 1024;

/// A run of consecutive pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRange {
    /// The first page.
    pub start: u64,
    /// How many pages.
    pub count: u32,
}

/// A region's state on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RegionState {
    /// Serving reads and writes.
    Active = 0,
    /// Being rebuilt on this node; not serving yet.
    Recovering = 1,
    /// Moved to another node: reads only.
    ReadOnly = 2,
    /// Its baseline failed to load; not serving.
    Damaged = 3,
}

impl RegionState {
    /// Maps a byte from the wire.
    pub fn from_u8(value: u8) -> Option<RegionState> {
        Some(match value {
            0 => RegionState::Active,
            1 => RegionState::Recovering,
            2 => RegionState::ReadOnly,
            3 => RegionState::Damaged,
            _ => return None,
        })
    }

    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            RegionState::Active => "active",
            RegionState::Recovering => "recovering",
            RegionState::ReadOnly => "read-only",
            RegionState::Damaged => "damaged",
        }
    }
}

/// What a completed checkpoint wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The checkpoint's number (ascending per region).
    pub number: u64,
    /// Pages written to the storage backend.
    pub pages: u64,
    /// Bytes written, data objects and manifest.
    pub bytes: u64,
    /// Data objects written.
    pub objects: u32,
    /// Whether every page was written.
    pub full: bool,
    /// Pages the new baseline holds in all.
    pub baseline_pages: u64,
    /// Wall time, in microseconds.
    pub micros: u64,
}

/// Where a recovery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecoveryPhase {
    /// Reading the baseline from storage.
    Baseline = 1,
    /// Copying dirty pages from the source.
    Source = 2,
    /// Finished; the region serves.
    Done = 3,
    /// Failed; `message` says why.
    Failed = 4,
}

/// A recovery's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryProgress {
    /// Where it stands.
    pub phase: RecoveryPhase,
    /// The baseline's checkpoint number (0: none).
    pub baseline_checkpoint: u64,
    /// The baseline's age when recovery began, in milliseconds.
    pub baseline_age_ms: u64,
    /// Pages the baseline holds.
    pub baseline_pages: u64,
    /// Pages loaded from the baseline so far.
    pub baseline_pages_done: u64,
    /// Pages the source has listed as dirty so far.
    pub source_pages: u64,
    /// Pages copied from the source so far.
    pub source_pages_done: u64,
    /// Bytes read from the storage backend.
    pub storage_bytes: u64,
    /// Bytes copied from the source.
    pub source_bytes: u64,
    /// Time since recovery began, in milliseconds.
    pub elapsed_ms: u64,
    /// Why it failed, or a note (empty when there is none).
    pub message: String,
}

/// A region's identity and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// The node-assigned id; never reused by that node.
    pub id: u64,
    /// Size in bytes.
    pub size: u64,
    /// Page size in bytes.
    pub page_size: u32,
    /// The region's name.
    pub name: String,
}

/// A region's statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionStat {
    /// The region.
    pub info: RegionInfo,
    /// Segments holding RAM (allocated on first write).
    pub segments_allocated: u64,
    /// Bytes of RAM the region holds.
    pub resident_bytes: u64,
    /// Pages read since the node started.
    pub pages_read: u64,
    /// Pages written since the node started.
    pub pages_written: u64,
    /// The region's state.
    pub state: RegionState,
    /// The latest completed checkpoint's number (0: none).
    pub checkpoint: u64,
    /// Milliseconds since that checkpoint began (`u64::MAX`: none).
    pub checkpoint_age_ms: u64,
    /// Pages written since that checkpoint began.
    pub dirty_pages: u64,
    /// The region's unique id (names are reused, uids never): what its
    /// checkpoints carry, so a recovery can tell whose baseline it found.
    pub uid: u64,
    /// Bytes of node RAM the region's metadata takes besides its pages (it
    /// grows with the segments written, not with the region's size).
    pub metadata_bytes: u64,
    /// Segments whose pages are in the node's bulk tier (on disk).
    pub segments_paged_out: u64,
    /// Bytes of the region's pages in the bulk tier.
    pub bulk_bytes: u64,
    /// Of those, bytes of all-zero blocks, which take no space.
    pub bulk_zero_bytes: u64,
    /// Segments still to be loaded from the region's baseline after a
    /// restart (the node serves meanwhile, loading each on first access;
    /// 0: nothing left to load).
    pub segments_loading: u64,
    /// Why the region is in its state (empty while active): for a damaged
    /// region, what damaged it. At most [`ERROR_MESSAGE_BYTES_MAX`] bytes.
    pub state_reason: String,
}

/// The node's statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStat {
    /// RAM for pages, in bytes.
    pub capacity_bytes: u64,
    /// RAM in use by allocated segments.
    pub used_bytes: u64,
    /// The allocation unit.
    pub segment_bytes: u64,
    /// Regions held.
    pub regions: u32,
    /// Connections open.
    pub connections: u32,
    /// Requests served since start.
    pub requests: u64,
    /// The bulk tier's capacity in bytes (0: the node has none).
    pub bulk_capacity_bytes: u64,
    /// Bytes of distinct blocks stored in the bulk tier.
    pub bulk_used_bytes: u64,
    /// Bytes of non-zero pages paged out, every reference counted: what
    /// the bulk tier would hold without storing identical blocks once.
    pub bulk_referenced_bytes: u64,
    /// Bytes of all-zero pages paged out, which take no space.
    pub bulk_zero_bytes: u64,
    /// Segments paged out to the bulk tier since start.
    pub segments_paged_out: u64,
    /// Segments paged back into RAM since start.
    pub segments_paged_in: u64,
}

/// A reply, decoded from a frame whose opcode is a reply opcode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    /// The node's challenge in answer to `Hello`: the credential's salt and
    /// the node's fresh nonce.
    AuthChallenge {
        /// The credential's salt.
        salt: &'a [u8],
        /// The node's nonce for this connection.
        node_nonce: Nonce,
    },
    /// `Hello` succeeded; the node's limits follow.
    HelloOk {
        /// The protocol version the node speaks.
        version: u8,
        /// Most page bytes per request.
        batch_bytes_max: u32,
        /// Most pages per request.
        batch_pages_max: u32,
    },
    /// The reply to `Ping`.
    Pong {
        /// The echoed bytes (zeros).
        payload: &'a [u8],
    },
    /// A region's description.
    RegionInfo(RegionInfo),
    /// The reply to `OpenRegion`: the region, and for a write open the
    /// writer epoch the client now holds and the region's last applied log
    /// sequence number (its next request is numbered one above).
    RegionOpened {
        /// The region.
        info: RegionInfo,
        /// The writer epoch to send in every mutating request's header (0
        /// for a read open).
        writer_epoch: u64,
        /// The last applied log sequence number.
        lsn: u64,
    },
    /// A region's statistics.
    RegionStat(RegionStat),
    /// All regions.
    RegionList(Vec<RegionInfo>),
    /// Success without a result.
    Done,
    /// Page contents, in the order requested.
    PagesData {
        /// The pages' bytes.
        data: &'a [u8],
    },
    /// The node's statistics.
    NodeStat(NodeStat),
    /// The node's local socket path; empty when it has none.
    LocalSocketPath {
        /// The path, at most [`LOCAL_SOCKET_PATH_BYTES_MAX`] bytes.
        path: &'a str,
    },
    /// A region's memory files are attached (`ShareRegion`): first the data
    /// file, then the metadata file.
    RegionShared {
        /// The region's segment size.
        segment_bytes: u64,
        /// Bytes of the data file (whole segments).
        data_bytes: u64,
        /// Bytes of the metadata file.
        metadata_bytes: u64,
    },
    /// A checkpoint completed.
    CheckpointDone(CheckpointInfo),
    /// A recovery's progress.
    Recovery(RecoveryProgress),
    /// A region's replication.
    ReplicaSet(ReplicaSet),
    /// A region's digest, or a page of its segment digests.
    Checksum {
        /// The segment size the digests cover.
        segment_bytes: u64,
        /// The region's number of segments.
        segment_count: u64,
        /// The whole region's digest when this reply completes a walk that
        /// started at segment 0 (always, without `with_segments`); all zeros
        /// otherwise.
        digest: Digest,
        /// Where to continue the list (`u64::MAX`: it is complete).
        next_segment: u64,
        /// Segment digests, ascending by index (empty without
        /// `with_segments`).
        segments: Vec<(u64, Digest)>,
    },
    /// Dirty page ranges.
    DirtyPageList {
        /// Pages written after this mark are not (all) in the list; ask
        /// again with `Since::Mark(mark)` for them.
        mark: u64,
        /// Where to continue the list (`u64::MAX`: it is complete).
        next_page: u64,
        /// The ranges, ascending.
        ranges: Vec<PageRange>,
    },
    /// A write mark.
    Mark {
        /// Every write before the reply is at or below it.
        mark: u64,
    },
    /// Which segments the node holds pages of (`StoredSegments`).
    SegmentMap {
        /// The segment size.
        segment_bytes: u64,
        /// Where to continue (`u64::MAX`: this reply reaches the region's
        /// last segment).
        next_segment: u64,
        /// Segments described, from the request's `start_segment` on.
        count: u32,
        /// One bit per segment, least significant bit first: set if the
        /// node holds the segment. `count.div_ceil(8)` bytes.
        bits: &'a [u8],
    },
    /// The request failed.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Details for a human.
        message: &'a str,
    },
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < count {
            return Err(WireError::malformed(
                self.what,
                format!("needs {count} more bytes, {} present", self.bytes.len()),
            ));
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(WireError::malformed(
                self.what,
                format!("flag byte {other} is neither 0 nor 1"),
            )),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().unwrap())
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn bytes(&mut self, limit: usize) -> Result<&'a [u8], WireError> {
        let length = self.u16()? as usize;
        if length > limit {
            return Err(WireError::malformed(
                self.what,
                format!("field of {length} bytes exceeds the limit of {limit}"),
            ));
        }
        self.take(length)
    }

    fn str(&mut self, limit: usize) -> Result<&'a str, WireError> {
        let bytes = self.bytes(limit)?;
        std::str::from_utf8(bytes)
            .map_err(|_| WireError::malformed(self.what, "string is not valid UTF-8"))
    }

    fn pages(&mut self) -> Result<PageList<'a>, WireError> {
        let count = self.u32()? as usize;
        if count > BATCH_PAGES_MAX {
            return Err(WireError::malformed(
                self.what,
                format!("{count} pages exceed the batch limit of {BATCH_PAGES_MAX}"),
            ));
        }
        Ok(PageList {
            bytes: self.take(count * 8)?,
        })
    }

    fn addresses(&mut self) -> Result<Vec<&'a str>, WireError> {
        let count = self.u8()? as usize;
        if count > REPLICAS_MAX {
            return Err(WireError::malformed(
                self.what,
                format!("{count} replicas exceed the limit of {REPLICAS_MAX}"),
            ));
        }
        (0..count).map(|_| self.str(ADDRESS_BYTES_MAX)).collect()
    }

    fn mode(&mut self) -> Result<ReplicationMode, WireError> {
        let byte = self.u8()?;
        ReplicationMode::from_u8(byte).ok_or_else(|| {
            WireError::malformed(self.what, format!("unknown replication mode {byte}"))
        })
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn end(&self) -> Result<(), WireError> {
        if !self.bytes.is_empty() {
            return Err(WireError::malformed(
                self.what,
                format!("{} unexpected trailing bytes", self.bytes.len()),
            ));
        }
        Ok(())
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u16::try_from(bytes.len()).expect("field longer than 65535 bytes");
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A message for a human, cut at a character boundary to the limit.
fn put_message(out: &mut Vec<u8>, message: &str) {
    let mut end = message.len().min(ERROR_MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    put_bytes(out, &message.as_bytes()[..end]);
}

fn put_addresses(out: &mut Vec<u8>, addresses: &[&str]) {
    assert!(addresses.len() <= REPLICAS_MAX, "too many replicas");
    out.push(addresses.len() as u8);
    for address in addresses {
        put_bytes(out, address.as_bytes());
    }
}

fn put_pages(out: &mut Vec<u8>, pages: &[u64]) {
    assert!(
        pages.len() <= BATCH_PAGES_MAX,
        "batch exceeds the page limit"
    );
    out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    for page in pages {
        out.extend_from_slice(&page.to_le_bytes());
    }
}

fn put_region_info(out: &mut Vec<u8>, info: &RegionInfo) {
    out.extend_from_slice(&info.id.to_le_bytes());
    out.extend_from_slice(&info.size.to_le_bytes());
    out.extend_from_slice(&info.page_size.to_le_bytes());
    put_bytes(out, info.name.as_bytes());
}

fn read_region_info(reader: &mut Reader<'_>) -> Result<RegionInfo, WireError> {
    Ok(RegionInfo {
        id: reader.u64()?,
        size: reader.u64()?,
        page_size: reader.u32()?,
        name: reader.str(REGION_NAME_BYTES_MAX)?.to_owned(),
    })
}

impl<'a> Request<'a> {
    /// The opcode this request travels under.
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Hello { .. } => Opcode::Hello,
            Request::AuthProof { .. } => Opcode::AuthProof,
            Request::CloseRegion { .. } => Opcode::CloseRegion,
            Request::Ping { .. } => Opcode::Ping,
            Request::CreateRegion { .. } => Opcode::CreateRegion,
            Request::OpenRegion { .. } => Opcode::OpenRegion,
            Request::StatRegion { .. } => Opcode::StatRegion,
            Request::ListRegions => Opcode::ListRegions,
            Request::DeleteRegion { .. } => Opcode::DeleteRegion,
            Request::ReadPages { .. } => Opcode::ReadPages,
            Request::WritePages { .. } => Opcode::WritePages,
            Request::NodeStat => Opcode::NodeStat,
            Request::LocalSocket => Opcode::LocalSocket,
            Request::ShareRegion { .. } => Opcode::ShareRegion,
            Request::Checkpoint { .. } => Opcode::Checkpoint,
            Request::RecoverRegion { .. } => Opcode::RecoverRegion,
            Request::RecoveryStatus { .. } => Opcode::RecoveryStatus,
            Request::DirtyPages { .. } => Opcode::DirtyPages,
            Request::FreezeRegion { .. } => Opcode::FreezeRegion,
            Request::StoredSegments { .. } => Opcode::StoredSegments,
            Request::RegionChecksum { .. } => Opcode::RegionChecksum,
            Request::CreateReplica { .. } => Opcode::CreateReplica,
            Request::Promote { .. } => Opcode::Promote,
            Request::ReplicaStatus { .. } => Opcode::ReplicaStatus,
            Request::Replicate { .. } => Opcode::Replicate,
            Request::ApplyJournal { .. } => Opcode::ApplyJournal,
        }
    }

    /// Appends this request as a whole frame to `out`. `WritePages` is built
    /// with [`encode_write_pages`] instead, which avoids gathering the data
    /// into one slice first; encoding it here copies `data`.
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64, epoch: u64) {
        let mut frame = FrameBuilder::begin(out, self.opcode(), request_id, epoch);
        let payload = frame.payload();
        match self {
            Request::Hello {
                client_name,
                credential,
                client_nonce,
            } => {
                put_bytes(payload, client_name.as_bytes());
                put_bytes(payload, credential.as_bytes());
                payload.extend_from_slice(client_nonce);
            }
            Request::AuthProof { proof } => payload.extend_from_slice(proof),
            Request::OpenRegion {
                name,
                mode,
                claim_epoch,
            } => {
                put_bytes(payload, name.as_bytes());
                payload.push(*mode as u8);
                payload.extend_from_slice(&claim_epoch.to_le_bytes());
            }
            Request::CloseRegion { region } => payload.extend_from_slice(&region.to_le_bytes()),
            Request::Ping { reply_bytes } => payload.extend_from_slice(&reply_bytes.to_le_bytes()),
            Request::CreateRegion {
                name,
                size,
                page_size,
                replicas,
                mode,
            } => {
                put_bytes(payload, name.as_bytes());
                payload.extend_from_slice(&size.to_le_bytes());
                payload.extend_from_slice(&page_size.to_le_bytes());
                put_addresses(payload, replicas);
                payload.push(*mode as u8);
            }
            Request::CreateReplica {
                name,
                size,
                page_size,
                uid,
                primary_epoch,
                writer_epoch,
                lsn,
                mode,
                primary,
                replicas,
            } => {
                put_bytes(payload, name.as_bytes());
                payload.extend_from_slice(&size.to_le_bytes());
                payload.extend_from_slice(&page_size.to_le_bytes());
                for value in [uid, primary_epoch, writer_epoch, lsn] {
                    payload.extend_from_slice(&value.to_le_bytes());
                }
                payload.push(*mode as u8);
                put_bytes(payload, primary.as_bytes());
                put_addresses(payload, replicas);
            }
            Request::Promote { name, force } => {
                put_bytes(payload, name.as_bytes());
                payload.push(*force as u8);
            }
            Request::ReplicaStatus { name } => put_bytes(payload, name.as_bytes()),
            Request::Replicate {
                uid,
                primary_epoch,
                writer_epoch,
                lsn,
                in_sync,
                kind,
                body,
            } => {
                for value in [uid, primary_epoch, writer_epoch, lsn] {
                    payload.extend_from_slice(&value.to_le_bytes());
                }
                payload.push(*in_sync as u8);
                payload.push(*kind as u8);
                payload.extend_from_slice(body);
            }
            Request::StatRegion { name }
            | Request::DeleteRegion { name }
            | Request::RecoveryStatus { name } => put_bytes(payload, name.as_bytes()),
            Request::Checkpoint { name, full } => {
                put_bytes(payload, name.as_bytes());
                payload.push(*full as u8);
            }
            Request::RecoverRegion {
                name,
                source,
                source_token,
                baseline_only,
            } => {
                put_bytes(payload, name.as_bytes());
                put_bytes(payload, source.as_bytes());
                put_bytes(payload, source_token);
                payload.push(*baseline_only as u8);
            }
            Request::DirtyPages {
                region,
                since,
                start_page,
            } => {
                payload.extend_from_slice(&region.to_le_bytes());
                let (kind, value) = match since {
                    Since::Checkpoint(number) => (0u8, number),
                    Since::Mark(mark) => (1u8, mark),
                };
                payload.push(kind);
                payload.extend_from_slice(&value.to_le_bytes());
                payload.extend_from_slice(&start_page.to_le_bytes());
            }
            Request::FreezeRegion { region } => payload.extend_from_slice(&region.to_le_bytes()),
            Request::StoredSegments {
                region,
                start_segment,
            } => {
                payload.extend_from_slice(&region.to_le_bytes());
                payload.extend_from_slice(&start_segment.to_le_bytes());
            }
            Request::RegionChecksum {
                name,
                start_segment,
                with_segments,
            } => {
                put_bytes(payload, name.as_bytes());
                payload.extend_from_slice(&start_segment.to_le_bytes());
                payload.push(*with_segments as u8);
            }
            Request::ApplyJournal {
                region,
                lsn,
                commit_id,
                entries,
            } => {
                assert!(
                    entries.len() <= JOURNAL_ENTRIES_MAX,
                    "too many journal entries"
                );
                payload.extend_from_slice(&region.to_le_bytes());
                payload.extend_from_slice(&lsn.to_le_bytes());
                payload.extend_from_slice(&commit_id.to_le_bytes());
                payload.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for (offset, bytes) in entries {
                    payload.extend_from_slice(&offset.to_le_bytes());
                    payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                    payload.extend_from_slice(bytes);
                }
            }
            Request::ListRegions | Request::NodeStat | Request::LocalSocket => {}
            Request::ShareRegion { region } => payload.extend_from_slice(&region.to_le_bytes()),
            Request::ReadPages { region, pages } => {
                payload.extend_from_slice(&region.to_le_bytes());
                payload.extend_from_slice(&(pages.len() as u32).to_le_bytes());
                payload.extend_from_slice(pages.bytes);
            }
            Request::WritePages {
                region,
                lsn,
                pages,
                data,
            } => {
                payload.extend_from_slice(&region.to_le_bytes());
                payload.extend_from_slice(&lsn.to_le_bytes());
                payload.extend_from_slice(&(pages.len() as u32).to_le_bytes());
                payload.extend_from_slice(pages.bytes);
                payload.extend_from_slice(data);
            }
        }
        frame.finish();
    }

    /// Decodes a request payload. Unknown or reply opcodes are errors the
    /// connection survives.
    pub fn decode(opcode: u8, payload: &'a [u8]) -> Result<Request<'a>, WireError> {
        let Some(op) = Opcode::from_u8(opcode) else {
            return Err(WireError::UnknownOpcode(opcode));
        };
        let what = "request";
        let mut reader = Reader::new(payload, what);
        let request = match op {
            Opcode::Hello => Request::Hello {
                client_name: reader.str(CLIENT_NAME_BYTES_MAX)?,
                credential: reader.str(CREDENTIAL_NAME_BYTES_MAX)?,
                client_nonce: reader.array::<NONCE_BYTES>()?,
            },
            Opcode::AuthProof => Request::AuthProof {
                proof: reader.array::<KEY_BYTES>()?,
            },
            Opcode::CloseRegion => Request::CloseRegion {
                region: reader.u64()?,
            },
            Opcode::Ping => {
                let reply_bytes = reader.u32()?;
                reader.rest();
                Request::Ping { reply_bytes }
            }
            Opcode::CreateRegion => Request::CreateRegion {
                name: reader.str(REGION_NAME_BYTES_MAX)?,
                size: reader.u64()?,
                page_size: reader.u32()?,
                replicas: reader.addresses()?,
                mode: reader.mode()?,
            },
            Opcode::OpenRegion => Request::OpenRegion {
                name: reader.str(REGION_NAME_BYTES_MAX)?,
                mode: {
                    let byte = reader.u8()?;
                    OpenMode::from_u8(byte).ok_or_else(|| {
                        WireError::malformed(what, format!("unknown open mode {byte}"))
                    })?
                },
                claim_epoch: reader.u64()?,
            },
            Opcode::StatRegion => Request::StatRegion {
                name: reader.str(REGION_NAME_BYTES_MAX)?,
            },
            Opcode::ListRegions => Request::ListRegions,
            Opcode::DeleteRegion => Request::DeleteRegion {
                name: reader.str(REGION_NAME_BYTES_MAX)?,
            },
            Opcode::ReadPages => Request::ReadPages {
                region: reader.u64()?,
                pages: reader.pages()?,
            },
            Opcode::WritePages => Request::WritePages {
                region: reader.u64()?,
                lsn: reader.u64()?,
                pages: reader.pages()?,
                data: reader.rest(),
            },
            Opcode::NodeStat => Request::NodeStat,
            Opcode::LocalSocket => Request::LocalSocket,
            Opcode::ShareRegion => Request::ShareRegion {
                region: reader.u64()?,
            },
            Opcode::Checkpoint => Request::Checkpoint {
                name: reader.str(REGION_NAME_BYTES_MAX)?,
                full: reader.bool()?,
            },
            Opcode::RecoverRegion => Request::RecoverRegion {
                name: reader.str(REGION_NAME_BYTES_MAX)?,
                source: reader.str(ADDRESS_BYTES_MAX)?,
                source_token: reader.bytes(TOKEN_BYTES_MAX)?,
                baseline_only: reader.bool()?,
            },
            Opcode::RecoveryStatus => Request::RecoveryStatus {
                name: reader.str(REGION_NAME_BYTES_MAX)?,
            },
            Opcode::DirtyPages => Request::DirtyPages {
                region: reader.u64()?,
                since: match reader.u8()? {
                    0 => Since::Checkpoint(reader.u64()?),
                    1 => Since::Mark(reader.u64()?),
                    other => {
                        return Err(WireError::malformed(
                            what,
                            format!("unknown dirty-page origin {other}"),
                        ));
                    }
                },
                start_page: reader.u64()?,
            },
            Opcode::CreateReplica => Request::CreateReplica {
                name: reader.str(REGION_NAME_BYTES_MAX)?,
                size: reader.u64()?,
                page_size: reader.u32()?,
                uid: reader.u64()?,
                primary_epoch: reader.u64()?,
                writer_epoch: reader.u64()?,
                lsn: reader.u64()?,
                mode: reader.mode()?,
                primary: reader.str(ADDRESS_BYTES_MAX)?,
                replicas: reader.addresses()?,
            },
            Opcode::Promote => Request::Promote {
                name: reader.str(REGION_NAME_BYTES_MAX)?,
                force: reader.bool()?,
            },
            Opcode::ReplicaStatus => Request::ReplicaStatus {
                name: reader.str(REGION_NAME_BYTES_MAX)?,
            },
            Opcode::Replicate => Request::Replicate {
                uid: reader.u64()?,
                primary_epoch: reader.u64()?,
                writer_epoch: reader.u64()?,
                lsn: reader.u64()?,
                in_sync: reader.bool()?,
                kind: {
                    let byte = reader.u8()?;
                    ReplicateKind::from_u8(byte).ok_or_else(|| {
                        WireError::malformed(what, format!("unknown replicate kind {byte}"))
                    })?
                },
                body: reader.rest(),
            },
            Opcode::RegionChecksum => Request::RegionChecksum {
                name: reader.str(REGION_NAME_BYTES_MAX)?,
                start_segment: reader.u64()?,
                with_segments: reader.bool()?,
            },
            Opcode::FreezeRegion => Request::FreezeRegion {
                region: reader.u64()?,
            },
            Opcode::StoredSegments => Request::StoredSegments {
                region: reader.u64()?,
                start_segment: reader.u64()?,
            },
            Opcode::ApplyJournal => {
                let region = reader.u64()?;
                let lsn = reader.u64()?;
                let commit_id = reader.u64()?;
                let count = reader.u32()? as usize;
                if count > JOURNAL_ENTRIES_MAX {
                    return Err(WireError::malformed(
                        what,
                        format!(
                            "{count} journal entries exceed the limit of {JOURNAL_ENTRIES_MAX}"
                        ),
                    ));
                }
                let mut entries = Vec::with_capacity(count);
                let mut total = 0usize;
                for _ in 0..count {
                    let offset = reader.u64()?;
                    let length = reader.u32()? as usize;
                    total += length;
                    if total > JOURNAL_BYTES_MAX {
                        return Err(WireError::malformed(
                            what,
                            format!("journal entries exceed {JOURNAL_BYTES_MAX} bytes"),
                        ));
                    }
                    entries.push((offset, reader.take(length)?));
                }
                Request::ApplyJournal {
                    region,
                    lsn,
                    commit_id,
                    entries,
                }
            }
            _ => return Err(WireError::UnknownOpcode(opcode)),
        };
        reader.end()?;
        Ok(request)
    }
}

/// Appends a `WritePages` frame to `out`, asking `fill(index, out)` to append
/// the contents of the `index`-th page (exactly `page_size` bytes) in turn.
#[allow(clippy::too_many_arguments)]
pub fn encode_write_pages(
    out: &mut Vec<u8>,
    request_id: u64,
    epoch: u64,
    region: u64,
    lsn: u64,
    pages: &[u64],
    page_size: usize,
    mut fill: impl FnMut(usize, &mut Vec<u8>),
) {
    let mut frame = FrameBuilder::begin(out, Opcode::WritePages, request_id, epoch);
    let payload = frame.payload();
    payload.extend_from_slice(&region.to_le_bytes());
    payload.extend_from_slice(&lsn.to_le_bytes());
    put_pages(payload, pages);
    for index in 0..pages.len() {
        let before = payload.len();
        fill(index, payload);
        assert_eq!(
            payload.len() - before,
            page_size,
            "fill wrote a partial page"
        );
    }
    frame.finish();
}

/// Appends a `ReadPages` frame for `pages` to `out`.
pub fn encode_read_pages(
    out: &mut Vec<u8>,
    request_id: u64,
    epoch: u64,
    region: u64,
    pages: &[u64],
) {
    let mut frame = FrameBuilder::begin(out, Opcode::ReadPages, request_id, epoch);
    let payload = frame.payload();
    payload.extend_from_slice(&region.to_le_bytes());
    put_pages(payload, pages);
    frame.finish();
}

impl<'a> Response<'a> {
    /// The opcode this reply travels under.
    pub fn opcode(&self) -> Opcode {
        match self {
            Response::AuthChallenge { .. } => Opcode::AuthChallenge,
            Response::HelloOk { .. } => Opcode::HelloOk,
            Response::Pong { .. } => Opcode::Pong,
            Response::RegionInfo(_) => Opcode::RegionInfo,
            Response::RegionOpened { .. } => Opcode::RegionOpened,
            Response::ReplicaSet(_) => Opcode::ReplicaSet,
            Response::RegionStat(_) => Opcode::RegionStat,
            Response::RegionList(_) => Opcode::RegionList,
            Response::Done => Opcode::Done,
            Response::PagesData { .. } => Opcode::PagesData,
            Response::NodeStat(_) => Opcode::NodeStatReply,
            Response::LocalSocketPath { .. } => Opcode::LocalSocketPath,
            Response::RegionShared { .. } => Opcode::RegionShared,
            Response::CheckpointDone(_) => Opcode::CheckpointDone,
            Response::Recovery(_) => Opcode::Recovery,
            Response::DirtyPageList { .. } => Opcode::DirtyPageList,
            Response::Mark { .. } => Opcode::Mark,
            Response::SegmentMap { .. } => Opcode::SegmentMap,
            Response::Checksum { .. } => Opcode::Checksum,
            Response::Error { .. } => Opcode::Error,
        }
    }

    /// Appends this reply as a whole frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64, epoch: u64) {
        let mut frame = FrameBuilder::begin(out, self.opcode(), request_id, epoch);
        let payload = frame.payload();
        match self {
            Response::AuthChallenge { salt, node_nonce } => {
                put_bytes(payload, salt);
                payload.extend_from_slice(node_nonce);
            }
            Response::HelloOk {
                version,
                batch_bytes_max,
                batch_pages_max,
            } => {
                payload.push(*version);
                payload.extend_from_slice(&batch_bytes_max.to_le_bytes());
                payload.extend_from_slice(&batch_pages_max.to_le_bytes());
            }
            Response::Pong { payload: bytes } => payload.extend_from_slice(bytes),
            Response::RegionInfo(info) => put_region_info(payload, info),
            Response::ReplicaSet(set) => {
                assert!(set.replicas.len() <= REPLICAS_MAX, "too many replicas");
                payload.push(set.role as u8);
                payload.push(set.mode as u8);
                put_bytes(payload, set.primary.as_bytes());
                for value in [
                    set.primary_epoch,
                    set.writer_epoch,
                    set.lsn,
                    set.checkpoint,
                    set.checkpoint_lsn,
                ] {
                    payload.extend_from_slice(&value.to_le_bytes());
                }
                payload.push(set.in_sync as u8);
                put_message(payload, &set.message);
                payload.push(set.replicas.len() as u8);
                for replica in &set.replicas {
                    put_bytes(payload, replica.addr.as_bytes());
                    payload.extend_from_slice(&replica.acked.to_le_bytes());
                    payload.push(replica.in_sync as u8);
                    payload.push(replica.connected as u8);
                    payload.extend_from_slice(&replica.lag_bytes.to_le_bytes());
                    for value in [
                        replica.lag_ms,
                        replica.sent_bytes,
                        replica.rebuilt_bytes,
                        replica.rebuilds,
                    ] {
                        payload.extend_from_slice(&value.to_le_bytes());
                    }
                    put_message(payload, &replica.message);
                }
            }
            Response::RegionOpened {
                info,
                writer_epoch,
                lsn,
            } => {
                put_region_info(payload, info);
                payload.extend_from_slice(&writer_epoch.to_le_bytes());
                payload.extend_from_slice(&lsn.to_le_bytes());
            }
            Response::RegionStat(stat) => {
                put_region_info(payload, &stat.info);
                for value in [
                    stat.segments_allocated,
                    stat.resident_bytes,
                    stat.pages_read,
                    stat.pages_written,
                ] {
                    payload.extend_from_slice(&value.to_le_bytes());
                }
                payload.push(stat.state as u8);
                for value in [
                    stat.checkpoint,
                    stat.checkpoint_age_ms,
                    stat.dirty_pages,
                    stat.uid,
                    stat.metadata_bytes,
                    stat.segments_paged_out,
                    stat.bulk_bytes,
                    stat.bulk_zero_bytes,
                    stat.segments_loading,
                ] {
                    payload.extend_from_slice(&value.to_le_bytes());
                }
                put_message(payload, &stat.state_reason);
            }
            Response::CheckpointDone(info) => {
                for value in [info.number, info.pages, info.bytes] {
                    payload.extend_from_slice(&value.to_le_bytes());
                }
                payload.extend_from_slice(&info.objects.to_le_bytes());
                payload.push(info.full as u8);
                payload.extend_from_slice(&info.baseline_pages.to_le_bytes());
                payload.extend_from_slice(&info.micros.to_le_bytes());
            }
            Response::Recovery(progress) => {
                payload.push(progress.phase as u8);
                for value in [
                    progress.baseline_checkpoint,
                    progress.baseline_age_ms,
                    progress.baseline_pages,
                    progress.baseline_pages_done,
                    progress.source_pages,
                    progress.source_pages_done,
                    progress.storage_bytes,
                    progress.source_bytes,
                    progress.elapsed_ms,
                ] {
                    payload.extend_from_slice(&value.to_le_bytes());
                }
                put_message(payload, &progress.message);
            }
            Response::DirtyPageList {
                mark,
                next_page,
                ranges,
            } => {
                assert!(ranges.len() <= DIRTY_RANGES_MAX, "too many ranges");
                payload.extend_from_slice(&mark.to_le_bytes());
                payload.extend_from_slice(&next_page.to_le_bytes());
                payload.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
                for range in ranges {
                    payload.extend_from_slice(&range.start.to_le_bytes());
                    payload.extend_from_slice(&range.count.to_le_bytes());
                }
            }
            Response::Checksum {
                segment_bytes,
                segment_count,
                digest,
                next_segment,
                segments,
            } => {
                assert!(
                    segments.len() <= CHECKSUM_SEGMENTS_MAX,
                    "too many segment digests"
                );
                payload.extend_from_slice(&segment_bytes.to_le_bytes());
                payload.extend_from_slice(&segment_count.to_le_bytes());
                payload.extend_from_slice(digest);
                payload.extend_from_slice(&next_segment.to_le_bytes());
                payload.extend_from_slice(&(segments.len() as u32).to_le_bytes());
                for (index, digest) in segments {
                    payload.extend_from_slice(&index.to_le_bytes());
                    payload.extend_from_slice(digest);
                }
            }
            Response::Mark { mark } => payload.extend_from_slice(&mark.to_le_bytes()),
            Response::SegmentMap {
                segment_bytes,
                next_segment,
                count,
                bits,
            } => {
                assert!(*count <= SEGMENT_MAP_BITS_MAX, "too many segments");
                assert_eq!(
                    bits.len(),
                    count.div_ceil(8) as usize,
                    "one bit per segment"
                );
                payload.extend_from_slice(&segment_bytes.to_le_bytes());
                payload.extend_from_slice(&next_segment.to_le_bytes());
                payload.extend_from_slice(&count.to_le_bytes());
                payload.extend_from_slice(bits);
            }
            Response::RegionList(list) => {
                assert!(list.len() <= REGIONS_MAX, "region list exceeds the limit");
                payload.extend_from_slice(&(list.len() as u32).to_le_bytes());
                for info in list {
                    put_region_info(payload, info);
                }
            }
            Response::Done => {}
            Response::PagesData { data } => payload.extend_from_slice(data),
            Response::LocalSocketPath { path } => {
                assert!(
                    path.len() <= LOCAL_SOCKET_PATH_BYTES_MAX,
                    "local socket path exceeds the limit"
                );
                put_bytes(payload, path.as_bytes());
            }
            Response::RegionShared {
                segment_bytes,
                data_bytes,
                metadata_bytes,
            } => {
                for value in [segment_bytes, data_bytes, metadata_bytes] {
                    payload.extend_from_slice(&value.to_le_bytes());
                }
            }
            Response::NodeStat(stat) => {
                for value in [stat.capacity_bytes, stat.used_bytes, stat.segment_bytes] {
                    payload.extend_from_slice(&value.to_le_bytes());
                }
                payload.extend_from_slice(&stat.regions.to_le_bytes());
                payload.extend_from_slice(&stat.connections.to_le_bytes());
                payload.extend_from_slice(&stat.requests.to_le_bytes());
                for value in [
                    stat.bulk_capacity_bytes,
                    stat.bulk_used_bytes,
                    stat.bulk_referenced_bytes,
                    stat.bulk_zero_bytes,
                    stat.segments_paged_out,
                    stat.segments_paged_in,
                ] {
                    payload.extend_from_slice(&value.to_le_bytes());
                }
            }
            Response::Error { code, message } => {
                payload.extend_from_slice(&(*code as u16).to_le_bytes());
                put_message(payload, message);
            }
        }
        frame.finish();
    }

    /// Decodes a reply payload.
    pub fn decode(opcode: u8, payload: &'a [u8]) -> Result<Response<'a>, WireError> {
        let Some(op) = Opcode::from_u8(opcode) else {
            return Err(WireError::UnknownOpcode(opcode));
        };
        let what = "reply";
        let mut reader = Reader::new(payload, what);
        let response = match op {
            Opcode::AuthChallenge => Response::AuthChallenge {
                salt: reader.bytes(SALT_BYTES_MAX)?,
                node_nonce: reader.array::<NONCE_BYTES>()?,
            },
            Opcode::HelloOk => Response::HelloOk {
                version: reader.u8()?,
                batch_bytes_max: reader.u32()?,
                batch_pages_max: reader.u32()?,
            },
            Opcode::Pong => Response::Pong {
                payload: reader.rest(),
            },
            Opcode::RegionInfo => Response::RegionInfo(read_region_info(&mut reader)?),
            Opcode::ReplicaSet => {
                let role = reader.u8()?;
                let role = ReplicaRole::from_u8(role).ok_or_else(|| {
                    WireError::malformed(what, format!("unknown replica role {role}"))
                })?;
                let mode = reader.mode()?;
                let primary = reader.str(ADDRESS_BYTES_MAX)?.to_owned();
                let primary_epoch = reader.u64()?;
                let writer_epoch = reader.u64()?;
                let lsn = reader.u64()?;
                let checkpoint = reader.u64()?;
                let checkpoint_lsn = reader.u64()?;
                let in_sync = reader.bool()?;
                let message = reader.str(ERROR_MESSAGE_BYTES_MAX)?.to_owned();
                let count = reader.u8()? as usize;
                if count > REPLICAS_MAX {
                    return Err(WireError::malformed(
                        what,
                        format!("{count} replicas exceed the limit of {REPLICAS_MAX}"),
                    ));
                }
                let mut replicas = Vec::with_capacity(count);
                for _ in 0..count {
                    replicas.push(ReplicaInfo {
                        addr: reader.str(ADDRESS_BYTES_MAX)?.to_owned(),
                        acked: reader.u64()?,
                        in_sync: reader.bool()?,
                        connected: reader.bool()?,
                        lag_bytes: reader.u64()?,
                        lag_ms: reader.u64()?,
                        sent_bytes: reader.u64()?,
                        rebuilt_bytes: reader.u64()?,
                        rebuilds: reader.u64()?,
                        message: reader.str(ERROR_MESSAGE_BYTES_MAX)?.to_owned(),
                    });
                }
                Response::ReplicaSet(ReplicaSet {
                    role,
                    mode,
                    primary,
                    primary_epoch,
                    writer_epoch,
                    lsn,
                    checkpoint,
                    checkpoint_lsn,
                    in_sync,
                    message,
                    replicas,
                })
            }
            Opcode::RegionOpened => Response::RegionOpened {
                info: read_region_info(&mut reader)?,
                writer_epoch: reader.u64()?,
                lsn: reader.u64()?,
            },
            Opcode::RegionStat => Response::RegionStat(RegionStat {
                info: read_region_info(&mut reader)?,
                segments_allocated: reader.u64()?,
                resident_bytes: reader.u64()?,
                pages_read: reader.u64()?,
                pages_written: reader.u64()?,
                state: {
                    let byte = reader.u8()?;
                    RegionState::from_u8(byte).ok_or_else(|| {
                        WireError::malformed(what, format!("unknown region state {byte}"))
                    })?
                },
                checkpoint: reader.u64()?,
                checkpoint_age_ms: reader.u64()?,
                dirty_pages: reader.u64()?,
                uid: reader.u64()?,
                metadata_bytes: reader.u64()?,
                segments_paged_out: reader.u64()?,
                bulk_bytes: reader.u64()?,
                bulk_zero_bytes: reader.u64()?,
                segments_loading: reader.u64()?,
                state_reason: reader.str(ERROR_MESSAGE_BYTES_MAX)?.to_owned(),
            }),
            Opcode::CheckpointDone => Response::CheckpointDone(CheckpointInfo {
                number: reader.u64()?,
                pages: reader.u64()?,
                bytes: reader.u64()?,
                objects: reader.u32()?,
                full: reader.bool()?,
                baseline_pages: reader.u64()?,
                micros: reader.u64()?,
            }),
            Opcode::Recovery => Response::Recovery(RecoveryProgress {
                phase: match reader.u8()? {
                    1 => RecoveryPhase::Baseline,
                    2 => RecoveryPhase::Source,
                    3 => RecoveryPhase::Done,
                    4 => RecoveryPhase::Failed,
                    other => {
                        return Err(WireError::malformed(
                            what,
                            format!("unknown recovery phase {other}"),
                        ));
                    }
                },
                baseline_checkpoint: reader.u64()?,
                baseline_age_ms: reader.u64()?,
                baseline_pages: reader.u64()?,
                baseline_pages_done: reader.u64()?,
                source_pages: reader.u64()?,
                source_pages_done: reader.u64()?,
                storage_bytes: reader.u64()?,
                source_bytes: reader.u64()?,
                elapsed_ms: reader.u64()?,
                message: reader.str(ERROR_MESSAGE_BYTES_MAX)?.to_owned(),
            }),
            Opcode::DirtyPageList => {
                let mark = reader.u64()?;
                let next_page = reader.u64()?;
                let count = reader.u32()? as usize;
                if count > DIRTY_RANGES_MAX {
                    return Err(WireError::malformed(
                        what,
                        format!("{count} ranges exceed the limit of {DIRTY_RANGES_MAX}"),
                    ));
                }
                let bytes = reader.take(count * 12)?;
                let ranges = bytes
                    .chunks_exact(12)
                    .map(|chunk| PageRange {
                        start: u64::from_le_bytes(chunk[..8].try_into().unwrap()),
                        count: u32::from_le_bytes(chunk[8..].try_into().unwrap()),
                    })
                    .collect();
                Response::DirtyPageList {
                    mark,
                    next_page,
                    ranges,
                }
            }
            Opcode::Checksum => {
                let segment_bytes = reader.u64()?;
                let segment_count = reader.u64()?;
                let digest = reader.array::<DIGEST_BYTES>()?;
                let next_segment = reader.u64()?;
                let count = reader.u32()? as usize;
                if count > CHECKSUM_SEGMENTS_MAX {
                    return Err(WireError::malformed(
                        what,
                        format!(
                            "{count} segment digests exceed the limit of {CHECKSUM_SEGMENTS_MAX}"
                        ),
                    ));
                }
                let bytes = reader.take(count * (8 + DIGEST_BYTES))?;
                let segments = bytes
                    .chunks_exact(8 + DIGEST_BYTES)
                    .map(|chunk| {
                        (
                            u64::from_le_bytes(chunk[..8].try_into().unwrap()),
                            chunk[8..].try_into().unwrap(),
                        )
                    })
                    .collect();
                Response::Checksum {
                    segment_bytes,
                    segment_count,
                    digest,
                    next_segment,
                    segments,
                }
            }
            Opcode::Mark => Response::Mark {
                mark: reader.u64()?,
            },
            Opcode::SegmentMap => {
                let segment_bytes = reader.u64()?;
                let next_segment = reader.u64()?;
                let count = reader.u32()?;
                if count > SEGMENT_MAP_BITS_MAX {
                    return Err(WireError::malformed(
                        what,
                        format!("{count} segments exceed the limit of {SEGMENT_MAP_BITS_MAX}"),
                    ));
                }
                Response::SegmentMap {
                    segment_bytes,
                    next_segment,
                    count,
                    bits: reader.take(count.div_ceil(8) as usize)?,
                }
            }
            Opcode::RegionList => {
                let count = reader.u32()? as usize;
                if count > REGIONS_MAX {
                    return Err(WireError::malformed(
                        what,
                        format!("{count} regions exceed the limit of {REGIONS_MAX}"),
                    ));
                }
                let mut list = Vec::with_capacity(count);
                for _ in 0..count {
                    list.push(read_region_info(&mut reader)?);
                }
                Response::RegionList(list)
            }
            Opcode::Done => Response::Done,
            Opcode::PagesData => Response::PagesData {
                data: reader.rest(),
            },
            Opcode::LocalSocketPath => Response::LocalSocketPath {
                path: reader.str(LOCAL_SOCKET_PATH_BYTES_MAX)?,
            },
            Opcode::RegionShared => Response::RegionShared {
                segment_bytes: reader.u64()?,
                data_bytes: reader.u64()?,
                metadata_bytes: reader.u64()?,
            },
            Opcode::NodeStatReply => Response::NodeStat(NodeStat {
                capacity_bytes: reader.u64()?,
                used_bytes: reader.u64()?,
                segment_bytes: reader.u64()?,
                regions: reader.u32()?,
                connections: reader.u32()?,
                requests: reader.u64()?,
                bulk_capacity_bytes: reader.u64()?,
                bulk_used_bytes: reader.u64()?,
                bulk_referenced_bytes: reader.u64()?,
                bulk_zero_bytes: reader.u64()?,
                segments_paged_out: reader.u64()?,
                segments_paged_in: reader.u64()?,
            }),
            Opcode::Error => Response::Error {
                code: ErrorCode::from_u16(reader.u16()?),
                message: reader.str(ERROR_MESSAGE_BYTES_MAX)?,
            },
            _ => return Err(WireError::UnknownOpcode(opcode)),
        };
        reader.end()?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameHeader, HEADER_BYTES};

    fn split(frame: &[u8]) -> (FrameHeader, &[u8]) {
        let header_bytes: [u8; HEADER_BYTES] = frame[..HEADER_BYTES].try_into().unwrap();
        let header = FrameHeader::parse(&header_bytes).unwrap();
        header
            .verify(&header_bytes, &frame[HEADER_BYTES..])
            .unwrap();
        (header, &frame[HEADER_BYTES..])
    }

    // Guards the encoding of every request: each decodes to itself.
    #[test]
    fn requests_round_trip() {
        let pages: Vec<u8> = [3u64, 9].iter().flat_map(|p| p.to_le_bytes()).collect();
        let data = vec![7u8; 8192];
        let requests = [
            Request::Hello {
                client_name: "test",
                credential: "default",
                client_nonce: [3; 32],
            },
            Request::AuthProof { proof: [9; 32] },
            Request::CloseRegion { region: 4 },
            Request::OpenRegion {
                name: "r",
                mode: OpenMode::Write,
                claim_epoch: 7,
            },
            Request::Ping { reply_bytes: 4096 },
            Request::CreateRegion {
                name: "r",
                size: 1 << 30,
                page_size: 4096,
                replicas: Vec::new(),
                mode: ReplicationMode::Sync,
            },
            Request::OpenRegion {
                name: "r",
                mode: OpenMode::Read,
                claim_epoch: 0,
            },
            Request::StatRegion { name: "r" },
            Request::ListRegions,
            Request::DeleteRegion { name: "r" },
            Request::ReadPages {
                region: 5,
                pages: PageList { bytes: &pages },
            },
            Request::WritePages {
                region: 5,
                lsn: 11,
                pages: PageList { bytes: &pages },
                data: &data,
            },
            Request::NodeStat,
            Request::LocalSocket,
            Request::ShareRegion { region: 7 },
            Request::Checkpoint {
                name: "r",
                full: true,
            },
            Request::RecoverRegion {
                name: "r",
                source: "127.0.0.1:7070",
                source_token: b"t",
                baseline_only: false,
            },
            Request::RecoveryStatus { name: "r" },
            Request::DirtyPages {
                region: 3,
                since: Since::Checkpoint(4),
                start_page: 5,
            },
            Request::DirtyPages {
                region: 3,
                since: Since::Mark(6),
                start_page: 0,
            },
            Request::FreezeRegion { region: 3 },
            Request::StoredSegments {
                region: 3,
                start_segment: 9,
            },
            Request::CreateRegion {
                name: "replicated",
                size: 1 << 20,
                page_size: 4096,
                replicas: vec!["127.0.0.1:7001", "[::1]:7002"],
                mode: ReplicationMode::Async,
            },
            Request::CreateReplica {
                name: "replicated",
                size: 1 << 20,
                page_size: 4096,
                uid: 77,
                primary_epoch: 2,
                writer_epoch: 3,
                lsn: 40,
                mode: ReplicationMode::Sync,
                primary: "127.0.0.1:7000",
                replicas: vec!["127.0.0.1:7001"],
            },
            Request::Promote {
                name: "replicated",
                force: true,
            },
            Request::ReplicaStatus { name: "replicated" },
            Request::Replicate {
                uid: 77,
                primary_epoch: 2,
                writer_epoch: 3,
                lsn: 41,
                in_sync: true,
                kind: ReplicateKind::Pages,
                body: b"body",
            },
            Request::ApplyJournal {
                region: 3,
                lsn: 12,
                commit_id: 9,
                entries: vec![(0, b"abc".as_slice()), (4096, b"".as_slice())],
            },
        ];
        for request in requests {
            let mut out = Vec::new();
            request.encode(&mut out, 1, 0);
            let (header, payload) = split(&out);
            assert_eq!(Request::decode(header.opcode, payload).unwrap(), request);
        }
    }

    // Guards the encoding of every reply: each decodes to itself.
    #[test]
    fn responses_round_trip() {
        let info = RegionInfo {
            id: 1,
            size: 4096,
            page_size: 4096,
            name: "a".into(),
        };
        let responses = [
            Response::AuthChallenge {
                salt: &[5; 16],
                node_nonce: [6; 32],
            },
            Response::HelloOk {
                version: 1,
                batch_bytes_max: 1,
                batch_pages_max: 2,
            },
            Response::Pong { payload: &[0; 10] },
            Response::RegionInfo(info.clone()),
            Response::RegionOpened {
                info: info.clone(),
                writer_epoch: 3,
                lsn: 99,
            },
            Response::ReplicaSet(ReplicaSet {
                role: ReplicaRole::Primary,
                mode: ReplicationMode::Sync,
                primary: "127.0.0.1:7000".into(),
                primary_epoch: 2,
                writer_epoch: 3,
                lsn: 99,
                checkpoint: 4,
                checkpoint_lsn: 90,
                in_sync: true,
                message: String::new(),
                replicas: vec![ReplicaInfo {
                    addr: "127.0.0.1:7001".into(),
                    acked: 98,
                    in_sync: false,
                    connected: true,
                    lag_bytes: 4096,
                    lag_ms: 3,
                    sent_bytes: 1 << 20,
                    rebuilt_bytes: 2 << 20,
                    rebuilds: 1,
                    message: "catching up".into(),
                }],
            }),
            Response::RegionStat(RegionStat {
                info: info.clone(),
                segments_allocated: 1,
                resident_bytes: 2,
                pages_read: 3,
                pages_written: 4,
                state: RegionState::ReadOnly,
                checkpoint: 5,
                checkpoint_age_ms: 6,
                dirty_pages: 7,
                uid: 0x1234_5678_9abc_def1,
                metadata_bytes: 65_536,
                segments_paged_out: 2,
                bulk_bytes: 4 << 20,
                bulk_zero_bytes: 1 << 20,
                segments_loading: 9,
                state_reason: "moved to another node".into(),
            }),
            Response::CheckpointDone(CheckpointInfo {
                number: 1,
                pages: 2,
                bytes: 3,
                objects: 4,
                full: true,
                baseline_pages: 5,
                micros: 6,
            }),
            Response::Recovery(RecoveryProgress {
                phase: RecoveryPhase::Source,
                baseline_checkpoint: 1,
                baseline_age_ms: 2,
                baseline_pages: 3,
                baseline_pages_done: 4,
                source_pages: 5,
                source_pages_done: 6,
                storage_bytes: 7,
                source_bytes: 8,
                elapsed_ms: 9,
                message: "note".into(),
            }),
            Response::DirtyPageList {
                mark: 9,
                next_page: u64::MAX,
                ranges: vec![
                    PageRange { start: 1, count: 2 },
                    PageRange {
                        start: 10,
                        count: 1,
                    },
                ],
            },
            Response::Mark { mark: 12 },
            Response::SegmentMap {
                segment_bytes: 2 << 20,
                next_segment: u64::MAX,
                count: 11,
                bits: &[0b1010_0001, 0b101],
            },
            Response::RegionList(vec![info.clone(), info]),
            Response::Done,
            Response::PagesData { data: &[1, 2, 3] },
            Response::LocalSocketPath {
                path: "/var/lib/pagoda/pagoda.sock",
            },
            Response::RegionShared {
                segment_bytes: 2 << 20,
                data_bytes: 4 << 20,
                metadata_bytes: 80,
            },
            Response::NodeStat(NodeStat {
                capacity_bytes: 1,
                used_bytes: 2,
                segment_bytes: 3,
                regions: 4,
                connections: 5,
                requests: 6,
                bulk_capacity_bytes: 7,
                bulk_used_bytes: 8,
                bulk_referenced_bytes: 9,
                bulk_zero_bytes: 10,
                segments_paged_out: 11,
                segments_paged_in: 12,
            }),
            Response::Error {
                code: ErrorCode::OutOfRange,
                message: "page 9 beyond 8",
            },
        ];
        for response in responses {
            let mut out = Vec::new();
            response.encode(&mut out, 1, 0);
            let (header, payload) = split(&out);
            assert_eq!(Response::decode(header.opcode, payload).unwrap(), response);
        }
    }

    // Guards the bounds checks: every truncation of a valid payload is an
    // error, never a panic.
    #[test]
    fn truncated_payloads_are_errors() {
        let mut out = Vec::new();
        Request::CreateRegion {
            name: "region",
            size: 1 << 20,
            page_size: 4096,
            replicas: Vec::new(),
            mode: ReplicationMode::Sync,
        }
        .encode(&mut out, 1, 0);
        let payload = &out[HEADER_BYTES..];
        for cut in 0..payload.len() {
            assert!(Request::decode(Opcode::CreateRegion as u8, &payload[..cut]).is_err());
        }
    }

    // Guards the encoding of RegionChecksum and its Checksum reply: each
    // decodes to itself, with and without a segment list.
    #[test]
    fn checksum_messages_round_trip() {
        for request in [
            Request::RegionChecksum {
                name: "r",
                start_segment: 0,
                with_segments: false,
            },
            Request::RegionChecksum {
                name: "region",
                start_segment: 8192,
                with_segments: true,
            },
        ] {
            let mut out = Vec::new();
            request.encode(&mut out, 1, 0);
            let (header, payload) = split(&out);
            assert_eq!(header.opcode, Opcode::RegionChecksum as u8);
            assert_eq!(Request::decode(header.opcode, payload).unwrap(), request);
        }
        let full: Vec<(u64, Digest)> = (0..CHECKSUM_SEGMENTS_MAX as u64)
            .map(|index| (index, [index as u8; DIGEST_BYTES]))
            .collect();
        for response in [
            Response::Checksum {
                segment_bytes: SEGMENT_BYTES,
                segment_count: 3,
                digest: [7; DIGEST_BYTES],
                next_segment: u64::MAX,
                segments: Vec::new(),
            },
            Response::Checksum {
                segment_bytes: SEGMENT_BYTES,
                segment_count: 2,
                digest: [0; DIGEST_BYTES],
                next_segment: u64::MAX,
                segments: vec![(0, [1; DIGEST_BYTES]), (1, [2; DIGEST_BYTES])],
            },
            Response::Checksum {
                segment_bytes: SEGMENT_BYTES,
                segment_count: 3 * CHECKSUM_SEGMENTS_MAX as u64,
                digest: [0; DIGEST_BYTES],
                next_segment: CHECKSUM_SEGMENTS_MAX as u64,
                segments: full,
            },
        ] {
            let mut out = Vec::new();
            response.encode(&mut out, 1, 0);
            let (header, payload) = split(&out);
            assert_eq!(header.opcode, Opcode::Checksum as u8);
            assert_eq!(Response::decode(header.opcode, payload).unwrap(), response);
        }
    }

    // Guards the bounds of RegionChecksum and Checksum: truncations, a bad
    // flag byte, trailing bytes and a segment count beyond the limit are
    // errors, and a huge count is refused before anything is read for it.
    #[test]
    fn bad_checksum_messages_are_refused() {
        let mut out = Vec::new();
        Request::RegionChecksum {
            name: "region",
            start_segment: 5,
            with_segments: true,
        }
        .encode(&mut out, 1, 0);
        let payload = out[HEADER_BYTES..].to_vec();
        for cut in 0..payload.len() {
            assert!(Request::decode(Opcode::RegionChecksum as u8, &payload[..cut]).is_err());
        }
        let mut bad_flag = payload.clone();
        *bad_flag.last_mut().unwrap() = 2;
        let error = Request::decode(Opcode::RegionChecksum as u8, &bad_flag).unwrap_err();
        assert!(error.to_string().contains("neither 0 nor 1"), "{error}");
        let mut trailing = payload.clone();
        trailing.push(0);
        assert!(Request::decode(Opcode::RegionChecksum as u8, &trailing).is_err());
        let mut long_name = Vec::new();
        long_name.extend_from_slice(&(REGION_NAME_BYTES_MAX as u16 + 1).to_le_bytes());
        long_name.extend_from_slice(&[b'a'; REGION_NAME_BYTES_MAX + 1]);
        long_name.extend_from_slice(&0u64.to_le_bytes());
        long_name.push(0);
        assert!(Request::decode(Opcode::RegionChecksum as u8, &long_name).is_err());

        let mut out = Vec::new();
        Response::Checksum {
            segment_bytes: SEGMENT_BYTES,
            segment_count: 2,
            digest: [0; DIGEST_BYTES],
            next_segment: u64::MAX,
            segments: vec![(0, [1; DIGEST_BYTES]), (1, [2; DIGEST_BYTES])],
        }
        .encode(&mut out, 1, 0);
        let payload = out[HEADER_BYTES..].to_vec();
        for cut in 0..payload.len() {
            assert!(Response::decode(Opcode::Checksum as u8, &payload[..cut]).is_err());
        }
        let mut huge = Vec::new();
        huge.extend_from_slice(&SEGMENT_BYTES.to_le_bytes());
        huge.extend_from_slice(&1u64.to_le_bytes());
        huge.extend_from_slice(&[0; DIGEST_BYTES]);
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        huge.extend_from_slice(&(CHECKSUM_SEGMENTS_MAX as u32 + 1).to_le_bytes());
        let error = Response::decode(Opcode::Checksum as u8, &huge).unwrap_err();
        assert!(error.to_string().contains("exceed the limit"), "{error}");
        huge.truncate(huge.len() - 4);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Response::decode(Opcode::Checksum as u8, &huge).is_err());
    }

    // Guards the page-count limit: a huge count is refused before any read.
    #[test]
    fn page_count_beyond_limit_is_refused() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        let error = Request::decode(Opcode::ReadPages as u8, &payload).unwrap_err();
        assert!(error.to_string().contains("batch limit"), "{error}");
    }
}
