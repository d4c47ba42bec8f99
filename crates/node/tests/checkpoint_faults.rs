//! Checkpoints when storage misbehaves: corrupted and truncated data objects
//! and manifests, a store whose puts fail, a full disk, and an S3 endpoint
//! (moto, started here on loopback). Every test runs real nodes on loopback
//! and compares what they serve or recover against a model of page versions.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use pagoda::{
    Client, ClientError, ClientOptions, ErrorCode, RecoveryPhase, RegionInfo, RegionState,
};
use pagoda_node::storage::{DurableDir, Storage};
use pagoda_node::{Node, NodeConfig, S3Settings, StorageConfig};
use rand::{Rng, SeedableRng};

const PAGE: usize = 4096;
/// Pages in a 2 MiB segment of the node's arena.
const SEGMENT_PAGES: u64 = 512;
/// The documented data object layout (see `checkpoint.rs`).
const OBJECT_HEADER_BYTES: usize = 48;
const INDEX_ENTRY_BYTES: usize = 16;
/// The documented manifest layout: magic, body length, body crc, body.
const MANIFEST_HEADER_BYTES: usize = 16;

// ---------------------------------------------------------------------------
// Nodes, clients and models.

fn start(data_dir: &Path, storage: StorageConfig, object_bytes: usize) -> Node {
    let mut config = NodeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        64 << 20,
        data_dir.to_path_buf(),
    );
    config.storage = Some(storage);
    config.checkpoint_object_bytes = object_bytes;
    Node::start(config).unwrap()
}

/// A node on a local storage directory with small (64 KiB) objects, so a
/// region's checkpoint spans many objects.
fn start_dir(data_dir: &Path, storage: &Path) -> Node {
    start(
        data_dir,
        StorageConfig::Dir(storage.to_path_buf()),
        64 * 1024,
    )
}

fn connect(addr: SocketAddr) -> Client {
    Client::connect(addr, ClientOptions::default()).unwrap()
}

/// A page's contents: its number and a version, repeated; version 0 is a
/// page never written (zeros).
fn page_bytes(page: u64, version: u64) -> Vec<u8> {
    if version == 0 {
        return vec![0; PAGE];
    }
    let mut bytes = Vec::with_capacity(PAGE);
    while bytes.len() < PAGE {
        bytes.extend_from_slice(&page.to_le_bytes());
        bytes.extend_from_slice(&version.to_le_bytes());
    }
    bytes
}

fn version_of(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[8..16].try_into().unwrap())
}

/// Writes `version` to `pages` and records it in the model.
fn write(client: &Client, info: &RegionInfo, pages: &[u64], version: u64, model: &mut [u64]) {
    for chunk in pages.chunks(256) {
        let data: Vec<u8> = chunk.iter().flat_map(|&p| page_bytes(p, version)).collect();
        client.raw().write_pages(info, chunk, &data).unwrap();
        for &page in chunk {
            model[page as usize] = version;
        }
    }
}

fn read_all(client: &Client, info: &RegionInfo) -> Vec<u8> {
    let pages = info.size / info.page_size as u64;
    let mut out = vec![0u8; pages as usize * PAGE];
    for (chunk, buffer) in out.chunks_mut(256 * PAGE).enumerate() {
        let first = chunk as u64 * 256;
        let list: Vec<u64> = (first..first + (buffer.len() / PAGE) as u64).collect();
        client.raw().read_pages(info, &list, buffer).unwrap();
    }
    out
}

/// Asserts that `contents` holds exactly the model's versions.
fn assert_model(contents: &[u8], model: &[u64], what: &str) {
    assert_eq!(contents.len(), model.len() * PAGE, "{what}: region size");
    for (page, bytes) in contents.chunks(PAGE).enumerate() {
        assert!(
            bytes == page_bytes(page as u64, model[page]).as_slice(),
            "{what}: page {page} holds version {}, the model says {}",
            version_of(bytes),
            model[page]
        );
    }
}

/// The node's refusal of a request, or a panic naming what was expected.
fn refused<T: fmt::Debug>(result: Result<T, ClientError>, what: &str) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Remote { code, message }) => (code, message),
        other => panic!("{what}: expected the node to refuse, got {other:?}"),
    }
}

/// Recovers `name` from the baseline alone onto a fresh node on `storage`
/// and returns its pages, or the recovery's error.
fn recover_baseline(
    storage: StorageConfig,
    object_bytes: usize,
    name: &str,
) -> Result<Vec<u8>, ClientError> {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), storage, object_bytes);
    let client = connect(node.local_addr());
    let done = client.recover(name, None, None, true, Duration::from_millis(5), |_| {})?;
    assert_eq!(done.phase, RecoveryPhase::Done, "{done:?}");
    let info = client.stat_region(name)?.info;
    Ok(read_all(&client, &info))
}

