//! Digests of a region's contents for `RegionChecksum`: the segment digests
//! and region digest that `pagoda_wire::checksum` defines, computed over the
//! region's segments as a reader sees them.
//!
//! Each segment is hashed under its table entry's read lock
//! ([`Region::segment_digest`]), so a segment's digest is of a state a reader
//! could have seen. No lock is held across segments: while writes go on, a
//! region digest mixes segments hashed at different moments and is not a
//! consistent snapshot of the region.

use std::sync::OnceLock;

use pagoda_wire::Response;
use pagoda_wire::checksum::{DIGEST_BYTES, Digest, region_digest};
use pagoda_wire::limits::{CHECKSUM_SEGMENTS_MAX, SEGMENT_BYTES};

use crate::error::NodeError;
use crate::region::Region;

/// Zero bytes hashed a piece at a time for an unwritten segment whose
/// length is not the full segment size.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The digest of `length` zero bytes: what an unwritten segment of that
/// length reads as. The full segment's is computed once and kept.
pub fn zero_digest(length: usize) -> Digest {
    static FULL_SEGMENT: OnceLock<Digest> = OnceLock::new();
    let hash = |length: usize| {
        let mut hasher = blake3::Hasher::new();
        let mut rest = length;
        while rest > 0 {
            let take = rest.min(ZEROS.len());
            hasher.update(&ZEROS[..take]);
            rest -= take;
        }
        *hasher.finalize().as_bytes()
    };
    if length as u64 == SEGMENT_BYTES {
        *FULL_SEGMENT.get_or_init(|| hash(length))
    } else {
        hash(length)
    }
}

/// Answers `RegionChecksum` for `region`: the whole digest (walking every
/// segment) without `with_segments`, else the digests of at most
/// [`CHECKSUM_SEGMENTS_MAX`] segments from `start_segment` on.
pub(crate) fn region_checksum(
    region: &Region,
    start_segment: u64,
    with_segments: bool,
) -> Result<Response<'static>, NodeError> {
    region.check_readable()?;
    let segment_bytes = region.segment_bytes();
    // The digests are defined over SEGMENT_BYTES; the node's arena is built
    // with that size, so the region's segments are those.
    assert_eq!(
        segment_bytes, SEGMENT_BYTES,
        "the arena's segment size is not the wire's"
    );
    let segment_count = region.segment_count() as u64;
    if !with_segments {
        if start_segment != 0 {
            return Err(NodeError::InvalidArgument(format!(
                "start segment {start_segment}: the whole region's digest starts at segment 0"
            )));
        }
        let digests = (0..segment_count)
            .map(|number| region.segment_digest(number))
            .collect::<Result<Vec<_>, _>>()?;
        let digest = region_digest(digests.into_iter());
        return Ok(Response::Checksum {
            segment_bytes,
            segment_count,
            digest,
            next_segment: u64::MAX,
            segments: Vec::new(),
        });
    }
    if start_segment > segment_count {
        return Err(NodeError::InvalidArgument(format!(
            "start segment {start_segment} lies beyond the region's {segment_count} segments"
        )));
    }
    let end = segment_count.min(start_segment + CHECKSUM_SEGMENTS_MAX as u64);
    let segments: Vec<(u64, Digest)> = (start_segment..end)
        .map(|number| Ok((number, region.segment_digest(number)?)))
        .collect::<Result<_, NodeError>>()?;
    // Only a reply that covers every segment can carry the region digest.
    let digest = if start_segment == 0 && end == segment_count {
        region_digest(segments.iter().map(|(_, digest)| *digest))
    } else {
        [0; DIGEST_BYTES]
    };
    Ok(Response::Checksum {
        segment_bytes,
        segment_count,
        digest,
        next_segment: if end == segment_count { u64::MAX } else { end },
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the cached zero digest: it is the hash of a full segment of
    // zeros, and a shorter length hashes only that many.
    #[test]
    fn zero_digest_is_the_hash_of_zeros() {
        let full = vec![0u8; SEGMENT_BYTES as usize];
        assert_eq!(zero_digest(full.len()), *blake3::hash(&full).as_bytes());
        assert_eq!(zero_digest(full.len()), *blake3::hash(&full).as_bytes());
        assert_eq!(
            zero_digest(70_000),
            *blake3::hash(&full[..70_000]).as_bytes()
        );
    }
}
