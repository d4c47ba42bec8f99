//! An async API for tokio applications (feature `tokio`, on by default).
//!
//! [`AsyncClient`] and [`AsyncRegion`] wrap the blocking [`Client`] and
//! [`Region`]. No call blocks a runtime's worker thread: a read whose pages
//! are all resident in the local cache is served in place (a memory copy,
//! no lock waited for, no system call); everything else (misses, writes,
//! flushes, region management) runs on tokio's blocking pool
//! (`spawn_blocking`), as `tokio::fs` does with files. Reads and writes take
//! and return owned buffers, since a borrowed one cannot cross to the pool.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # let node = pagoda_node::Node::start(pagoda_node::NodeConfig::new(
//! #     "127.0.0.1:0".parse().unwrap(), 8 << 20, dir.path().into())).unwrap();
//! # let address = node.local_addr().to_string();
//! # let runtime = tokio::runtime::Runtime::new().unwrap();
//! # runtime.block_on(async {
//! use pagoda::asynchronous::AsyncClient;
//! use pagoda::{ClientOptions, RegionOptions};
//!
//! let client = AsyncClient::connect(address, ClientOptions::default()).await?;
//! client.create_region("events", 1 << 20, 4096).await?;
//! let region = client.open_region("events", RegionOptions::default()).await?;
//! region.write_at(4096, b"hello".to_vec()).await?;
//! let back = region.read_at(4096, 5).await?; // resident: served in place
//! assert_eq!(back, b"hello");
//! region.write_value(0, 7u32).await?;
//! assert_eq!(region.read_value::<u32>(0).await?, 7);
//! region.flush().await?;
//! # Ok::<(), pagoda::ClientError>(())
//! # }).unwrap();
//! ```

use std::sync::Arc;

use bytemuck::Pod;
use pagoda_wire::RegionInfo;

use crate::{Client, ClientError, ClientOptions, Region, RegionOptions};

/// Runs a blocking call on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(ClientError::Disconnected(format!(
            "the runtime shut down during the call: {error}"
        ))),
    }
}

/// A [`Client`] for async code; cheap to clone (clones share the
/// connection, as the blocking client's do).
#[derive(Clone)]
pub struct AsyncClient {
    client: Client,
}

impl AsyncClient {
    /// Connects to a node, as [`Client::connect`] does.
    pub async fn connect(
        addr: impl Into<String>,
        options: ClientOptions,
    ) -> Result<AsyncClient, ClientError> {
        let addr = addr.into();
        let client = blocking(move || Client::connect(addr.as_str(), options)).await?;
        Ok(AsyncClient { client })
    }

    /// Connects to a cluster through its coordinator, as
    /// [`Client::connect_cluster`] does.
    pub async fn connect_cluster(
        endpoint: impl Into<String>,
        options: ClientOptions,
    ) -> Result<AsyncClient, ClientError> {
        let endpoint = endpoint.into();
        let client = blocking(move || Client::connect_cluster(&endpoint, options)).await?;
        Ok(AsyncClient { client })
    }

    /// Wraps a blocking client.
    pub fn from_blocking(client: Client) -> AsyncClient {
        AsyncClient { client }
    }

    /// The blocking client underneath (for calls this API does not wrap;
    /// call them off the runtime's threads).
    pub fn blocking(&self) -> &Client {
        &self.client
    }

    /// [`Client::create_region`].
    pub async fn create_region(
        &self,
        name: impl Into<String>,
        size: u64,
        page_size: u32,
    ) -> Result<RegionInfo, ClientError> {
        let (client, name) = (self.client.clone(), name.into());
        blocking(move || client.create_region(&name, size, page_size)).await
    }

    /// [`Client::delete_region`].
    pub async fn delete_region(&self, name: impl Into<String>) -> Result<(), ClientError> {
        let (client, name) = (self.client.clone(), name.into());
        blocking(move || client.delete_region(&name)).await
    }

    /// [`Client::list_regions`].
    pub async fn list_regions(&self) -> Result<Vec<RegionInfo>, ClientError> {
        let client = self.client.clone();
        blocking(move || client.list_regions()).await
    }

