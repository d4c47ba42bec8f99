//! Replicated regions, as a client sees them: creating one on a primary
//! with replicas, describing its replication, promoting a replica; and the
//! raw request path nodes use to talk to each other (`Client::request`,
//! `Client::send_request`).

use pagoda_wire::{ReplicaSet, ReplicationMode, Request, Response};

use crate::connection::{PendingCall, Reply};
use crate::{Client, ClientError, RegionInfo};

impl Client {
    /// Creates a region on the node this client is connected to, which
    /// becomes its primary, with a replica on each of `replicas`
    /// (`host:port` of other nodes; the primary connects to them with its
    /// cluster credential). `mode` says when a write is acknowledged: once
    /// every in-sync replica has it (`Sync`), or by the primary alone with a
    /// bounded lag (`Async`).
    pub fn create_replicated_region(
        &self,
        name: &str,
        size: u64,
        page_size: u32,
        replicas: &[&str],
        mode: ReplicationMode,
    ) -> Result<RegionInfo, ClientError> {
        let request = Request::CreateRegion {
            name,
            size,
            page_size,
            replicas: replicas.to_vec(),
            mode,
        };
        match self.request(&request)?.decode()? {
            Response::RegionInfo(info) => Ok(info),
            other => Err(crate::unexpected(&other)),
        }
    }

    /// A region's replication as this node sees it: its role, the epochs,
    /// and on a primary each replica's state and lag.
    pub fn replicas(&self, name: &str) -> Result<ReplicaSet, ClientError> {
        match self.request(&Request::ReplicaStatus { name })?.decode()? {
            Response::ReplicaSet(set) => Ok(set),
            other => Err(crate::unexpected(&other)),
        }
    }

    /// Makes this node's replica of a region its primary, at a new primary
    /// epoch. Refused for a replica not known to be in sync unless `force`
    /// (which may lose writes the old primary acknowledged).
    pub fn promote(&self, name: &str, force: bool) -> Result<ReplicaSet, ClientError> {
        match self.request(&Request::Promote { name, force })?.decode()? {
            Response::ReplicaSet(set) => Ok(set),
            other => Err(crate::unexpected(&other)),
        }
    }

    /// Sends any request and waits for its reply (for nodes talking to
    /// each other, and tools).
    pub fn request(&self, request: &Request<'_>) -> Result<Reply, ClientError> {
        self.connection.call(|out, id| request.encode(out, id, 0))
    }

    /// Sends a request without waiting; `waiter` is the thread woken when
    /// its reply arrives, collected with [`Client::wait_reply`]. Requests on
    /// one client are served in the order sent.
    pub fn send_request(
        &self,
        request: &Request<'_>,
        waiter: std::thread::Thread,
    ) -> Result<PendingCall, ClientError> {
        self.connection
            .send(|out, id| request.encode(out, id, 0), waiter)
    }

    /// Waits for the reply to a request sent with [`Client::send_request`].
    pub fn wait_reply(&self, call: &PendingCall) -> Result<Reply, ClientError> {
        self.connection.wait_for(call)
    }
}
