//! The protocol-level calls of a [`Client`]: pages read and written by
//! number straight on the node, the dirty-page lists and freezes that
//! recovery and moves are built on, and a bare round trip.
//!
//! These are for tools, tests and benchmarks that need the node's own view
//! of a region: a bulk loader, a checker comparing what the node holds with
//! a model, a latency probe, a node copying a region from another. They
//! bypass everything [`Region`](crate::Region) gives an application: there
//! is no local cache, no byte addressing (whole pages only, by number), no
//! transactions, no flush ordering, and regions are named by their
//! [`RegionInfo`] or numeric id rather than held open. Ordinary code should
//! open a `Region` and read and write bytes through it.
//!
//! They are reached through [`Client::raw`], which borrows the client:
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # let node = pagoda_node::Node::start(pagoda_node::NodeConfig::new(
//! #     "127.0.0.1:0".parse().unwrap(), 8 << 20, dir.path().into())).unwrap();
//! # let address = node.local_addr();
//! use pagoda::{Client, ClientOptions, Since};
//!
//! let client = Client::connect(address, ClientOptions::default())?;
//! let info = client.create_region("scratch", 1 << 20, 4096)?;
//! let raw = client.raw();
//! raw.ping(0)?;
//! // Pages 3 and 7, written and read back whole, bypassing any cache.
//! let data = [[3u8; 4096], [7u8; 4096]].concat();
//! raw.write_pages(&info, &[3, 7], &data)?;
//! let mut back = vec![0u8; 2 * 4096];
//! raw.read_pages(&info, &[3, 7], &mut back)?;
//! assert_eq!(back, data);
//! // The node lists them as written since the region was created.
//! let (dirty, _mark) = raw.dirty_pages(info.id, Since::Checkpoint(0))?;
//! assert_eq!(dirty.iter().map(|range| range.count).sum::<u32>(), 2);
//! # Ok::<(), pagoda::ClientError>(())
//! ```

use std::sync::Arc;

use pagoda_wire::{OpenMode, Request, Response};

use crate::{Client, ClientError, ErrorCode, PageRange, RegionInfo, Since, region, unexpected};

/// The protocol-level calls of a [`Client`] (see the module documentation):
/// made by [`Client::raw`], it borrows the client and is as cheap to make as
/// a reference.
#[derive(Clone, Copy, Debug)]
pub struct Raw<'client> {
    client: &'client Client,
}

impl Client {
    /// The client's protocol-level calls: pages by number straight on the
    /// node, dirty-page lists, freezes and pings, for tools, tests and
    /// benchmarks. Applications use [`Region`](crate::Region) instead (see
    /// [`raw`](crate::raw)).
    pub fn raw(&self) -> Raw<'_> {
        Raw { client: self }
    }
}

impl Raw<'_> {
    /// A round trip with a reply of `reply_bytes` bytes: checks that the
    /// node answers, or measures the network.
    pub fn ping(&self, reply_bytes: u32) -> Result<(), ClientError> {
        match self.client.call(&Request::Ping { reply_bytes })?.decode()? {
            Response::Pong { payload } if payload.len() == reply_bytes as usize => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads pages of a region straight from the node, bypassing any cache;
    /// `out` receives `pages.len()` pages.
    pub fn read_pages(
        &self,
        region: &RegionInfo,
        pages: &[u64],
        out: &mut [u8],
    ) -> Result<(), ClientError> {
        let connection = &self.client.connection;
        // A region this client holds open may have another id on the node
        // the client moved to since.
        let binding = connection.binding_of(region);
        let id = || binding.as_ref().map_or(region.id, |binding| binding.id());
        region::read_pages(connection, &id, region.page_size as usize, pages, out)
    }

    /// Writes pages of a region straight to the node, bypassing any cache.
    /// `data` holds `pages.len()` pages. The first write to a region takes
    /// its writer role for this client's connection (as
    /// [`Client::open_region`] does) and keeps it as long as the client
    /// lives, taking it again after each reconnect.
    pub fn write_pages(
        &self,
        region: &RegionInfo,
        pages: &[u64],
        data: &[u8],
    ) -> Result<(), ClientError> {
        let connection = &self.client.connection;
        let held = self.client.direct_writes.lock().get(&region.id).cloned();
        let binding = match held {
            Some(binding) => binding,
            None => {
                let (opened, binding) = connection.open(&region.name, OpenMode::Write)?;
                if opened.id != region.id {
                    connection.close(&binding, OpenMode::Write);
                    return Err(ClientError::Remote {
                        code: ErrorCode::RegionNotFound,
                        message: format!(
                            "region {:?} with id {} is gone (the name now has id {})",
                            region.name, region.id, opened.id
                        ),
                    });
                }
                let mut direct_writes = self.client.direct_writes.lock();
                match direct_writes.get(&region.id) {
                    // Another thread took the role first: give this open back.
                    Some(first) => {
                        let first = Arc::clone(first);
                        drop(direct_writes);
                        connection.close(&binding, OpenMode::Write);
                        first
                    }
                    None => {
                        direct_writes.insert(region.id, binding.clone());
                        binding
                    }
                }
            }
        };
        let log = binding.log().expect("a write open has a write log");
        let page_size = region.page_size as usize;
        let buffers: Vec<&[u8]> = data.chunks_exact(page_size).collect();
        region::write_pages(
            connection,
            log,
            &|| binding.id(),
            page_size,
            pages,
            &buffers,
        )
    }

    /// Lists pages of region `region` (its numeric id on this client's
    /// node) written since `since`, as ascending ranges. Long lists come in
    /// parts; returns every part and the first part's mark (pages written
    /// after it may be missing: ask again with `Since::Mark(mark)`).
    pub fn dirty_pages(
        &self,
        region: u64,
        since: Since,
    ) -> Result<(Vec<PageRange>, u64), ClientError> {
        let mut all = Vec::new();
        let mut first_mark = None;
        let mut start_page = 0;
        // Each part starts past the last (checked below), so this ends
        // after at most one part per page of the region.
        loop {
            let request = Request::DirtyPages {
                region,
                since,
                start_page,
            };
            match self.client.call(&request)?.decode()? {
                Response::DirtyPageList {
                    mark,
                    next_page,
                    ranges,
                } => {
                    first_mark.get_or_insert(mark);
                    all.extend(ranges);
                    if next_page == u64::MAX {
                        return Ok((all, first_mark.expect("set above")));
                    }
                    if next_page <= start_page {
                        return Err(ClientError::Protocol(format!(
                            "dirty page list does not advance (next page {next_page})"
                        )));
                    }
                    start_page = next_page;
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Makes region `region` (its numeric id on this client's node)
    /// read-only, because it moved to another node, and returns the mark
    /// after its last write. Not sent again after a reconnect: a failed
    /// connection gives [`ClientError::OutcomeUnknown`].
    pub fn freeze_region(&self, region: u64) -> Result<u64, ClientError> {
        match self
            .client
            .call(&Request::FreezeRegion { region })?
            .decode()?
        {
            Response::Mark { mark } => Ok(mark),
            other => Err(unexpected(&other)),
        }
    }

    /// The largest batch of pages of `page_size` bytes one
    /// [`Raw::read_pages`] or [`Raw::write_pages`] request may carry (longer
    /// lists are split into batches of this size).
    pub fn batch_pages_max(&self, page_size: usize) -> usize {
        self.client.connection.batch_pages_max(page_size)
    }
}
