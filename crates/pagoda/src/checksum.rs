//! `Client::checksum`: digests of a region's contents computed by the node,
//! for comparing copies of a region on different nodes.

use pagoda_wire::checksum::{DIGEST_BYTES, Digest, region_digest};
use pagoda_wire::limits::{CHECKSUM_SEGMENTS_MAX, REGION_BYTES_MAX, SEGMENT_BYTES};
use pagoda_wire::{Request, Response};

use crate::{Client, ClientError, unexpected};

/// A region's digest as its node computed it (see `pagoda_wire::checksum`
/// for the definition): equal digests mean equal contents. While the region
/// is being written the digest is not of one consistent moment: each segment
/// is hashed as it was when the node reached it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionChecksum {
    /// The whole region's digest.
    pub digest: Digest,
    /// The segment size the segment digests cover.
    pub segment_bytes: u64,
    /// The region's number of segments.
    pub segment_count: u64,
    /// Each segment's digest, segment 0 first; empty unless asked for.
    pub segments: Vec<Digest>,
}

impl Client {
    /// A digest of region `name`'s contents, and with `with_segments` each
    /// segment's digest too. Without segments the node hashes the whole
    /// region in one request (a large, written region takes a while: give
    /// the client a long enough timeout); with them the client pages
    /// through the segment digests and computes the region digest itself.
    pub fn checksum(&self, name: &str, with_segments: bool) -> Result<RegionChecksum, ClientError> {
        let mut segments: Vec<Digest> = Vec::new();
        let mut shape: Option<(u64, u64)> = None;
        let mut start_segment = 0u64;
        loop {
            let request = Request::RegionChecksum {
                name,
                start_segment,
                with_segments,
            };
            let (segment_bytes, segment_count, digest, next_segment, page) =
                match self.call(&request)?.decode()? {
                    Response::Checksum {
                        segment_bytes,
                        segment_count,
                        digest,
                        next_segment,
                        segments,
                    } => (segment_bytes, segment_count, digest, next_segment, segments),
                    other => return Err(unexpected(&other)),
                };
            let protocol = |what: String| Err(ClientError::Protocol(format!("checksum: {what}")));
            if segment_bytes != SEGMENT_BYTES {
                return protocol(format!(
                    "segment size {segment_bytes}, expected {SEGMENT_BYTES}"
                ));
            }
            if segment_count > REGION_BYTES_MAX.div_ceil(SEGMENT_BYTES) {
                return protocol(format!("{segment_count} segments exceed the region limit"));
            }
            if *shape.get_or_insert((segment_bytes, segment_count))
                != (segment_bytes, segment_count)
            {
                return protocol("the region changed shape between pages".into());
            }
            if !with_segments {
                if next_segment != u64::MAX || !page.is_empty() {
                    return protocol("a whole-region digest came with a segment list".into());
                }
                return Ok(RegionChecksum {
                    digest,
                    segment_bytes,
                    segment_count,
                    segments,
                });
            }
            // The node lists the segments in order from where we asked, and
            // says where to go on: check it, so that a digest is never
            // computed over a list with holes.
            if page.len() > CHECKSUM_SEGMENTS_MAX {
                return protocol(format!("{} segment digests in one reply", page.len()));
            }
            let end = start_segment + page.len() as u64;
            if page
                .iter()
                .zip(start_segment..)
                .any(|((index, _), expected)| *index != expected)
            {
                return protocol(format!("segments not listed in order from {start_segment}"));
            }
            let complete = end == segment_count;
            let expected_next = if complete { u64::MAX } else { end };
            if next_segment != expected_next
                || (!complete && page.is_empty())
                || end > segment_count
            {
                return protocol(format!(
                    "next segment {next_segment} after {} segments from {start_segment} of {segment_count}",
                    page.len()
                ));
            }
            segments.extend(page.into_iter().map(|(_, digest)| digest));
            if complete {
                let computed = region_digest(segments.iter().copied());
                // A single page covering the whole region carries the node's
                // own region digest: it must agree.
                if start_segment == 0 && digest != [0; DIGEST_BYTES] && digest != computed {
                    return protocol("the node's region digest disagrees with its segments".into());
                }
                return Ok(RegionChecksum {
                    digest: computed,
                    segment_bytes,
                    segment_count,
                    segments,
                });
            }
            start_segment = end;
        }
    }
}