    /// [`Client::open_region`].
    pub async fn open_region(
        &self,
        name: impl Into<String>,
        options: RegionOptions,
    ) -> Result<AsyncRegion, ClientError> {
        let (client, name) = (self.client.clone(), name.into());
        let region = blocking(move || client.open_region(&name, options)).await?;
        Ok(AsyncRegion::from_blocking(region))
    }

    /// [`Client::open_region_read_only`].
    pub async fn open_region_read_only(
        &self,
        name: impl Into<String>,
        options: RegionOptions,
    ) -> Result<AsyncRegion, ClientError> {
        let (client, name) = (self.client.clone(), name.into());
        let region = blocking(move || client.open_region_read_only(&name, options)).await?;
        Ok(AsyncRegion::from_blocking(region))
    }

    /// [`Client::open_or_create_region`].
    pub async fn open_or_create_region(
        &self,
        name: impl Into<String>,
        size: u64,
        page_size: u32,
        options: RegionOptions,
    ) -> Result<AsyncRegion, ClientError> {
        let (client, name) = (self.client.clone(), name.into());
        let region =
            blocking(move || client.open_or_create_region(&name, size, page_size, options)).await?;
        Ok(AsyncRegion::from_blocking(region))
    }
}

/// A [`Region`] for async code; cheap to clone (clones share the handle and
/// its cache). The handle is flushed and closed when the last clone goes,
/// on whichever thread drops it: drop it off the runtime's threads, or call
/// [`AsyncRegion::flush`] first so that the drop has nothing to send.
#[derive(Clone)]
pub struct AsyncRegion {
    region: Arc<Region>,
}

impl AsyncRegion {
    /// Wraps a blocking region handle.
    pub fn from_blocking(region: Region) -> AsyncRegion {
        AsyncRegion {
            region: Arc::new(region),
        }
    }

    /// The blocking handle underneath.
    pub fn blocking(&self) -> &Arc<Region> {
        &self.region
    }

    /// Reads `len` bytes at `offset`: in place if every page is resident,
    /// else on the blocking pool.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, ClientError> {
        self.read_into(offset, vec![0; len]).await
    }

    /// Reads `buf.len()` bytes at `offset` into `buf` and gives it back.
    pub async fn read_into(&self, offset: u64, mut buf: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        if self.region.cache().try_read_resident(offset, &mut buf)? {
            return Ok(buf);
        }
        let region = self.region.clone();
        blocking(move || region.read_at(offset, &mut buf).map(|()| buf)).await
    }

    /// Writes `data` at `offset` (on the blocking pool: a write may evict
    /// and write back).
    pub async fn write_at(&self, offset: u64, data: Vec<u8>) -> Result<(), ClientError> {
        let region = self.region.clone();
        blocking(move || region.write_at(offset, &data)).await
    }

    /// Reads a plain-old-data value at `offset` (see [`Region::read_value`]).
    pub async fn read_value<T: Pod + Send>(&self, offset: u64) -> Result<T, ClientError> {
        let bytes = self.read_at(offset, std::mem::size_of::<T>()).await?;
        Ok(bytemuck::pod_read_unaligned(&bytes))
    }

    /// Writes a plain-old-data value at `offset` (see [`Region::write_value`]).
    pub async fn write_value<T: Pod + Send>(
        &self,
        offset: u64,
        value: T,
    ) -> Result<(), ClientError> {
        self.write_at(offset, bytemuck::bytes_of(&value).to_vec())
            .await
    }

    /// [`Region::flush`].
    pub async fn flush(&self) -> Result<(), ClientError> {
        let region = self.region.clone();
        blocking(move || region.flush()).await
    }

    /// [`Region::transaction`], on the blocking pool.
    pub async fn transaction<T: Send + 'static>(
        &self,
        body: impl FnMut(&mut crate::Transaction<'_>) -> Result<T, ClientError> + Send + 'static,
    ) -> Result<T, ClientError> {
        let region = self.region.clone();
        blocking(move || region.transaction(body)).await
    }

    /// The region's size in bytes.
    pub fn len(&self) -> u64 {
        self.region.len()
    }

    /// Whether the region is empty (never: regions have at least one page).
    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// The local cache's counters.
    pub fn cache_stats(&self) -> crate::CacheStats {
        self.region.cache_stats()
    }
}
