//! Versioned pages and a model of what was written to them: the tests that
//! kill, stop or cut off nodes under a write load check every page a node
//! holds against what was sent and acknowledged.
#![allow(dead_code)] // not every test binary checks a model

use pagoda::Client;

pub const PAGE: usize = 4096;

/// The contents of `page` at `version`: the page number, the version, then
/// bytes derived from both. Version 0 is the unwritten page: zeros.
pub fn page_bytes(page: u64, version: u64) -> Vec<u8> {
    if version == 0 {
        return vec![0; PAGE];
    }
    let mut bytes = Vec::with_capacity(PAGE);
    bytes.extend_from_slice(&page.to_le_bytes());
    bytes.extend_from_slice(&version.to_le_bytes());
    let seed =
        page.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    bytes.extend((16..PAGE as u64).map(|i| (seed.rotate_left((i % 64) as u32) ^ i) as u8));
    bytes
}

/// What was written, per page: the newest version acknowledged (its write
/// returned Ok) and the newest version sent at all.
#[derive(Clone)]
pub struct Model {
    pub acknowledged: Vec<u64>,
    pub sent: Vec<u64>,
}

impl Model {
    /// Nothing written to a region of `pages` pages.
    pub fn new(pages: u64) -> Model {
        Model {
            acknowledged: vec![0; pages as usize],
            sent: vec![0; pages as usize],
        }
    }
}

/// Reads every page of the region `name` (`sent.len()` pages, a multiple
/// of 256) through `reader`, connected to `addr`, and asserts that each
/// holds an intact version its writer sent, no newer than `sent`; returns
/// the version each page holds.
pub fn stored_versions(
    reader: &Client,
    addr: &str,
    name: &str,
    sent: &[u64],
    what: &str,
) -> Vec<u64> {
    let info = reader.stat_region(name).unwrap().info;
    let mut versions = Vec::with_capacity(sent.len());
    let mut data = vec![0u8; 256 * PAGE];
    for first in (0..sent.len() as u64).step_by(256) {
        let pages: Vec<u64> = (first..first + 256).collect();
        reader.raw().read_pages(&info, &pages, &mut data).unwrap();
        for (index, &page) in pages.iter().enumerate() {
            let bytes = &data[index * PAGE..(index + 1) * PAGE];
            let version = if bytes.iter().all(|&b| b == 0) {
                0
            } else {
                u64::from_le_bytes(bytes[8..16].try_into().unwrap())
            };
            assert!(
                version <= sent[page as usize] && bytes == page_bytes(page, version),
                "{what}: page {page} on {addr} holds bytes no writer sent (version field \
                 {version}, newest sent {})",
                sent[page as usize]
            );
            versions.push(version);
        }
    }
    versions
}
