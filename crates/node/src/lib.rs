//! Pagoda's memory node.
//!
//! A node holds the pages of regions in RAM. RAM is reserved up front as one
//! [`arena::Arena`] of fixed-size segments (2 MiB); a region's segment is
//! taken from the arena on the region's first write to it (thin provisioning),
//! and pages never written read as zeros. Region metadata lives in the
//! [`catalog::Catalog`], persisted in the data dir. The [`server`] accepts
//! connections and serves the wire protocol, one thread per connection.
//!
//! With a [`storage`] backend configured, the node takes [`checkpoint`]s of
//! its regions (incremental, copy-on-write), reloads them after a restart,
//! and can rebuild a region from its baseline plus the pages dirty on another
//! node ([`recovery`]). The node knows nothing of the command line or of
//! clients' caches.

pub mod access;
pub mod arena;
pub mod catalog;
pub mod checkpoint;
mod checkpointing;
pub mod checksum;
mod connection;
pub mod error;
mod node_journal;
pub mod recovery;
pub mod region;
pub mod replication;
pub mod server;
pub mod storage;
mod tls;
pub mod write_log;

pub use error::{NodeError, StorageCause};
pub use server::{Node, NodeConfig, Unsaved, UnsavedRegion};
pub use storage::StorageConfig;
pub use tls::TlsConfig;
