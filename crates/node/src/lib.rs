//! Pagoda's memory node.
//!
//! A node holds the pages of regions in RAM. RAM is reserved up front as one
//! [`arena::Arena`] of fixed-size segments (2 MiB); a region's segment is
//! taken from the arena on the region's first write to it (thin provisioning),
//! and pages never written read as zeros. Region metadata lives in the
//! [`catalog::Catalog`], persisted in the data dir. The [`server`] accepts
//! connections and serves the wire protocol, one thread per connection.
//!
//! The node knows nothing of the command line, of clients' caches or of
//! storage backends.

pub mod arena;
pub mod catalog;
pub mod error;
pub mod region;
pub mod server;

pub use error::NodeError;
pub use server::{Node, NodeConfig};