fn recover_baseline_dir(storage: &Path, name: &str) -> Result<Vec<u8>, ClientError> {
    recover_baseline(StorageConfig::Dir(storage.to_path_buf()), 64 * 1024, name)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------
// Files on disk.

/// The files under `dir/relative`, sorted (none if it does not exist).
fn files_in(dir: &Path, relative: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir.join(relative)) {
        Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => panic!("listing {}: {error}", dir.join(relative).display()),
    };
    files.sort();
    files
}

/// Every file below `dir`, recursively.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// A path's key relative to the storage root.
fn key_of(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// The keys of the data objects a manifest names, read straight from its
/// bytes by the documented format.
fn manifest_objects(bytes: &[u8]) -> Vec<String> {
    assert_eq!(&bytes[..8], b"PGDAMAN1", "manifest magic");
    let body: serde_json::Value = serde_json::from_slice(&bytes[MANIFEST_HEADER_BYTES..]).unwrap();
    body["objects"]
        .as_array()
        .expect("a manifest lists its objects")
        .iter()
        .map(|object| object["key"].as_str().unwrap().to_owned())
        .collect()
}

/// Data objects of region `name` in a storage directory that no manifest
/// names (with their sizes); asserts every object a manifest names exists.
fn unnamed_objects(root: &Path, name: &str) -> Vec<(String, u64)> {
    let mut named = std::collections::HashSet::new();
    for manifest in files_in(root, &format!("regions/{name}/manifests")) {
        for key in manifest_objects(&std::fs::read(&manifest).unwrap()) {
            assert!(
                root.join(&key).is_file(),
                "{} names {key}, which is missing",
                manifest.display()
            );
            named.insert(key);
        }
    }
    files_in(root, &format!("regions/{name}/data"))
        .into_iter()
        .map(|file| (key_of(root, &file), file.metadata().unwrap().len()))
        .filter(|(key, _)| !named.contains(key))
        .collect()
}

/// Pages in a data object, from its header, after checking the header's
/// magic and that the size matches the documented layout.
fn object_pages(bytes: &[u8]) -> usize {
    assert_eq!(&bytes[..8], b"PGDAOBJ1", "data object magic");
    let count = u32::from_le_bytes(bytes[32..36].try_into().unwrap()) as usize;
    assert_eq!(
        bytes.len(),
        OBJECT_HEADER_BYTES + count * (INDEX_ENTRY_BYTES + PAGE),
        "data object size for {count} pages"
    );
    count
}

/// Ways to damage a stored data object.
#[derive(Clone, Copy, Debug)]
enum ObjectDamage {
    /// One bit of a page's bytes.
    PageByte,
    /// One bit of the header (the region uid).
    HeaderByte,
    /// One bit of the index (the first entry's checksum).
    IndexByte,
    /// The last page cut off.
    Truncated,
}

impl ObjectDamage {
    fn apply(self, bytes: &[u8]) -> Vec<u8> {
        let count = object_pages(bytes);
        assert!(count >= 4, "the object holds {count} pages");
        let mut out = bytes.to_vec();
        let data_start = OBJECT_HEADER_BYTES + count * INDEX_ENTRY_BYTES;
        match self {
            ObjectDamage::PageByte => out[data_start + 3 * PAGE + 100] ^= 0x01,
            ObjectDamage::HeaderByte => out[20] ^= 0x01,
            ObjectDamage::IndexByte => out[OBJECT_HEADER_BYTES + 8] ^= 0x01,
            ObjectDamage::Truncated => out.truncate(bytes.len() - PAGE),
        }
        out
    }

    /// A word the node's message must contain.
    fn symptom(self) -> &'static str {
        match self {
            ObjectDamage::Truncated => "truncated",
            _ => "checksum",
        }
    }
}

/// Asserts that a node restarted on a region's data dir marks it damaged,
/// refuses to read, write or checkpoint it, and names `key` and `symptom`.
fn assert_damaged(data_dir: &Path, storage: StorageConfig, name: &str, key: &str, symptom: &str) {
    let node = start(data_dir, storage, 64 * 1024);
    let client = connect(node.local_addr());
    let info = client.stat_region(name).unwrap().info;
    // A baseline loads lazily: a damaged page is found when it is loaded,
    // by the background loader or by the first read of its segment (the
    // damage lies in pages 0 and 1's segment).
    let (code, message) = refused(
        client
            .raw()
            .read_pages(&info, &[0, 1], &mut vec![0; 2 * PAGE]),
        "reading a damaged region",
    );
    assert_eq!(code, ErrorCode::RegionUnavailable, "{message}");
    assert!(
        message.contains(key) && message.contains(symptom),
        "the refusal must name {key} and say {symptom:?}: {message}"
    );
    let stat = client.stat_region(name).unwrap();
    assert_eq!(stat.state, RegionState::Damaged, "{stat:?}");
    // Its (partly loaded) memory must never replace the baseline.
    let (code, message) = refused(client.checkpoint(name, true), "checkpointing it");
    assert_eq!(code, ErrorCode::RegionUnavailable, "{message}");
    let (code, message) = refused(
        client
            .raw()
            .write_pages(&stat.info, &[0], &page_bytes(0, 77)),
        "writing it",
    );
    assert_eq!(code, ErrorCode::RegionUnavailable, "{message}");
}

