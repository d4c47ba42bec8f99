//! Limits every peer enforces. A frame or message beyond them is rejected
//! before anything is allocated for it.

/// Smallest page size a region may have.
pub const PAGE_BYTES_MIN: u32 = 4 * 1024;
/// Largest page size a region may have.
pub const PAGE_BYTES_MAX: u32 = 2 * 1024 * 1024;
/// Default page size.
pub const PAGE_BYTES_DEFAULT: u32 = 4 * 1024;
/// The unit in which a node allocates RAM for a region: pages are grouped into
/// segments of this size, allocated on first write.
pub const SEGMENT_BYTES: u64 = 2 * 1024 * 1024;
/// Largest region a node accepts (1 TiB). Bounds the per-region segment table
/// (512 Ki entries).
pub const REGION_BYTES_MAX: u64 = 1 << 40;
/// Largest region name, in bytes of UTF-8.
pub const REGION_NAME_BYTES_MAX: usize = 255;
/// Most regions one node holds.
pub const REGIONS_MAX: usize = 4096;
/// Largest shared token.
pub const TOKEN_BYTES_MAX: usize = 1024;
/// Largest client name sent in `Hello`.
pub const CLIENT_NAME_BYTES_MAX: usize = 255;
/// Longest node address (`host:port`) in a request.
pub const ADDRESS_BYTES_MAX: usize = 255;
/// Most page bytes a single read or write request moves.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most pages a single read or write request names.
pub const BATCH_PAGES_MAX: usize = 4096;
/// Largest payload of any frame: a full batch plus room for the page list.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = BATCH_BYTES_MAX + 64 * 1024;
/// Longest credential name (`pagoda token create NAME`).
pub const CREDENTIAL_NAME_BYTES_MAX: usize = 64;
/// Largest salt a node may send in its challenge (it sends 16 bytes).
pub const SALT_BYTES_MAX: usize = 64;
/// Largest payload a peer accepts before the connection is authenticated:
/// a `Hello` with the longest client and credential names and its nonce (the
/// `AuthProof` that follows is smaller).
pub const HELLO_PAYLOAD_BYTES_MAX: usize =
    2 + CLIENT_NAME_BYTES_MAX + 2 + CREDENTIAL_NAME_BYTES_MAX + crate::auth::NONCE_BYTES;
/// Most writes one `ApplyJournal` carries.
pub const JOURNAL_ENTRIES_MAX: usize = 65_536;
/// Most bytes of writes one `ApplyJournal` carries.
pub const JOURNAL_BYTES_MAX: usize = BATCH_BYTES_MAX;
/// Largest error message carried in an error reply.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;
/// Largest payload a ping may ask to be echoed back.
pub const PING_REPLY_BYTES_MAX: u32 = 1024 * 1024;
/// Most segment digests one `Checksum` reply lists (16 GiB of region with
/// 2 MiB segments; 320 KiB of reply). A client pages through a larger region
/// with `start_segment`.
pub const CHECKSUM_SEGMENTS_MAX: usize = 8192;
