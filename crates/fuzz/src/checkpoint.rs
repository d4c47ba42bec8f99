//! The `checkpoint` target: manifests and data objects as a node reads them.
//!
//! Byte 0, bit 0 picks the mode.
//!
//! *Manifest* (bit 0 clear): the rest goes to `Manifest::decode`, as it is if
//! it starts with the manifest magic, else as a JSON body the harness frames
//! with magic, length and crc32c. Oracle: a manifest that decodes encodes
//! back to one that decodes to the same value.
//!
//! *Data object* (bit 0 set): the rest is a data object of a 64-page region
//! of 4 KiB pages. The harness writes a valid manifest naming it, with
//! `pages` taken from the object's own count field (at most 64) and live runs
//! from its index entries (consecutive pages at consecutive indexes, inside
//! the region), into a `StorageConfig::Dir` store, and calls
//! `checkpoint::load_baseline` into a fresh region. Flags help mutations get
//! deep: bit 1 pads or cuts the object to the size the manifest expects, bit 2
//! fixes the page checksums in the index, bit 3 the index checksum, bit 4 the
//! header checksum, and bit 5 shifts the first run by one page (a manifest
//! that disagrees with the index). Oracles: nothing panics; the load fails
//! only with `CorruptObject`; after a successful load every live page holds
//! the object's bytes for it and every other page reads as zeros.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use pagoda_node::NodeError;
use pagoda_node::StorageConfig;
use pagoda_node::arena::Arena;
use pagoda_node::checkpoint::{self, Manifest};
use pagoda_node::region::Region;
use pagoda_node::storage::Storage;
use pagoda_wire::{Opcode, RegionInfo, Request};

const MANIFEST_MAGIC: &[u8; 8] = b"PGDAMAN1";
const OBJECT_HEADER_BYTES: usize = 48;
const INDEX_ENTRY_BYTES: usize = 16;
/// The region the data objects belong to.
pub const PAGE_BYTES: usize = 4096;
/// Pages in that region.
pub const REGION_PAGES: u64 = 64;
/// The region's uid, in every manifest and (for seeds) object.
pub const UID: u64 = 0x5eed_f0f0_1234_5679;
/// The number of the checkpoint the manifest and the object belong to.
pub const CHECKPOINT: u64 = 3;
const NAME: &str = "fuzz";
const KEY: &str = "regions/fuzz/data/00000000000000000003-00000000000000aa-000000.obj";

/// Mode bit: a data object rather than a manifest.
pub const MODE_OBJECT: u8 = 1;
/// Pad or cut the object to the expected size.
pub const FLAG_FIT: u8 = 1 << 1;
/// Fix the per-page checksums in the index.
pub const FLAG_FIX_PAGES: u8 = 1 << 2;
/// Fix the index checksum.
pub const FLAG_FIX_INDEX: u8 = 1 << 3;
/// Fix the header checksum.
pub const FLAG_FIX_HEADER: u8 = 1 << 4;
/// Shift the first run.
pub const FLAG_SHIFT: u8 = 1 << 5;

/// Frames a JSON body as a manifest (for seeding, and for inputs that are
/// bodies).
pub fn frame_manifest(body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16 + body.len());
    bytes.extend_from_slice(MANIFEST_MAGIC);
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// Encodes a data object of the fuzz region by the documented layout (for
/// seeding): `pages` are page numbers, each page filled from `fill`.
pub fn encode_object(pages: &[u64], fill: impl Fn(u64) -> u8) -> Vec<u8> {
    let mut index = Vec::new();
    let mut data = Vec::new();
    for &page in pages {
        let bytes = vec![fill(page); PAGE_BYTES];
        index.extend_from_slice(&page.to_le_bytes());
        index.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
        index.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&bytes);
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"PGDAOBJ1");
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(PAGE_BYTES as u32).to_le_bytes());
    out.extend_from_slice(&UID.to_le_bytes());
    out.extend_from_slice(&CHECKPOINT.to_le_bytes());
    out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&index).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&index);
    out.extend_from_slice(&data);
    out
}

/// Runs one input through the target.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & MODE_OBJECT == 0 {
        manifest(rest);
    } else {
        object(mode, rest);
    }
}

fn manifest(bytes: &[u8]) {
    let framed;
    let bytes = if bytes.starts_with(MANIFEST_MAGIC) {
        bytes
    } else {
        framed = frame_manifest(bytes);
        &framed
    };
    let Ok(manifest) = Manifest::decode("fuzz.manifest", bytes) else {
        return;
    };
    let body = serde_json::to_vec(&manifest).expect("a manifest serializes");
    let again = Manifest::decode("fuzz.manifest", &frame_manifest(&body))
        .unwrap_or_else(|error| panic!("a re-encoded manifest fails to decode: {error}"));
    assert_eq!(format!("{again:?}"), format!("{manifest:?}"));
}

struct Fixture {
    storage: Storage,
    root: PathBuf,
    arena: Arc<Arena>,
    _dir: crate::ProcessDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = crate::ProcessDir::new("checkpoint");
        let root = dir.path().join("store");
        let storage =
            Storage::open(&StorageConfig::Dir(root.clone())).expect("a directory store opens");
        Fixture {
            storage,
            root,
            arena: Arc::new(Arena::new(4 << 20, 2 << 20).expect("a 4 MiB arena")),
            _dir: dir,
        }
    })
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at + 4)?.try_into().unwrap(),
    ))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(at..at + 8)?.try_into().unwrap(),
    ))
}

