//! Regions: the client's view of a node's region, through a local cache.

use std::sync::Arc;

use pagoda_cache::policy::PolicyKind;
use pagoda_cache::{Backing, BackingError, CacheConfig, CacheStats, PageCache};
use pagoda_wire::limits::{PAGE_BYTES_MAX, PAGE_BYTES_MIN, REGION_BYTES_MAX};
use pagoda_wire::message::{encode_read_pages, encode_write_pages};
use pagoda_wire::{RegionInfo, Response};

use crate::connection::Connection;
use crate::error::ClientError;

/// How a region is opened.
#[derive(Clone, Debug)]
pub struct RegionOptions {
    /// RAM for the local page cache, in bytes (at least one page is used).
    pub cache_bytes: u64,
    /// The cache's eviction policy.
    pub policy: PolicyKind,
}

/// Default local cache size: 64 MiB.
pub const CACHE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions {
            cache_bytes: CACHE_BYTES_DEFAULT,
            policy: PolicyKind::default(),
        }
    }
}

impl RegionOptions {
    /// Defaults with a cache of `cache_bytes`.
    pub fn with_cache_bytes(cache_bytes: u64) -> RegionOptions {
        RegionOptions {
            cache_bytes,
            ..RegionOptions::default()
        }
    }
}

pub(crate) fn read_pages(
    connection: &Connection,
    region: u64,
    page_size: usize,
    pages: &[u64],
    out: &mut [u8],
) -> Result<(), ClientError> {
    if out.len() != pages.len() * page_size {
        return Err(ClientError::InvalidArgument(format!(
            "buffer of {} bytes for {} pages",
            out.len(),
            pages.len()
        )));
    }
    let batch = connection.batch_pages_max(page_size);
    for (pages, out) in pages.chunks(batch).zip(out.chunks_mut(batch * page_size)) {
        fetch(connection, region, pages, &mut [out])?;
    }
    Ok(())
}

/// Reads `pages` (at most one batch) into `buffers`, whose lengths add up to
/// the pages' bytes; the reply's data is copied straight into them.
fn fetch(
    connection: &Connection,
    region: u64,
    pages: &[u64],
    buffers: &mut [&mut [u8]],
) -> Result<(), ClientError> {
    let expected: usize = buffers.iter().map(|b| b.len()).sum();
    let reply = connection.call_into(
        |buffer, id| encode_read_pages(buffer, id, 0, region, pages),
        buffers,
    )?;
    if reply.delivered() {
        return Ok(());
    }
    // Not delivered: an error reply, or page data of the wrong size.
    let data = reply.pages_data()?;
    Err(ClientError::Protocol(format!(
        "asked for {expected} bytes of pages, got {}",
        data.len()
    )))
}

pub(crate) fn write_pages(
    connection: &Connection,
    region: u64,
    page_size: usize,
    pages: &[u64],
    buffers: &[&[u8]],
) -> Result<(), ClientError> {
    if buffers.len() != pages.len() || buffers.iter().any(|b| b.len() != page_size) {
        return Err(ClientError::InvalidArgument(
            "write needs one whole page of data per page".into(),
        ));
    }
    let batch = connection.batch_pages_max(page_size);
    for (pages, buffers) in pages.chunks(batch).zip(buffers.chunks(batch)) {
        let reply = connection.call(|buffer, id| {
            encode_write_pages(buffer, id, 0, region, pages, page_size, |index, out| {
                out.extend_from_slice(buffers[index])
            })
        })?;
        match reply.decode()? {
            Response::Done => {}
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected Done, got {:?}",
                    other.opcode()
                )));
            }
        }
    }
    Ok(())
}

/// The cache's backing store: the region's pages on the node.
struct RemotePages {
    connection: Arc<Connection>,
    region: u64,
    page_size: usize,
}

impl Backing for RemotePages {
    fn read_pages(&self, pages: &[u64], buffers: &mut [&mut [u8]]) -> Result<(), BackingError> {
        let batch = self.connection.batch_pages_max(self.page_size);
        for (pages, buffers) in pages.chunks(batch).zip(buffers.chunks_mut(batch)) {
            fetch(&self.connection, self.region, pages, buffers)?;
        }
        Ok(())
    }

    fn write_pages(&self, pages: &[u64], buffers: &[&[u8]]) -> Result<(), BackingError> {
        write_pages(
            &self.connection,
            self.region,
            self.page_size,
            pages,
            buffers,
        )?;
        Ok(())
    }
}

/// A region opened through a local cache. `Send + Sync`: share it between
/// threads with an `Arc`.
///
/// Writes land in the local cache and reach the node when their pages are
/// evicted or when [`Region::flush`] is called; dropping a region flushes it
/// on a best-effort basis (errors are logged), so call `flush` to know.
/// One client at a time should write a region: caches of different clients
/// are not kept coherent.
pub struct Region {
    info: RegionInfo,
    cache: PageCache<RemotePages>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region").field("info", &self.info).finish()
    }
}

impl Region {
    pub(crate) fn new(
        connection: Arc<Connection>,
        info: RegionInfo,
        options: RegionOptions,
    ) -> Result<Region, ClientError> {
        // The node is a peer: check the shape it reports against the same
        // limits it enforces, before sizing the cache and page table by it.
        let page_size = info.page_size as usize;
        let shape_valid = info.page_size.is_power_of_two()
            && (PAGE_BYTES_MIN..=PAGE_BYTES_MAX).contains(&info.page_size)
            && info.size > 0
            && info.size <= REGION_BYTES_MAX
            && info.size.is_multiple_of(page_size as u64);
        if !shape_valid {
            return Err(ClientError::Protocol(format!(
                "the node described region {:?} with an invalid shape ({} bytes in pages of {})",
                info.name, info.size, info.page_size
            )));
        }
        let config = CacheConfig {
            capacity_bytes: options.cache_bytes,
            page_size,
            region_bytes: info.size,
            policy: options.policy,
            batch_pages_max: connection.batch_pages_max(page_size),
        };
        let backing = RemotePages {
            connection,
            region: info.id,
            page_size,
        };
        Ok(Region {
            cache: PageCache::new(config, backing),
            info,
        })
    }

    /// The region's description.
    pub fn info(&self) -> &RegionInfo {
        &self.info
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.info.size
    }

    /// Whether the region is empty (never: regions have at least one page).
    pub fn is_empty(&self) -> bool {
        self.info.size == 0
    }

    /// Page size in bytes.
    pub fn page_size(&self) -> usize {
        self.info.page_size as usize
    }

    /// Reads `buf.len()` bytes at `offset`; any range within the region.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        Ok(self.cache.read_at(offset, buf)?)
    }

    /// Writes `buf` at `offset`; any range within the region.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), ClientError> {
        Ok(self.cache.write_at(offset, buf)?)
    }

    /// Returns once every page written before the call is on the node.
    pub fn flush(&self) -> Result<(), ClientError> {
        Ok(self.cache.flush()?)
    }

    /// The local cache's counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The local cache's eviction policy.
    pub fn policy_name(&self) -> &'static str {
        self.cache.policy_name()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Err(error) = self.cache.flush() {
            tracing::warn!(region = %self.info.name, %error, "flush on drop failed; unflushed writes are lost");
        }
    }
}
