//! The `catalog` target: `Catalog::open` on a data dir whose `regions.meta`
//! holds the input.
//!
//! An input that starts with the catalog's magic is the whole file, as it
//! is; any other input is a JSON body the harness frames with the magic, its
//! length and its crc32c, so that mutations reach the parser and the checks
//! behind the checksum. Oracles: nothing panics; a catalog that opens lists
//! regions with distinct names and ids; a region created in it gets an id
//! above every listed one and survives a reopen, with every other region
//! unchanged.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use pagoda_node::NodeError;
use pagoda_node::arena::Arena;
use pagoda_node::catalog::Catalog;
use pagoda_wire::RegionInfo;

const MAGIC: &[u8; 8] = b"PGDACAT1";
const FILE_NAME: &str = "regions.meta";
/// The name of the region the harness creates; listed regions may take it.
const NEW_REGION: &str = "fuzz-created";

/// Frames a JSON body as a catalog file (for seeding, and for inputs that
/// are bodies).
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16 + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

fn arena() -> Arc<Arena> {
    static ARENA: OnceLock<Arc<Arena>> = OnceLock::new();
    ARENA
        .get_or_init(|| Arc::new(Arena::new(4 << 20, 2 << 20).expect("a 4 MiB arena")))
        .clone()
}

/// Runs one input through the target.
pub fn run(data: &[u8]) {
    let file = if data.starts_with(MAGIC) {
        data.to_vec()
    } else {
        frame(data)
    };
    let dir = crate::scratch_dir("catalog");
    std::fs::write(dir.path().join(FILE_NAME), &file).expect("writing the catalog");
    check(dir.path());
}

fn check(dir: &Path) {
    let before = match Catalog::open(dir, arena()) {
        Ok(catalog) => catalog.list(),
        Err(NodeError::Corrupt { .. }) | Err(NodeError::InvalidArgument(_)) => return,
        Err(other) => panic!("a catalog file is refused with an unexpected error: {other}"),
    };
    check_list(&before);
    let catalog = Catalog::open(dir, arena()).expect("an open catalog reopens");
    assert_eq!(catalog.list(), before, "reopening changes the catalog");
    let created = match catalog.create(NEW_REGION, 4096, 4096) {
        Ok(info) => info,
        Err(NodeError::RegionExists(_))
        | Err(NodeError::TooManyRegions(_))
        | Err(NodeError::RegionIdsExhausted(_)) => return,
        Err(other) => panic!("creating a region fails: {other}"),
    };
    assert!(
        before.iter().all(|info| info.id < created.id),
        "created region {} reuses or undercuts a listed id",
        created.id
    );
    drop(catalog);
    let catalog = Catalog::open(dir, arena())
        .unwrap_or_else(|error| panic!("the catalog fails to reopen after a create: {error}"));
    let mut expected = before;
    expected.push(created);
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(catalog.list(), expected, "the catalog after a create");
}

fn check_list(list: &[RegionInfo]) {
    let mut ids: Vec<u64> = list.iter().map(|info| info.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), list.len(), "duplicate region ids");
    for pair in list.windows(2) {
        assert!(pair[0].name < pair[1].name, "names unsorted or duplicated");
    }
}