/// Asserts that baseline-only recovery of `name` fails and names `key`.
fn assert_recovery_fails(storage: StorageConfig, name: &str, key: &str) {
    match recover_baseline(storage, 64 * 1024, name) {
        Ok(_) => panic!("recovery of {name:?} from a damaged baseline succeeded"),
        Err(error) => assert!(
            error.to_string().contains(key),
            "the recovery's error must name {key}: {error}"
        ),
    }
}

// Guards verification of data objects on load: a flipped bit in a page, in
// the header or in the index, and an object cut short are each detected
// when a node reloads the region (it turns Damaged, refuses reads, writes
// and checkpoints, and says which object and what is wrong) and when the
// region is recovered from the baseline elsewhere. Restoring the object
// makes the same files load again, so each detection is the damage's doing.
#[test]
fn damaged_data_objects_are_detected() {
    let storage = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let pages = 256u64;
    let mut model = vec![0u64; pages as usize];
    {
        let node = start_dir(data.path(), storage.path());
        let client = connect(node.local_addr());
        let info = client
            .create_region("c", pages * PAGE as u64, PAGE as u32)
            .unwrap();
        write(
            &client,
            &info,
            &(0..pages).collect::<Vec<_>>(),
            1,
            &mut model,
        );
        let done = client.checkpoint("c", false).unwrap();
        assert_eq!((done.number, done.pages), (1, pages));
        node.shutdown();
    }
    let objects = files_in(storage.path(), "regions/c/data");
    assert_eq!(objects.len(), 16, "64 KiB objects of 16 pages: {objects:?}");
    let victim = &objects[5];
    let key = key_of(storage.path(), victim);
    let original = std::fs::read(victim).unwrap();
    for damage in [
        ObjectDamage::PageByte,
        ObjectDamage::HeaderByte,
        ObjectDamage::IndexByte,
        ObjectDamage::Truncated,
    ] {
        std::fs::write(victim, damage.apply(&original)).unwrap();
        let config = StorageConfig::Dir(storage.path().to_path_buf());
        assert_damaged(data.path(), config.clone(), "c", &key, damage.symptom());
        assert_recovery_fails(config, "c", &key);
        std::fs::write(victim, &original).unwrap();
    }
    let node = start_dir(data.path(), storage.path());
    let client = connect(node.local_addr());
    let stat = client.stat_region("c").unwrap();
    assert_eq!((stat.state, stat.checkpoint), (RegionState::Active, 1));
    assert_model(
        &read_all(&client, &stat.info),
        &model,
        "reload of the restored object",
    );
}

// Guards manifest verification: a damaged newest manifest (a flipped bit, a
// truncation, or a valid older manifest under the newer name) makes the
// region Damaged with the manifest's key in the reason, and baseline-only
// recovery fails naming it; an older checkpoint is never used silently in
// its place.
#[test]
fn damaged_newest_manifest_is_detected_not_replaced_by_an_older_one() {
    let storage = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let pages = 256u64;
    let mut model = vec![0u64; pages as usize];
    {
        let node = start_dir(data.path(), storage.path());
        let client = connect(node.local_addr());
        let info = client
            .create_region("m", pages * PAGE as u64, PAGE as u32)
            .unwrap();
        write(
            &client,
            &info,
            &(0..pages).collect::<Vec<_>>(),
            1,
            &mut model,
        );
        assert_eq!(client.checkpoint("m", false).unwrap().number, 1);
        write(&client, &info, &(0..64).collect::<Vec<_>>(), 2, &mut model);
        assert_eq!(client.checkpoint("m", false).unwrap().number, 2);
        node.shutdown();
    }
    let manifests = files_in(storage.path(), "regions/m/manifests");
    assert_eq!(manifests.len(), 2, "two manifests kept: {manifests:?}");
    let newest = &manifests[1];
    let key = key_of(storage.path(), newest);
    assert_eq!(key, "regions/m/manifests/00000000000000000002.manifest");
    let original = std::fs::read(newest).unwrap();
    let older = std::fs::read(&manifests[0]).unwrap();
    let mut flipped = original.clone();
    let middle = MANIFEST_HEADER_BYTES + (original.len() - MANIFEST_HEADER_BYTES) / 2;
    flipped[middle] ^= 0x01;
    let truncated = original[..original.len() - 7].to_vec();
    for (what, bytes, symptom) in [
        ("a flipped bit", flipped, "checksum"),
        ("a truncation", truncated, "truncated"),
        (
            "an older manifest under its name",
            older,
            "checkpoint 1, expected",
        ),
    ] {
        std::fs::write(newest, &bytes).unwrap();
        let config = StorageConfig::Dir(storage.path().to_path_buf());
        eprintln!("newest manifest with {what}");
        assert_damaged(data.path(), config.clone(), "m", &key, symptom);
        assert_recovery_fails(config, "m", &key);
    }
    std::fs::write(newest, &original).unwrap();
    let node = start_dir(data.path(), storage.path());
    let client = connect(node.local_addr());
    let stat = client.stat_region("m").unwrap();
    assert_eq!((stat.state, stat.checkpoint), (RegionState::Active, 2));
    assert_model(
        &read_all(&client, &stat.info),
        &model,
        "reload of the restored manifest",
    );
}

