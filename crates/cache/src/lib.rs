//! Pagoda's local tier: the page cache inside the application.
//!
//! This crate knows nothing of sockets, nodes or storage. A [`PageCache`] caches
//! the pages of one region over a [`Backing`] (the client implements it with the
//! wire protocol; tests implement it with a `Vec<u8>`), and an
//! [`policy::EvictionPolicy`] chooses which pages leave.

pub mod policy;