fn object(flags: u8, bytes: &[u8]) {
    let pages = u64::from(u32_at(bytes, 32).unwrap_or(0)).min(REGION_PAGES);
    let expected_bytes =
        OBJECT_HEADER_BYTES as u64 + pages * (INDEX_ENTRY_BYTES + PAGE_BYTES) as u64;
    let mut object = bytes.to_vec();
    if flags & FLAG_FIT != 0 {
        object.resize(expected_bytes as usize, 0);
    }
    let data_start = OBJECT_HEADER_BYTES + pages as usize * INDEX_ENTRY_BYTES;
    if flags & FLAG_FIX_PAGES != 0 {
        for index in 0..pages as usize {
            let at = data_start + index * PAGE_BYTES;
            let Some(page) = object.get(at..at + PAGE_BYTES) else {
                break;
            };
            let crc = crc32c::crc32c(page);
            let entry = OBJECT_HEADER_BYTES + index * INDEX_ENTRY_BYTES + 8;
            object[entry..entry + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
    if flags & FLAG_FIX_INDEX != 0 && object.len() >= data_start {
        let crc = crc32c::crc32c(&object[OBJECT_HEADER_BYTES..data_start]);
        object[36..40].copy_from_slice(&crc.to_le_bytes());
    }
    if flags & FLAG_FIX_HEADER != 0 && object.len() >= OBJECT_HEADER_BYTES {
        let crc = crc32c::crc32c(&object[..44]);
        object[44..48].copy_from_slice(&crc.to_le_bytes());
    }

    // Live runs from the index: consecutive pages at consecutive indexes.
    let mut runs: Vec<[u64; 3]> = Vec::new();
    for index in 0..pages {
        let Some(page) = u64_at(
            &object,
            OBJECT_HEADER_BYTES + index as usize * INDEX_ENTRY_BYTES,
        ) else {
            break;
        };
        if page >= REGION_PAGES
            || runs
                .iter()
                .any(|run| (run[0]..run[0] + run[2]).contains(&page))
        {
            continue;
        }
        match runs.last_mut() {
            Some(run) if run[0] + run[2] == page && run[1] + run[2] == index => run[2] += 1,
            _ => runs.push([page, index, 1]),
        }
    }
    if flags & FLAG_SHIFT != 0
        && let Some(run) = runs.first_mut()
    {
        run[0] = (run[0] + 1) % (REGION_PAGES - run[2] + 1);
    }
    // A page in two runs would make the expected contents ambiguous.
    let mut seen = [false; REGION_PAGES as usize];
    runs.retain(|run| {
        let free = (run[0]..run[0] + run[2]).all(|page| !seen[page as usize]);
        if free {
            (run[0]..run[0] + run[2]).for_each(|page| seen[page as usize] = true);
        }
        free
    });
    let live: u64 = runs.iter().map(|run| run[2]).sum();
    let body = serde_json::json!({
        "format": 1,
        "name": NAME,
        "uid": UID,
        "size": REGION_PAGES * PAGE_BYTES as u64,
        "page_size": PAGE_BYTES,
        "number": CHECKPOINT,
        "started_unix_ms": 1,
        "pages": live,
        "objects": [{
            "key": KEY,
            "checkpoint": CHECKPOINT,
            "pages": pages,
            "bytes": expected_bytes,
            "runs": runs,
        }],
    });
    let manifest = Manifest::decode(
        "fuzz.manifest",
        &frame_manifest(&serde_json::to_vec(&body).unwrap()),
    )
    .unwrap_or_else(|error| panic!("the harness built an invalid manifest: {error}"));

    let fixture = fixture();
    let path = fixture.root.join(KEY);
    std::fs::create_dir_all(path.parent().unwrap()).expect("creating the object's dir");
    std::fs::write(&path, &object).expect("writing the object");
    let info = RegionInfo {
        id: 1,
        size: REGION_PAGES * PAGE_BYTES as u64,
        page_size: PAGE_BYTES as u32,
        name: NAME.into(),
    };
    let region = Region::new(info, UID, fixture.arena.clone()).expect("a valid region");
    match checkpoint::load_baseline(&fixture.storage, &region, &manifest, &()) {
        Ok(()) => {}
        Err(NodeError::CorruptObject { .. }) => return,
        Err(other) => panic!("loading a baseline fails with an unexpected error: {other}"),
    }

    // Every live page holds the object's bytes; the rest are zeros.
    let mut payload = 1u64.to_le_bytes().to_vec();
    payload.extend_from_slice(&(REGION_PAGES as u32).to_le_bytes());
    for page in 0..REGION_PAGES {
        payload.extend_from_slice(&page.to_le_bytes());
    }
    let Ok(Request::ReadPages { pages: list, .. }) =
        Request::decode(Opcode::ReadPages as u8, &payload)
    else {
        unreachable!("a valid ReadPages payload");
    };
    let mut contents = Vec::new();
    region
        .read_pages(list, &mut contents)
        .expect("reading the loaded region");
    let mut expected = vec![0u8; REGION_PAGES as usize * PAGE_BYTES];
    for &[first, index, count] in &runs {
        for offset in 0..count {
            let from = data_start + (index + offset) as usize * PAGE_BYTES;
            let to = (first + offset) as usize * PAGE_BYTES;
            expected[to..to + PAGE_BYTES].copy_from_slice(&object[from..from + PAGE_BYTES]);
        }
    }
    assert!(
        contents == expected,
        "the loaded region differs from the object"
    );
}
