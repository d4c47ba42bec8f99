//! Pagoda's memory node.
//!
//! A node holds the pages of regions in RAM. Its capacity is counted by the
//! [`arena::Arena`] in fixed-size segments (2 MiB); each region keeps its
//! pages in a memory file of its own ([`region_memory::RegionMemory`], which
//! co-located clients may map read-only), and a segment is counted and backed
//! with memory on the region's first write to it (thin provisioning); pages
//! never written read as zeros. With a [`bulk`] tier, cold segments are
//! paged out to a file on SSD when RAM runs short ([`tiering`] picks them)
//! and come back on access. Region metadata lives in the
//! [`catalog::Catalog`], persisted in the data dir. A [`node::Node`] accepts
//! connections, one thread each, and [`server`] serves their requests.
//!
//! With a [`storage`] backend configured, the node takes [`checkpoint`]s of
//! its regions (incremental, copy-on-write), reloads them after a restart,
//! and can rebuild a region from its baseline plus the pages dirty on another
//! node ([`recovery`]). The node knows nothing of the command line or of
//! clients' caches.

pub mod access;
pub mod arena;
pub mod bulk;
mod bulk_reads;
pub mod catalog;
pub mod checkpoint;
mod checkpointing;
pub mod checksum;
pub(crate) mod cluster;
pub mod config;
mod connection;
pub mod error;
pub mod lazy_load;
mod metrics;
pub mod node;
mod node_journal;
pub mod preflight;
pub mod recovery;
pub mod region;
pub mod region_memory;
pub mod replication;
pub mod server;
pub mod storage;
pub mod tiering;
mod tls;
pub mod write_log;

pub use config::NodeConfig;
pub use error::{NodeError, StorageCause};
pub use lazy_load::Reload;
pub use node::{Node, Unsaved, UnsavedRegion};
pub use storage::{S3Settings, StorageConfig};
pub use tls::TlsConfig;
