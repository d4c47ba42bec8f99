//! Guards the README's Rust examples against drifting from the library:
//! each ```rust block of README.md is copied here, between `README begin`
//! and `README end` markers, inside a function that gives it what the
//! README leaves implicit (a `client`, a `region`). The copies compile with
//! this test, those that need only a node run against one on loopback and
//! are checked, and `the_copies_are_the_readme_blocks` fails when the copies
//! and the README's blocks differ in any line, order or number. Addresses
//! and paths are the only rewrites (see [`README_REWRITES`]).
//!
//! The two blocks that need a cluster or other hosts (`connect_cluster`
//! with `flush_on_signal`, and the reconnect options with a fallback node)
//! are compiled; the second also runs, against the test's nodes.

mod common;

use std::error::Error;
use std::path::Path;

use pagoda::{Client, ClientOptions, Region, RegionOptions};

/// What the README says literally and what the copies here say instead.
const README_REWRITES: &[(&str, &str)] = &[
    ("\"127.0.0.1:7070\"", "node"),
    ("\"10.0.0.11:7070\"", "node"),
    ("\"10.0.0.12:7070\"", "fallback_node"),
    ("\"/var/lib/myapp/journal/embeddings\"", "journal_dir"),
];

/// Node RAM for pages: the README's regions are thin (1 GiB, mostly unwritten).
const NODE_CAPACITY_BYTES: u64 = 256 << 20;

/// The "numbers" region the mapping example sorts (it opens the region, so
/// the test creates it): 1 MiB of `u64`s.
const NUMBERS_BYTES: u64 = 1 << 20;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

#[rustfmt::skip]
fn using_the_library(node: &str) -> Result<()> {
    // README begin
    use pagoda::{Client, ClientOptions, RegionOptions};

    let client = Client::connect(node, ClientOptions::default())?;
    client.create_region("embeddings", 1 << 30, 4096)?;
    let region = client.open_region("embeddings", RegionOptions::with_cache_bytes(64 << 20))?;
    region.write_at(12_345, b"hello")?;     // any byte range, spanning pages
    let mut buf = [0u8; 5];
    region.read_at(12_345, &mut buf)?;
    region.flush()?;                        // every dirty page is now on the node
    // README end
    assert_eq!(&buf, b"hello");
    Ok(())
}

/// Compiled only: it needs an etcd cluster, and it installs signal handlers.
#[rustfmt::skip]
#[allow(dead_code, unused_variables)]
fn in_a_cluster() -> Result<()> {
    // README begin
    let client = Client::connect_cluster("etcd://10.0.0.5:2379", ClientOptions::default())?;
    client.flush_on_signal(pagoda::FlushOnSignal::default())?;
    let region = client.open_region("embeddings", RegionOptions::default())?;
    // README end
    Ok(())
}

#[rustfmt::skip]
fn typed_values(client: &Client) -> Result<Region> {
    // README begin
    use bytemuck::{Pod, Zeroable};

    #[derive(Clone, Copy, Pod, Zeroable)]
    #[repr(C)]
    struct Entry { key: u64, score: f32, hits: u32 }

    // Opens the region, or creates it with this shape if it does not exist.
    let region = client.open_or_create_region("entries", 1 << 30, 4096, RegionOptions::default())?;
    region.write_value(4093, &42u64)?;                           // straddles two pages: fine
    let answer: u64 = region.read_value(4093)?;
    region.write_value(8192, &Entry { key: 7, score: 0.5, hits: 1 })?;
    let embedding = vec![0.25f32; 768];
    region.write_slice(1 << 20, &embedding)?;                    // slices of any Pod type
    let mut back = vec![0f32; 768];
    region.read_slice(1 << 20, &mut back)?;
    // README end
    assert_eq!(answer, 42);
    assert_eq!(back, embedding);
    let entry: Entry = region.read_value(8192)?;
    assert_eq!((entry.key, entry.score, entry.hits), (7, 0.5, 1));
    Ok(region)
}

#[rustfmt::skip]
fn read_ahead(region: &Region) -> Result<()> {
    // README begin
    use std::time::Duration;

    // Explicit hints: these records are needed within the next millisecond or so.
    region.prefetch(&[4096 * 17, 4096 * 9_001], Duration::from_millis(5))?;

    // Or teach the region which pages refer to which: when an index page is first used,
    // the records it lists are read ahead.
    region.set_reference_extractor(
        |page, out| {
            for id in page.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap())) {
                if id != 0 { out.push(id * 4096) }   // region offsets; out of range is ignored
            }
        },
        Duration::from_millis(20),
    );
    let stats = region.cache_stats();    // prefetch_issued, _used, _late, _wasted, ...
    // README end
    assert!(stats.prefetch_issued >= 2, "{stats:?}");
    Ok(())
}

#[rustfmt::skip]
fn mapped_region(client: &Client) -> Result<()> {
    // README begin
    use pagoda::MapOptions;

    let region = client.open_region("numbers", RegionOptions::default())?;
    let mut mapping = region.map(MapOptions::with_local_bytes(64 << 20))?;  // the handle moves in
    let numbers: &mut [u64] = bytemuck::cast_slice_mut(mapping.as_mut_slice());
    numbers.sort_unstable();           // a region 4x the budget: pages come and go underneath
    mapping.flush()?;                  // every page written is on the node
    // README end
    Ok(())
}

