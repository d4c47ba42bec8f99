//! Pagoda's local tier: the page cache inside the application.
//!
//! This crate knows nothing of sockets, nodes or storage. A [`PageCache`] caches
//! the pages of one region over a [`Backing`] (the client implements it with the
//! wire protocol; tests implement it with [`memory::MemoryBacking`]), and an
//! [`policy::EvictionPolicy`] chooses which pages leave.

#![warn(missing_docs)]

mod cache;
mod frame;
mod huge;
pub mod memory;
pub mod policy;
mod prefetch;
mod stats;
mod table;

pub use cache::{Backing, BackingError, CacheConfig, CacheError, Extractor, PageCache, ReadAhead};
pub use prefetch::{PREFETCH_DEADLINE_DEFAULT, PREFETCH_DEPTH_DEFAULT, PrefetchConfig};
pub use stats::CacheStats;
