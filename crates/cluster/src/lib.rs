//! Pagoda's cluster coordinator: who is alive, where each region lives, and
//! who leads it.
//!
//! Cluster state lives in a proven store, never in a protocol of Pagoda's
//! own. [`Coordinator`] is what the node, the client and the CLI need of
//! that store; two implementations stand behind it:
//!
//! - [`etcd::EtcdCoordinator`]: an etcd cluster (`etcd://HOST:PORT[,…]`).
//!   Leases give node and writer liveness; every change of a region's
//!   leader or epoch is a transaction that compares the record's revision.
//! - [`embedded::EmbeddedCoordinator`]: a file in one node's data dir
//!   (`embedded:DIR`), the default on one machine. Processes on that machine
//!   share it under a file lock; it has no fault tolerance of its own.
//!
//! [`testing::Etcd`] runs a real etcd server for tests.
//!
//! Key layout (under a prefix, `pagoda` by default):
//!
//! | key                      | value           | lease           |
//! |--------------------------|-----------------|-----------------|
//! | `PREFIX/nodes/ADDR`      | [`NodeRecord`]  | the node's      |
//! | `PREFIX/regions/NAME`    | [`RegionRecord`]| none            |
//! | `PREFIX/writers/NAME`    | [`WriterRecord`]| the writer's    |

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod embedded;
pub mod etcd;
pub mod testing;

/// A lease's id, as the store gives it.
pub type LeaseId = i64;

/// A record's revision in the store (etcd's `mod_revision`): a change made
/// "if the revision is still R" fails once anyone else changed it.
pub type Revision = i64;

/// The shortest lease a coordinator grants.
pub const LEASE_MIN: Duration = Duration::from_secs(1);

/// What went wrong with the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The store could not be reached or answered with an error; the
    /// operation may or may not have taken effect only where the method
    /// says so.
    #[error("coordinator {endpoint}: {message}")]
    Unavailable {
        /// Which store.
        endpoint: String,
        /// What happened.
        message: String,
    },
    /// The lease is gone (expired or revoked): whatever it kept alive is
    /// gone with it.
    #[error("coordinator lease {0:x} has expired")]
    LeaseExpired(LeaseId),
    /// A record was not in the store.
    #[error("{0} is not in the coordinator")]
    NotFound(String),
    /// A record already exists.
    #[error("{0} already exists in the coordinator")]
    Exists(String),
    /// A conditional change found the record changed since it was read.
    #[error("{0} changed in the coordinator meanwhile")]
    Conflict(String),
    /// A record in the store did not parse.
    #[error("coordinator record {key}: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why it did not parse.
        message: String,
    },
    /// The endpoint or a setting is not valid.
    #[error("{0}")]
    Invalid(String),
}

/// A node, registered under its lease: present while the node is alive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The address clients and peers reach it at (`HOST:PORT`): its id.
    pub addr: String,
    /// Its capacity in bytes.
    pub capacity_bytes: u64,
    /// Bytes not yet allocated to regions, as of its last report.
    pub free_bytes: u64,
    /// The lease it keeps (milliseconds): it is declared failed when the
    /// lease lapses.
    pub lease_ms: u64,
    /// The Pagoda version it runs.
    #[serde(default)]
    pub version: String,
}

/// The replication mode of a region, as recorded.
pub const MODE_SYNC: &str = "sync";
/// See [`MODE_SYNC`].
pub const MODE_ASYNC: &str = "async";

/// A region's placement and leadership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRecord {
    /// The region's name: its id.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// "sync" or "async" (replicated), or "solo".
    pub mode: String,
    /// The node that leads it.
    pub primary: String,
    /// Its other copies.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// The replicas that hold every write the primary has acknowledged:
    /// only these may be promoted. A primary removes a replica here before
    /// it acknowledges a write that replica lacks.
    #[serde(default)]
    pub in_sync: Vec<String>,
    /// The primary epoch: raised by every change of leader.
    pub primary_epoch: u64,
}

/// The application host that may write a region, registered under its
/// lease: another host may take the region once the lease lapses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterRecord {
    /// Who (host name and process id, or what the application chose).
    pub holder: String,
    /// The lease it keeps (milliseconds).
    pub lease_ms: u64,
}

/// A record with the revision it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The record.
    pub value: T,
    /// The revision of its last change.
    pub revision: Revision,
}