#[rustfmt::skip]
fn reconnecting(node: &str, fallback_node: &str) -> Result<Client> {
    use std::time::Duration;
    // README begin
    let options = ClientOptions {
        reconnect_for: Duration::from_secs(30),           // the default; zero: never reconnect
        fallback: vec![fallback_node.parse()?],        // tried in order when the node refuses
        ..ClientOptions::default()
    };
    let client = Client::connect(node, options)?;
    // README end
    Ok(client)
}

#[rustfmt::skip]
fn transactions(client: &Client, journal_dir: &Path) -> Result<u64> {
    // README begin
    use pagoda::{Durability, RegionOptions};

    let options = RegionOptions {
        durability: Durability::Local { journal_dir: journal_dir.into() },
        ..RegionOptions::with_cache_bytes(64 << 20)
    };
    let region = client.open_region("embeddings", options)?;
    let total = region.transaction(|tx| {
        let value = tx.read_value::<u64>(0)? + 1;   // sees this transaction's own writes
        tx.write_value(0, &value)?;
        tx.write_at(1 << 20, b"several ranges, all or none")?;
        Ok(value)
    })?;                                            // durable when this returns
    // README end
    let mut ranges = [0u8; 27];
    region.read_at(1 << 20, &mut ranges)?;
    assert_eq!(&ranges, b"several ranges, all or none");
    Ok(total)
}

/// The README's ```rust blocks, each with the fence's indentation removed.
fn readme_rust_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<(usize, Vec<String>)> = None;
    for line in readme.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match (&mut open, trimmed.strip_prefix("```")) {
            (None, Some(language)) if language.trim() == "rust" => {
                open = Some((indent, Vec::new()))
            }
            (None, Some(_)) | (None, None) => {}
            (Some(_), Some(_)) => blocks.push(open.take().unwrap().1.join("\n")),
            (Some((fence_indent, lines)), None) => {
                lines.push(line[indent.min(*fence_indent)..].to_owned())
            }
        }
    }
    blocks
}

/// The copies in this file, each with its common indentation removed.
fn copies() -> Vec<String> {
    let source = include_str!("readme_snippets.rs");
    let mut copies = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in source.lines() {
        match (line.trim(), &mut current) {
            ("// README begin", None) => current = Some(Vec::new()),
            ("// README end", Some(_)) => {
                let lines = current.take().unwrap();
                let indent = lines
                    .iter()
                    .filter(|line| !line.trim().is_empty())
                    .map(|line| line.len() - line.trim_start().len())
                    .min()
                    .unwrap_or(0);
                let dedented: Vec<&str> = lines
                    .iter()
                    .map(|line| line.get(indent..).unwrap_or(""))
                    .collect();
                copies.push(dedented.join("\n"));
            }
            (_, Some(lines)) => lines.push(line),
            (_, None) => {}
        }
    }
    copies
}

// Guards the copies: they are the README's Rust blocks, line for line and in
// order, but for the rewrites of addresses and paths.
#[test]
fn the_copies_are_the_readme_blocks() {
    let readme: Vec<String> = readme_rust_blocks()
        .into_iter()
        .map(|block| {
            README_REWRITES
                .iter()
                .fold(block, |text, (from, to)| text.replace(from, to))
        })
        .collect();
    let copies = copies();
    assert!(
        readme.len() >= 7,
        "README.md lost its Rust blocks? {readme:#?}"
    );
    for (index, (readme, copy)) in readme.iter().zip(&copies).enumerate() {
        assert_eq!(
            copy, readme,
            "README Rust block {index} and its copy in crates/pagoda/tests/readme_snippets.rs \
             differ: update the copy (and make it compile and pass) or the README"
        );
    }
    assert_eq!(
        copies.len(),
        readme.len(),
        "README.md has {} Rust blocks, crates/pagoda/tests/readme_snippets.rs copies {}",
        readme.len(),
        copies.len()
    );
}

// Guards the examples' behaviour: run in the README's order against a node
// on loopback, each does what its comments say.
#[test]
fn the_readme_examples_run() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(&dir.path().join("node"), NODE_CAPACITY_BYTES, None);
    let fallback = common::node(&dir.path().join("fallback"), NODE_CAPACITY_BYTES, None);
    let address = node.local_addr().to_string();
    using_the_library(&address).unwrap();
    let client = common::client(&node);
    let entries = typed_values(&client).unwrap();
    read_ahead(&entries).unwrap();
    drop(entries);

    client
        .create_region("numbers", NUMBERS_BYTES, 4096)
        .unwrap();
    let unsorted: Vec<u64> = (0..NUMBERS_BYTES / 8)
        .map(|index| index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let numbers = client
        .open_region("numbers", RegionOptions::default())
        .unwrap();
    numbers.write_slice(0, &unsorted).unwrap();
    numbers.flush().unwrap();
    drop(numbers);
    mapped_region(&client).unwrap();
    let reader = client
        .open_region_read_only("numbers", RegionOptions::default())
        .unwrap();
    let mut sorted = vec![0u64; unsorted.len()];
    reader.read_slice(0, &mut sorted).unwrap();
    let mut expected = unsorted;
    expected.sort_unstable();
    assert_eq!(
        sorted, expected,
        "the mapped sort's result, as the node holds it"
    );
    drop(reader);

    let reconnecting_client = reconnecting(&address, &fallback.local_addr().to_string()).unwrap();
    assert!(reconnecting_client.list_regions().unwrap().len() >= 3);
    drop(reconnecting_client);

    let total = transactions(&client, &dir.path().join("journal")).unwrap();
    assert_eq!(total, 1, "the first transaction reads zero and adds one");
}
