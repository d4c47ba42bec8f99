//! End-to-end basics against a real node on loopback.

mod common;

use pagoda::{ErrorCode, RegionOptions};

// Guards the whole path: create, write through the cache, flush, read back
// through a second client with a cold cache.
#[test]
fn write_flush_and_read_back_from_a_second_client() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let first = common::client(&node);
    first.create_region("r", 16 << 20, 4096).unwrap();
    let region = first
        .open_region("r", RegionOptions::with_cache_bytes(64 * 1024))
        .unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    region.write_at(12_345, &data).unwrap();
    region.flush().unwrap();
    let second = common::client(&node);
    let reader = second
        .open_region_read_only("r", RegionOptions::with_cache_bytes(8 * 1024))
        .unwrap();
    let mut back = vec![0u8; data.len()];
    reader.read_at(12_345, &mut back).unwrap();
    assert_eq!(back, data);
    let mut zeros = vec![1u8; 4096];
    reader.read_at(8 << 20, &mut zeros).unwrap();
    assert!(
        zeros.iter().all(|&b| b == 0),
        "unwritten pages read as zeros"
    );
    let stat = second.stat_region("r").unwrap();
    assert_eq!(stat.segments_allocated, 1);
    assert_eq!(
        second
            .open_region("missing", RegionOptions::default())
            .unwrap_err()
            .code(),
        Some(ErrorCode::RegionNotFound)
    );
}

// Guards the direct-to-buffer read path: page data lands in the caller's
// buffer, and an error reply to such a read comes back as the node's error,
// leaving the buffer untouched.
#[test]
fn raw_page_reads_deliver_data_or_the_nodes_error() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    let info = client.create_region("raw", 1 << 20, 4096).unwrap();
    let data: Vec<u8> = (0..2 * 4096).map(|i| (i % 199) as u8).collect();
    client.raw().write_pages(&info, &[3, 7], &data).unwrap();
    let mut out = vec![0u8; 2 * 4096];
    client.raw().read_pages(&info, &[3, 7], &mut out).unwrap();
    assert_eq!(out, data);
    let mut untouched = vec![0xeeu8; 4096];
    let error = client
        .raw()
        .read_pages(&info, &[256], &mut untouched)
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::OutOfRange), "{error}");
    assert!(untouched.iter().all(|&b| b == 0xee));
    // The connection is still good.
    client
        .raw()
        .read_pages(&info, &[7], &mut out[..4096])
        .unwrap();
    assert_eq!(out[..4096], data[4096..]);
}

// Guards the client's own limits: a token longer than the protocol allows is
// refused with a clear error before anything is sent.
#[test]
fn overlong_token_is_refused_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 8 << 20, None);
    let options = pagoda::ClientOptions::with_token(vec![b'x'; 70_000]);
    let error = pagoda::Client::connect(node.local_addr(), options).unwrap_err();
    assert!(
        matches!(error, pagoda::ClientError::InvalidArgument(_)),
        "{error}"
    );
}