/// What the node, the client and the CLI need of a cluster store.
///
/// Every method is blocking and bounded: it returns within the
/// coordinator's request timeout (a few seconds) with
/// [`ClusterError::Unavailable`] when the store does not answer.
pub trait Coordinator: Send + Sync + fmt::Debug {
    /// The store, for messages (`etcd://127.0.0.1:2379`, `embedded:DIR`).
    fn endpoint(&self) -> String;

    /// Grants a lease that lapses `ttl` after its last renewal (rounded up
    /// to the store's granularity: whole seconds for etcd).
    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, ClusterError>;
    /// Renews a lease once; returns the time it has left.
    /// [`ClusterError::LeaseExpired`] once it is gone.
    fn keep_alive(&self, lease: LeaseId) -> Result<Duration, ClusterError>;
    /// Ends a lease now, deleting the keys it kept.
    fn revoke_lease(&self, lease: LeaseId) -> Result<(), ClusterError>;

    /// Registers (or updates) a node under its lease.
    fn put_node(&self, record: &NodeRecord, lease: LeaseId) -> Result<(), ClusterError>;
    /// The live nodes, by address.
    fn nodes(&self) -> Result<Vec<NodeRecord>, ClusterError>;

    /// Records a new region; [`ClusterError::Exists`] if the name is taken.
    fn create_region(&self, record: &RegionRecord) -> Result<Revision, ClusterError>;
    /// A region's record.
    fn region(&self, name: &str) -> Result<Option<Versioned<RegionRecord>>, ClusterError>;
    /// Every region's record, by name.
    fn regions(&self) -> Result<Vec<Versioned<RegionRecord>>, ClusterError>;
    /// Replaces a region's record if it is still at `expected`;
    /// [`ClusterError::Conflict`] otherwise (and `NotFound` if it is gone).
    fn update_region(
        &self,
        record: &RegionRecord,
        expected: Revision,
    ) -> Result<Revision, ClusterError>;
    /// Deletes a region's record (and its writer key). Deleting a record that
    /// is not there is not an error.
    fn delete_region(&self, name: &str) -> Result<(), ClusterError>;

    /// Claims the right to write a region for `record.holder`, under
    /// `lease`. Returns `Ok(None)` when claimed (or already held under this
    /// lease), `Ok(Some(holder))` when another lease holds it.
    fn claim_writer(
        &self,
        region: &str,
        record: &WriterRecord,
        lease: LeaseId,
    ) -> Result<Option<WriterRecord>, ClusterError>;
    /// Gives up the right to write a region if `lease` holds it.
    fn release_writer(&self, region: &str, lease: LeaseId) -> Result<(), ClusterError>;
    /// Who holds the right to write a region.
    fn writer(&self, region: &str) -> Result<Option<WriterRecord>, ClusterError>;
}

/// Connects to the coordinator an endpoint names:
///
/// - `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`
/// - `embedded:DIR` (a directory on this machine; created if missing)
pub fn connect(endpoint: &str) -> Result<Arc<dyn Coordinator>, ClusterError> {
    if let Some(rest) = endpoint.strip_prefix("etcd://") {
        Ok(Arc::new(etcd::EtcdCoordinator::connect(rest)?))
    } else if let Some(dir) = endpoint.strip_prefix("embedded:") {
        if dir.is_empty() {
            return Err(ClusterError::Invalid(
                "coordinator embedded: needs a directory (embedded:DIR)".into(),
            ));
        }
        Ok(Arc::new(embedded::EmbeddedCoordinator::open(
            std::path::Path::new(dir),
        )?))
    } else {
        Err(ClusterError::Invalid(format!(
            "coordinator {endpoint:?}: expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX] or \
             embedded:DIR"
        )))
    }
}

/// The live node with the most free bytes among those not excluded, then by
/// address: how regions are placed.
pub fn place(nodes: &[NodeRecord], count: usize, exclude: &[String]) -> Vec<NodeRecord> {
    let mut candidates: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|node| !exclude.contains(&node.addr))
        .collect();
    candidates.sort_by(|a, b| {
        b.free_bytes
            .cmp(&a.free_bytes)
            .then_with(|| a.addr.cmp(&b.addr))
    });
    candidates.into_iter().take(count).cloned().collect()
}
