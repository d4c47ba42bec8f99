//! Digests of a region's contents, so that copies of a region on different
//! nodes can be compared whole and segment by segment.
//!
//! A *segment digest* is the BLAKE3 hash of one segment's bytes as a reader
//! sees them: [`SEGMENT_BYTES`] bytes, except that the last segment of a
//! region whose size is not a multiple of it covers only the region's bytes
//! in it. An unwritten segment reads as zeros, so its digest is that of the
//! same number of zero bytes.
//!
//! The *region digest* is the BLAKE3 hash of the segment count (u64
//! little-endian) followed by every segment digest in order; see
//! [`region_digest`]. The node computes it when it walks every segment in
//! one request; a client that pages through the segment digests computes
//! it from them with the same function.

use crate::limits::SEGMENT_BYTES;

/// Bytes of a digest.
pub const DIGEST_BYTES: usize = 32;

/// A BLAKE3 digest.
pub type Digest = [u8; DIGEST_BYTES];

/// The largest `Checksum` reply payload: its fixed fields and a full page
/// of [`crate::limits::CHECKSUM_SEGMENTS_MAX`] `(index, digest)` entries.
pub const CHECKSUM_REPLY_PAYLOAD_BYTES_MAX: usize =
    8 + 8 + DIGEST_BYTES + 8 + 4 + crate::limits::CHECKSUM_SEGMENTS_MAX * (8 + DIGEST_BYTES);

/// The digest of `segment_bytes`-byte segment `index` of a region of
/// `region_bytes` bytes covers this many bytes (0 past the region's end).
pub fn segment_length(region_bytes: u64, index: u64) -> u64 {
    let start = index.saturating_mul(SEGMENT_BYTES);
    region_bytes.saturating_sub(start).min(SEGMENT_BYTES)
}

/// The region digest: BLAKE3 over the number of segments (u64
/// little-endian), then each segment's digest in order. The count is
/// taken from the iterator, so the caller passes every segment's digest,
/// segment 0 first.
pub fn region_digest(segment_digests: impl Iterator<Item = Digest>) -> Digest {
    let mut hasher = blake3::Hasher::new();
    match segment_digests.size_hint() {
        // The count is known up front (a slice's or a vector's iterator):
        // hash as the digests come.
        (lower, Some(upper)) if lower == upper => {
            hasher.update(&(lower as u64).to_le_bytes());
            let mut count = 0usize;
            for digest in segment_digests {
                hasher.update(&digest);
                count += 1;
            }
            assert_eq!(count, lower, "the iterator's exact size hint was wrong");
        }
        _ => {
            let digests: Vec<Digest> = segment_digests.collect();
            hasher.update(&(digests.len() as u64).to_le_bytes());
            for digest in &digests {
                hasher.update(digest);
            }
        }
    }
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the published definition: the count comes first, then the
    // segment digests in order, so reordering or dropping one changes it.
    #[test]
    fn region_digest_is_count_then_segment_digests() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let mut hasher = blake3::Hasher::new();
        hasher.update(&2u64.to_le_bytes());
        hasher.update(&a);
        hasher.update(&b);
        assert_eq!(
            region_digest([a, b].into_iter()),
            *hasher.finalize().as_bytes()
        );
        assert_ne!(
            region_digest([a, b].into_iter()),
            region_digest([b, a].into_iter())
        );
        assert_ne!(
            region_digest([a].into_iter()),
            region_digest([a, a].into_iter())
        );
        // An iterator without an exact size gives the same digest.
        assert_eq!(
            region_digest([a, b, a].into_iter().filter(|_| true)),
            region_digest([a, b, a].into_iter())
        );
    }

    // Guards the last segment of a region that is not a multiple of the
    // segment size: its digest covers only the region's bytes.
    #[test]
    fn segment_length_stops_at_the_region_end() {
        assert_eq!(segment_length(3 * SEGMENT_BYTES, 2), SEGMENT_BYTES);
        assert_eq!(segment_length(SEGMENT_BYTES + 4096, 1), 4096);
        assert_eq!(segment_length(SEGMENT_BYTES, 1), 0);
        assert_eq!(segment_length(SEGMENT_BYTES, u64::MAX), 0);
    }
}
