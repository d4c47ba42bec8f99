//! Mapped regions: loads and stores through a userfaultfd mapping.

mod common;

use pagoda::{MapOptions, RegionOptions};

#[test]
fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    client.create_region("m", 4 << 20, 4096).unwrap();
    let region = client.open_region("m", RegionOptions::default()).unwrap();
    let mut mapping = region.map(MapOptions::with_local_bytes(16 * 4096)).unwrap();
    let slice = mapping.as_mut_slice();
    assert_eq!(slice[0], 0);
    for page in 0..1024usize {
        slice[page * 4096 + 7] = (page % 251) as u8;
    }
    for page in 0..1024usize {
        assert_eq!(slice[page * 4096 + 7], (page % 251) as u8, "page {page}");
    }
    let stats = mapping.stats();
    eprintln!("{stats:?}");
    mapping.flush().unwrap();
    drop(mapping);
    let reader = client
        .open_region_read_only("m", RegionOptions::default())
        .unwrap();
    let mut byte = [0u8; 1];
    reader.read_at(1000 * 4096 + 7, &mut byte).unwrap();
    assert_eq!(byte[0], (1000 % 251) as u8);
}