// ---------------------------------------------------------------------------
// A store that fails or holds puts on demand.

/// The product's durable directory with faults injected into puts.
#[derive(Debug)]
struct FaultyStore {
    inner: DurableDir,
    /// Puts still allowed before every further put fails; `usize::MAX`:
    /// no fault.
    puts_left: AtomicUsize,
    /// Every manifest put fails.
    fail_manifests: AtomicBool,
    /// Puts wait while this is set.
    hold: AtomicBool,
    /// Puts waiting on `hold` now.
    held: AtomicUsize,
    /// Puts failed on purpose so far.
    failed: AtomicUsize,
}

impl FaultyStore {
    fn new(root: &Path) -> FaultyStore {
        FaultyStore {
            inner: DurableDir::new(root).unwrap(),
            puts_left: AtomicUsize::new(usize::MAX),
            fail_manifests: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
        }
    }

    fn fail_after_puts(&self, puts: usize) {
        self.puts_left.store(puts, Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.puts_left.store(usize::MAX, Ordering::SeqCst);
        self.fail_manifests.store(false, Ordering::SeqCst);
    }

    fn check_put(&self, location: &ObjectPath) -> object_store::Result<()> {
        let manifest = location.as_ref().ends_with(".manifest");
        let allowed = self
            .puts_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                0 | usize::MAX => None,
                left => Some(left - 1),
            });
        if matches!(allowed, Err(0)) || (manifest && self.fail_manifests.load(Ordering::SeqCst)) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::Generic {
                store: "FaultyStore",
                source: Box::new(std::io::Error::other(format!(
                    "injected fault writing {location}"
                ))),
            });
        }
        Ok(())
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.hold.load(Ordering::SeqCst) {
            self.held.fetch_add(1, Ordering::SeqCst);
            while self.hold.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
        self.check_put(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check_put(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    async fn delete(&self, location: &ObjectPath) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
    ) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

fn faulty(root: &Path) -> (Arc<FaultyStore>, StorageConfig) {
    let store = Arc::new(FaultyStore::new(root));
    let config = StorageConfig::Custom {
        store: store.clone(),
        description: format!("faulty store on {}", root.display()),
    };
    (store, config)
}

// Guards the I/O-error path of a checkpoint: a data object put that fails
// (while other clients read and write the region) and a manifest put that
// fails each fail the checkpoint with StorageFailed and a message naming the
// key; the region serves on, its checkpoint number stays, its dirty count
// still includes every page written since; the previous checkpoint stays the
// baseline; and once the store works again the next checkpoint covers every
// dirty page, and the failed attempts' objects are collected in time.
#[test]
fn failed_puts_fail_the_checkpoint_and_keep_the_previous_baseline() {
    let storage = tempfile::tempdir().unwrap();
    let (store, config) = faulty(storage.path());
    let data = tempfile::tempdir().unwrap();
    let node = start(data.path(), config.clone(), 64 * 1024);
    let client = connect(node.local_addr());
    let pages = SEGMENT_PAGES;
    let info = client
        .create_region("f", pages * PAGE as u64, PAGE as u32)
        .unwrap();
    let mut model = vec![0u64; pages as usize];
    write(
        &client,
        &info,
        &(0..pages).collect::<Vec<_>>(),
        1,
        &mut model,
    );
    let first = client.checkpoint("f", false).unwrap();
    assert!(first.full && first.number == 1, "{first:?}");
    let checkpoint_1 = model.clone();

    // 100 dirty pages: 7 data objects and a manifest; the third put fails,
    // and all of them wait until the region was written and read meanwhile.
    write(&client, &info, &(0..100).collect::<Vec<_>>(), 2, &mut model);
    store.hold.store(true, Ordering::SeqCst);
    store.fail_after_puts(2);
    let attempt = {
        let client = connect(node.local_addr());
        std::thread::spawn(move || client.checkpoint("f", false))
    };
    wait_until("a held put", Duration::from_secs(10), || {
        store.held.load(Ordering::SeqCst) > 0
    });
    write(&client, &info, &[200], 3, &mut model);
    let mut page = vec![0u8; PAGE];
    client.raw().read_pages(&info, &[200], &mut page).unwrap();
    assert_eq!(version_of(&page), 3, "a read during the checkpoint");
    store.hold.store(false, Ordering::SeqCst);
    let (code, message) = refused(attempt.join().unwrap(), "a checkpoint whose put fails");
    assert_eq!(code, ErrorCode::StorageFailed, "{message}");
    assert!(
        message.contains("injected fault") && message.contains("regions/f/data/"),
        "the error must say which object failed and why: {message}"
    );
    assert!(store.failed.load(Ordering::SeqCst) >= 1);
    let stat = client.stat_region("f").unwrap();
    assert_eq!(stat.state, RegionState::Active);
    assert_eq!(stat.checkpoint, 1, "a failed checkpoint does not count");
    assert_eq!(
        stat.dirty_pages, 101,
        "pages written since checkpoint 1 are still dirty"
    );
    assert_model(
        &read_all(&client, &info),
        &model,
        "the region after a failed checkpoint",
    );
    write(&client, &info, &[300], 4, &mut model);
    assert_eq!(client.stat_region("f").unwrap().dirty_pages, 102);

    store.disarm();
    let baseline = recover_baseline(config.clone(), 64 * 1024, "f").unwrap();
    assert_model(
        &baseline,
        &checkpoint_1,
        "the baseline after a failed checkpoint",
    );
    let second = client.checkpoint("f", false).unwrap();
    assert!(!second.full, "{second:?}");
    assert_eq!(
        (second.number, second.pages),
        (2, 102),
        "the next checkpoint covers every page dirty since checkpoint 1"
    );
    let stat = client.stat_region("f").unwrap();
    assert_eq!((stat.checkpoint, stat.dirty_pages), (2, 0));
    let checkpoint_2 = model.clone();
    let baseline = recover_baseline(config.clone(), 64 * 1024, "f").unwrap();
    assert_model(&baseline, &checkpoint_2, "checkpoint 2");

    // The manifest put, written last, fails: every data object is stored,
    // yet the checkpoint did not happen.
    write(
        &client,
        &info,
        &(400..410).collect::<Vec<_>>(),
        5,
        &mut model,
    );
    store.fail_manifests.store(true, Ordering::SeqCst);
    let (code, message) = refused(
        client.checkpoint("f", false),
        "a checkpoint whose manifest put fails",
    );
    assert_eq!(code, ErrorCode::StorageFailed, "{message}");
    assert!(
        message.contains("injected fault") && message.contains(".manifest"),
        "the error must name the manifest: {message}"
    );
    let stat = client.stat_region("f").unwrap();
    assert_eq!((stat.checkpoint, stat.dirty_pages), (2, 10));
    let baseline = recover_baseline(config.clone(), 64 * 1024, "f").unwrap();
    assert_model(
        &baseline,
        &checkpoint_2,
        "the baseline after a failed manifest put",
    );
    store.disarm();
    let third = client.checkpoint("f", false).unwrap();
    assert_eq!((third.number, third.pages), (3, 10), "{third:?}");
    let baseline = recover_baseline(config.clone(), 64 * 1024, "f").unwrap();
    assert_model(&baseline, &model, "checkpoint 3");

    // One more checkpoint: what the failed attempts stored is garbage now.
    write(&client, &info, &[0], 6, &mut model);
    assert_eq!(client.checkpoint("f", false).unwrap().number, 4);
    let unnamed = unnamed_objects(storage.path(), "f");
    assert!(
        unnamed.is_empty(),
        "objects no manifest names outlived two checkpoints: {unnamed:?}"
    );
}

// Guards copy-on-write across a failed checkpoint: a checkpoint retried
// after a failed attempt must still be the region at the retry's start when
// a page is rewritten while the retry runs. The first round (no failed
// attempt before it) is the control; the second runs the same steps after a
// failed attempt.
#[test]
fn a_retried_checkpoint_is_a_point_in_time() {
    let storage = tempfile::tempdir().unwrap();
    let (store, config) = faulty(storage.path());
    let data = tempfile::tempdir().unwrap();
    let node = start(data.path(), config.clone(), 64 * 1024);
    let client = connect(node.local_addr());
    let pages = 4 * SEGMENT_PAGES;
    let info = client
        .create_region("p", pages * PAGE as u64, PAGE as u32)
        .unwrap();
    let mut model = vec![0u64; pages as usize];
    write(
        &client,
        &info,
        &(0..pages).collect::<Vec<_>>(),
        1,
        &mut model,
    );
    client.checkpoint("p", false).unwrap();
    // A page in the third segment, which the checkpoint reaches only after
    // the first segment's ten objects are stored.
    let late_page = 2 * SEGMENT_PAGES + 6;
    let mut dirty: Vec<u64> = (0..160).collect();
    dirty.extend(2 * SEGMENT_PAGES..2 * SEGMENT_PAGES + 16);
    for (round, fail_first) in [(1u64, false), (2, true)] {
        write(&client, &info, &dirty, 10 * round, &mut model);
        let at_start = model.clone();
        if fail_first {
            store.fail_manifests.store(true, Ordering::SeqCst);
            let (code, message) = refused(client.checkpoint("p", false), "the failed attempt");
            assert_eq!(code, ErrorCode::StorageFailed, "{message}");
            store.disarm();
        }
        // Hold the puts: the checkpoint stops in the first segment, and the
        // late page is rewritten before the checkpoint reaches it.
        store.hold.store(true, Ordering::SeqCst);
        let attempt = {
            let client = connect(node.local_addr());
            std::thread::spawn(move || client.checkpoint("p", false))
        };
        wait_until("a held put", Duration::from_secs(10), || {
            store.held.load(Ordering::SeqCst) > 0
        });
        write(&client, &info, &[late_page], 10 * round + 1, &mut model);
        store.hold.store(false, Ordering::SeqCst);
        let done = attempt.join().unwrap().unwrap();
        assert_eq!(done.number, round + 1, "{done:?}");
        let baseline = recover_baseline(config.clone(), 64 * 1024, "p").unwrap();
        assert_model(
            &baseline,
            &at_start,
            &format!(
                "checkpoint {} (round {round}, after a failed attempt: {fail_first})",
                done.number
            ),
        );
    }
}

// ---------------------------------------------------------------------------
// A full disk.

/// A tmpfs of a given size mounted on a temporary directory, unmounted on
/// drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running mount (this test needs it, as root): {e}"));
        assert!(
            output.status.success(),
            "mounting a {size} tmpfs on {} failed (this test needs root): {}",
            dir.path().display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

// Guards the full-disk path: a checkpoint that runs out of space fails with
// StorageFailed saying so, leaves no staging files, leaves the region
// serving with its pages dirty, and leaves other regions' checkpoints
// loadable; and its partial objects do not keep the disk full, so another
// region's checkpoint that fits still succeeds.
#[test]
fn a_full_disk_fails_the_checkpoint_cleanly() {
    let disk = Tmpfs::mount("3m");
    let data = tempfile::tempdir().unwrap();
    let node = start_dir(data.path(), disk.path());
    let client = connect(node.local_addr());
    let small_pages = 256u64;
    let small = client
        .create_region("small", small_pages * PAGE as u64, PAGE as u32)
        .unwrap();
    let mut small_model = vec![0u64; small_pages as usize];
    write(
        &client,
        &small,
        &(0..small_pages).collect::<Vec<_>>(),
        1,
        &mut small_model,
    );
    assert_eq!(client.checkpoint("small", false).unwrap().number, 1);
    let big_pages = 8 * SEGMENT_PAGES; // 16 MiB
    let big = client
        .create_region("big", big_pages * PAGE as u64, PAGE as u32)
        .unwrap();
    let mut big_model = vec![0u64; big_pages as usize];
    write(
        &client,
        &big,
        &(0..big_pages).collect::<Vec<_>>(),
        7,
        &mut big_model,
    );

    let (code, message) = refused(client.checkpoint("big", false), "checkpointing 16 MiB");
    assert_eq!(code, ErrorCode::StorageFailed, "{message}");
    assert!(
        message.contains("No space left") || message.contains("os error 28"),
        "the error must say the disk is full: {message}"
    );
    let mut files = Vec::new();
    walk(disk.path(), &mut files);
    let staging: Vec<_> = files
        .iter()
        .filter(|file| file.file_name().unwrap().to_str().unwrap().contains('#'))
        .collect();
    assert!(staging.is_empty(), "staging files left: {staging:?}");
    let stat = client.stat_region("big").unwrap();
    assert_eq!(stat.state, RegionState::Active);
    assert_eq!((stat.checkpoint, stat.dirty_pages), (0, big_pages));
    write(&client, &big, &[5], 8, &mut big_model);
    assert_model(
        &read_all(&client, &big),
        &big_model,
        "the region after a full disk",
    );
    let baseline = recover_baseline_dir(disk.path(), "small").unwrap();
    assert_model(
        &baseline,
        &small_model,
        "the other region's checkpoint on the full disk",
    );

    // A full checkpoint of the small region fits beside its current one
    // (about 2.1 MiB of 3) unless the failed attempt's objects stay.
    write(&client, &small, &[3], 2, &mut small_model);
    let leftovers = unnamed_objects(disk.path(), "big");
    let leftover_bytes: u64 = leftovers.iter().map(|(_, bytes)| bytes).sum();
    let retry = client.checkpoint("small", true);
    assert!(
        retry.is_ok(),
        "a checkpoint that fits failed after another region's checkpoint filled the disk: \
         {retry:?}; the failed attempt left {} objects ({leftover_bytes} bytes) that no \
         manifest names",
        leftovers.len()
    );
    assert_model(
        &recover_baseline_dir(disk.path(), "small").unwrap(),
        &small_model,
        "the small region's new checkpoint",
    );
    assert!(
        leftovers.is_empty(),
        "the failed checkpoint left {} objects ({leftover_bytes} bytes) that no manifest names",
        leftovers.len()
    );
}

// ---------------------------------------------------------------------------
// S3, served by moto on loopback.

/// A moto S3 server with the bucket `pagoda`, shared by every S3 test. It
/// exits when its standard input closes, which happens when this process
/// ends however it ends (a static is never dropped).
struct S3Server {
    endpoint: String,
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

const MOTO_SCRIPT: &str = r#"
import os, sys
import boto3
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
endpoint = f"http://{host}:{port}"
boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
             aws_secret_access_key="test", region_name="us-east-1").create_bucket(Bucket="pagoda")
print(endpoint, flush=True)
sys.stdin.read()
os._exit(0)
"#;

/// The shared server, started on first use. It also sets the environment
/// `object_store` reads S3 settings from.
fn s3() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let have_moto = Command::new("python3")
            .args([
                "-c",
                "import boto3; from moto.server import ThreadedMotoServer",
            ])
            .status()
            .is_ok_and(|status| status.success());
        if !have_moto {
            let installed = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "moto[server]"])
                .status()
                .is_ok_and(|status| status.success());
            assert!(
                installed,
                "moto is missing and `python3 -m pip install 'moto[server]'` failed"
            );
        }
        let log_path = std::env::temp_dir().join(format!("pagoda-moto-{}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new("python3")
            .args(["-c", MOTO_SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_default();
        let endpoint = line.trim().to_owned();
        assert!(
            endpoint.starts_with("http://127.0.0.1:"),
            "moto did not start (got {line:?}); its log {}:\n{}",
            log_path.display(),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        // Its request log is only needed if it fails to start.
        let _ = std::fs::remove_file(&log_path);
        // SAFETY: this runs once, before any S3 node opens its storage; the
        // only readers of these variables are `object_store` and the other
        // Rust code of this process, which read the environment through
        // std's lock, and no C code here reads it.
        unsafe {
            std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
            std::env::set_var("AWS_ALLOW_HTTP", "true");
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_REGION", "us-east-1");
        }
        S3Server {
            endpoint,
            _stdin: Mutex::new(child.stdin.take().unwrap()),
            _child: Mutex::new(child),
        }
    })
}

/// Storage under its own prefix of the shared bucket.
fn s3_storage(prefix: &str) -> StorageConfig {
    let server = s3();
    assert!(server.endpoint.starts_with("http://"));
    StorageConfig::parse(&format!("s3://pagoda/{prefix}")).unwrap()
}

/// S3 objects are larger than a directory's: fewer requests to moto.
const S3_OBJECT_BYTES: usize = 256 * 1024;

// Guards the node's own S3 settings (flags and configuration keys): each
// one given overrides its `AWS_*` variable (a wrong endpoint given over a
// right one fails the start, naming the settings to check), and settings
// alone, with the secret key read from a file, reach the store.
#[test]
fn s3_settings_override_the_environment() {
    let server = s3();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("secret");
    std::fs::write(&secret_file, "test\n").unwrap();
    let config = |endpoint: &str| match StorageConfig::parse("s3://pagoda/settings").unwrap() {
        StorageConfig::S3 { bucket, prefix, .. } => StorageConfig::S3 {
            bucket,
            prefix,
            settings: S3Settings {
                endpoint: Some(endpoint.to_owned()),
                region: Some("us-east-1".into()),
                access_key_id: Some("test".into()),
                secret_access_key_file: Some(secret_file.clone()),
                allow_http: Some(true),
            },
        },
        other => panic!("{other:?}"),
    };
    let storage = Storage::open_checked(&config(&server.endpoint)).unwrap();
    drop(storage);
    // Nothing listens on port 9 of loopback here.
    let error = Storage::open_checked(&config("http://127.0.0.1:9"))
        .err()
        .expect("a wrong endpoint given over the right variable was used");
    let message = error.to_string();
    assert!(
        message.contains("is not usable") && message.contains("--s3-endpoint"),
        "{message}"
    );
}

// Guards checkpoints to S3: a full checkpoint, an incremental one and the
// one a graceful stop takes are reloaded exactly by a restarted node, and a
// flipped bit in a data object stored in S3 is detected on reload and on
// recovery, naming the object.
#[test]
fn s3_checkpoints_reload_and_detect_corruption() {
    let config = s3_storage("reload");
    let data = tempfile::tempdir().unwrap();
    let pages = 2 * SEGMENT_PAGES;
    let mut model = vec![0u64; pages as usize];
    {
        let node = start(data.path(), config.clone(), S3_OBJECT_BYTES);
        let client = connect(node.local_addr());
        let info = client
            .create_region("s", pages * PAGE as u64, PAGE as u32)
            .unwrap();
        write(
            &client,
            &info,
            &(0..pages).collect::<Vec<_>>(),
            1,
            &mut model,
        );
        let full = client.checkpoint("s", true).unwrap();
        assert!(
            full.full && full.number == 1 && full.pages == pages,
            "{full:?}"
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let dirty: Vec<u64> = (0..100).map(|_| rng.gen_range(0..pages)).collect();
        write(&client, &info, &dirty, 2, &mut model);
        let incremental = client.checkpoint("s", false).unwrap();
        assert!(
            !incremental.full && incremental.number == 2,
            "{incremental:?}"
        );
        assert!(incremental.pages <= 100, "{incremental:?}");
        // A graceful stop checkpoints what was written since (checkpoint 3).
        write(&client, &info, &[1], 99, &mut model);
        node.shutdown();
    }
    {
        let node = start(data.path(), config.clone(), S3_OBJECT_BYTES);
        let client = connect(node.local_addr());
        let stat = client.stat_region("s").unwrap();
        assert_eq!(stat.state, RegionState::Active);
        assert_eq!((stat.checkpoint, stat.dirty_pages), (3, 0));
        assert_model(&read_all(&client, &stat.info), &model, "reload from S3");
        node.shutdown();
    }

    // Flip a bit in a page of the newest checkpoint's object, whose pages
    // are all live.
    let storage = Storage::open(&config).unwrap();
    let objects = storage
        .block_on(storage.list(&ObjectPath::from("regions/s/data")))
        .unwrap();
    let victim = objects
        .iter()
        .map(|meta| meta.location.clone())
        .find(|key| {
            key.filename()
                .is_some_and(|file| file.starts_with("00000000000000000003-"))
        })
        .unwrap_or_else(|| panic!("no object of checkpoint 3 among {objects:?}"));
    let original = storage.block_on(storage.get(&victim)).unwrap();
    let count = object_pages(&original);
    let mut damaged = original.to_vec();
    damaged[OBJECT_HEADER_BYTES + count * INDEX_ENTRY_BYTES + 10] ^= 0x01;
    storage
        .block_on(storage.put(&victim, Bytes::from(damaged)))
        .unwrap();
    let key = victim.to_string();
    assert_damaged(data.path(), config.clone(), "s", &key, "checksum");
    assert_recovery_fails(config, "s", &key);
}

// Guards recovery through S3 with writers running at the source: the
// target, reading the baseline from S3, ends equal to every acknowledged
// write; the source served only pages dirty since the baseline and became
// read-only.
#[test]
fn s3_recovery_with_writers_matches_the_model() {
    let config = s3_storage("recovery");
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let source = start(source_dir.path(), config.clone(), S3_OBJECT_BYTES);
    let target = start(target_dir.path(), config, S3_OBJECT_BYTES);
    let client = Arc::new(connect(source.local_addr()));
    let pages = 2 * SEGMENT_PAGES;
    let info = client
        .create_region("w", pages * PAGE as u64, PAGE as u32)
        .unwrap();
    let mut model = vec![0u64; pages as usize];
    write(
        &client,
        &info,
        &(0..pages).collect::<Vec<_>>(),
        1,
        &mut model,
    );
    assert!(client.checkpoint("w", true).unwrap().full);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let dirty: Vec<u64> = (0..pages / 10).map(|_| rng.gen_range(0..pages)).collect();
    write(&client, &info, &dirty, 2, &mut model);
    assert_eq!(client.checkpoint("w", false).unwrap().number, 2);
    let mut dirty: Vec<u64> = (0..pages / 10).map(|_| rng.gen_range(0..pages)).collect();
    write(&client, &info, &dirty, 3, &mut model);
    dirty.sort_unstable();
    dirty.dedup();
    let writers: Vec<_> = (0..2u64)
        .map(|writer| {
            let client = client.clone();
            let info = info.clone();
            std::thread::spawn(move || {
                // Each writer owns the pages congruent to it mod 2.
                let mut rng = rand::rngs::StdRng::seed_from_u64(100 + writer);
                let mut acknowledged: Vec<(u64, u64)> = Vec::new();
                for n in 0..1_000_000u64 {
                    let page = rng.gen_range(0..pages / 2) * 2 + writer;
                    let version = 1_000_000 * (writer + 1) + n;
                    match client
                        .raw()
                        .write_pages(&info, &[page], &page_bytes(page, version))
                    {
                        Ok(()) => acknowledged.push((page, version)),
                        Err(ClientError::Remote {
                            code: ErrorCode::ReadOnly,
                            ..
                        }) => return acknowledged,
                        Err(error) => panic!("writer {writer}: {error}"),
                    }
                }
                panic!("writer {writer} was never stopped by the freeze");
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    let target_client = connect(target.local_addr());
    let done = target_client
        .recover(
            "w",
            Some(&source.local_addr().to_string()),
            None,
            false,
            Duration::from_millis(5),
            |_| {},
        )
        .unwrap();
    let mut writes = 0;
    for writer in writers {
        let acknowledged = writer.join().unwrap();
        writes += acknowledged.len() as u64;
        assert!(
            !acknowledged.is_empty(),
            "the writers wrote during recovery"
        );
        for (page, version) in acknowledged {
            model[page as usize] = version;
        }
    }
    let recovered = target_client.stat_region("w").unwrap();
    assert_eq!(recovered.state, RegionState::Active);
    assert_model(
        &read_all(&target_client, &recovered.info),
        &model,
        "the region recovered through S3",
    );
    assert_eq!(done.baseline_checkpoint, 2);
    assert_eq!(done.baseline_pages, pages);
    // Each page copied from the source was dirty since the baseline, or
    // written again during the recovery: never a clean page.
    assert!(
        done.source_pages_done <= dirty.len() as u64 + writes,
        "the source served {} pages; {} were dirty since the baseline and {writes} written since",
        done.source_pages_done,
        dirty.len()
    );
    assert_eq!(
        client.stat_region("w").unwrap().state,
        RegionState::ReadOnly
    );
    let next = target_client.checkpoint("w", false).unwrap();
    assert!(!next.full && next.number == 3, "{next:?}");
}
