//! The storage backend: where checkpoints live.
//!
//! Everything goes through the `object_store` crate, so any backend it speaks
//! works: a local directory by default, or an S3-compatible endpoint. Node
//! threads are plain threads; the storage owns a small tokio runtime and
//! blocks on it.
//!
//! `object_store`'s local file system writes a staging file and renames it,
//! but never fsyncs, so an object it reported written may be empty after a
//! power loss. [`DurableDir`] wraps it: a put writes a staging file, fsyncs
//! it, renames it into place and fsyncs the directory, so an object the store
//! reported written survives a crash of the machine, and a checkpoint's
//! manifest, written last, can only name objects that are durable.
//!
//! Loading a baseline reads objects through [`ObjectReader`] straight into
//! the caller's memory (a region's segment), with no buffer in between: a
//! directory's files with positioned reads, any other store's objects as
//! ranged GETs whose bodies are copied in as they stream.

use std::fmt;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use crate::error::{NodeError, StorageCause};

/// Where a node keeps checkpoints.
#[derive(Clone)]
pub enum StorageConfig {
    /// A local directory, fsynced.
    Dir(PathBuf),
    /// An S3-compatible bucket and key prefix, from `s3://bucket/prefix`.
    /// Endpoint, region and credentials come from `settings` where given,
    /// else from the environment (`AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, ...).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix (may be empty).
        prefix: String,
        /// Settings that override the environment's.
        settings: S3Settings,
    },
    /// A store built by the caller (tests use this to inject faults).
    Custom {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// How to name it in logs and errors.
        description: String,
    },
}

/// S3 settings given to the node itself (flags or its configuration file)
/// rather than through `AWS_*` variables; each one given overrides its
/// variable. The secret key is read from a file, so no setting holds a
/// secret and a printed configuration hides nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// The endpoint URL, for S3-compatible stores other than AWS
    /// (`AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// The region (`AWS_REGION`).
    pub region: Option<String>,
    /// The access key id (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// A file holding the secret access key (`AWS_SECRET_ACCESS_KEY`);
    /// surrounding whitespace is ignored.
    pub secret_access_key_file: Option<PathBuf>,
    /// Allow a plain-HTTP endpoint (`AWS_ALLOW_HTTP`).
    pub allow_http: Option<bool>,
}

impl S3Settings {
    /// Whether no setting is given (everything comes from the environment).
    pub fn is_empty(&self) -> bool {
        *self == S3Settings::default()
    }

    /// `builder` with these settings applied over what it already has.
    fn apply(
        &self,
        mut builder: object_store::aws::AmazonS3Builder,
    ) -> Result<object_store::aws::AmazonS3Builder, NodeError> {
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        if let Some(id) = &self.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(path) = &self.secret_access_key_file {
            let secret = read_secret(path)?;
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(allow) = self.allow_http {
            builder = builder.with_allow_http(allow);
        }
        Ok(builder)
    }
}

/// The largest secret key file read (a key is 40 characters).
const SECRET_FILE_BYTES_MAX: u64 = 4096;

/// Reads a secret access key file: one key, surrounding whitespace ignored.
fn read_secret(path: &FsPath) -> Result<String, NodeError> {
    use std::io::Read;
    let context = || format!("reading the S3 secret access key file {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| NodeError::io(context(), e))?;
    let mut text = String::new();
    file.take(SECRET_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| NodeError::io(context(), e))?;
    if text.len() as u64 > SECRET_FILE_BYTES_MAX {
        return Err(NodeError::Config(format!(
            "the S3 secret access key file {} is larger than {SECRET_FILE_BYTES_MAX} bytes; \
             it should hold only the key",
            path.display()
        )));
    }
    let secret = text.trim();
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        return Err(NodeError::Config(format!(
            "the S3 secret access key file {} should hold one key and nothing else",
            path.display()
        )));
    }
    Ok(secret.to_owned())
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl StorageConfig {
    /// Parses `--storage`: `s3://bucket[/prefix]`, `file:///path`, or a path.
    pub fn parse(text: &str) -> Result<StorageConfig, NodeError> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(NodeError::Config(format!(
                    "storage {text:?} names no bucket (expected s3://bucket/prefix)"
                )));
            }
            return Ok(StorageConfig::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
                settings: S3Settings::default(),
            });
        }
        if let Some((scheme, _)) = text.split_once("://")
            && scheme != "file"
        {
            return Err(NodeError::Config(format!(
                "storage scheme {scheme:?} is not supported (use a directory, file:// or s3://)"
            )));
        }
        let path = text.strip_prefix("file://").unwrap_or(text);
        if path.is_empty() {
            return Err(NodeError::Config("the storage path is empty".into()));
        }
        Ok(StorageConfig::Dir(PathBuf::from(path)))
    }

    /// A human description.
    pub fn describe(&self) -> String {
        match self {
            StorageConfig::Dir(path) => path.display().to_string(),
            StorageConfig::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
            StorageConfig::Custom { description, .. } => description.clone(),
        }
    }
}

/// An open storage backend with the runtime that drives it.
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    description: String,
    /// The store of a [`StorageConfig::Dir`], where staging files of
    /// interrupted puts can be left behind.
    dir: Option<Arc<DurableDir>>,
}

/// Staging files at least this old are removed when a node opens its
/// storage: a put takes seconds, so an older one was left by a crash (another
/// node sharing the directory may have a younger one in flight).
pub const STAGING_AGE_MIN: Duration = Duration::from_secs(600);
/// How long the start-up probe of the storage may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// What removing leftover staging files found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StagingReport {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Whether a file name is a staging file's: `<key>#<digits>`.
fn is_staging(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(key, digits)| {
        !key.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Storage operations in flight at once (uploads of one checkpoint, reads of
/// one recovery).
pub const STORAGE_PARALLELISM: usize = 4;

impl Storage {
    /// Opens the backend `config` names; a directory is created if missing.
    pub fn open(config: &StorageConfig) -> Result<Storage, NodeError> {
        let description = config.describe();
        let mut dir = None;
        let store: Arc<dyn ObjectStore> = match config {
            StorageConfig::Dir(path) => {
                std::fs::create_dir_all(path).map_err(|e| {
                    NodeError::io(format!("creating storage dir {}", path.display()), e)
                })?;
                let durable = Arc::new(DurableDir::new(path)?);
                dir = Some(durable.clone());
                durable
            }
            StorageConfig::S3 {
                bucket,
                prefix,
                settings,
            } => {
                let builder = object_store::aws::AmazonS3Builder::from_env();
                let s3 = settings
                    .apply(builder)?
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| NodeError::Config(format!("storage {description}: {e}")))?;
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(s3, prefix.as_str()))
                }
            }
            StorageConfig::Custom { store, .. } => store.clone(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pagoda-storage")
            .enable_all()
            .build()
            .map_err(|e| NodeError::io("starting the storage runtime", e))?;
        Ok(Storage {
            store,
            runtime,
            description,
            dir,
        })
    }

    /// Opens the backend and proves it usable before the node serves: writes,
    /// reads back and deletes a small object, so a wrong bucket, missing
    /// credentials or a read-only directory fail the start with a clear
    /// error rather than the first checkpoint. Leftover staging files of a
    /// directory are removed (see [`STAGING_AGE_MIN`]).
    pub fn open_checked(config: &StorageConfig) -> Result<Storage, NodeError> {
        let storage = Storage::open(config)?;
        storage.probe()?;
        match storage.remove_staging(&Path::default(), STAGING_AGE_MIN) {
            Ok(report) if report.files > 0 => tracing::info!(
                storage = storage.description(),
                files = report.files,
                bytes = report.bytes,
                "removed staging files left by interrupted checkpoints"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not remove leftover staging files"),
        }
        Ok(storage)
    }

    pub(crate) fn probe(&self) -> Result<(), NodeError> {
        let key = Path::from(format!("_pagoda/probe-{:016x}", rand::random::<u64>()));
        let payload = Bytes::from_static(b"pagoda storage probe");
        let unusable = |error: NodeError| {
            NodeError::Config(format!(
                "storage {} is not usable ({error}); check its address, bucket and credentials \
                 (for S3: --s3-endpoint, --s3-region, --s3-access-key-id, \
                 --s3-secret-access-key-file or AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, \
                 AWS_SECRET_ACCESS_KEY)",
                self.description
            ))
        };
        self.block_on(async {
            tokio::time::timeout(PROBE_TIMEOUT, async {
                self.put(&key, payload.clone()).await?;
                let read = self.get(&key).await?;
                self.delete(&key).await?;
                if read != payload {
                    return Err(NodeError::storage(
                        format!("probing {key}"),
                        "what was read back differs from what was written",
                    ));
                }
                Ok(())
            })
            .await
            .unwrap_or_else(|_| {
                Err(NodeError::storage(
                    "probing",
                    format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
                ))
            })
        })
        .map_err(unusable)
    }

    /// Removes staging files (`<key>#<digits>`, left by puts a crash
    /// interrupted) at least `min_age` old under `prefix` of a directory
    /// store; other stores have none.
    pub fn remove_staging(
        &self,
        prefix: &Path,
        min_age: Duration,
    ) -> Result<StagingReport, NodeError> {
        let mut report = StagingReport::default();
        let Some(dir) = &self.dir else {
            return Ok(report);
        };
        let start = if prefix.as_ref().is_empty() {
            dir.root.clone()
        } else {
            dir.inner
                .path_to_filesystem(prefix)
                .map_err(|e| self.failed(format!("locating {prefix}"), e))?
        };
        if !start.exists() {
            return Ok(report);
        }
        let now = std::time::SystemTime::now();
        let mut pending = vec![start];
        while let Some(dir) = pending.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| NodeError::io(format!("listing {}", dir.display()), e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| NodeError::io(format!("listing {}", dir.display()), e))?;
                let kind = entry.file_type().map_err(|e| {
                    NodeError::io(format!("inspecting {}", entry.path().display()), e)
                })?;
                if kind.is_dir() {
                    pending.push(entry.path());
                    continue;
                }
                if !kind.is_file() || !entry.file_name().to_str().is_some_and(is_staging) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|modified| now.duration_since(modified).ok())
                    .unwrap_or_default();
                if age < min_age {
                    continue;
                }
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {
                        report.files += 1;
                        report.bytes += meta.len();
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        return Err(NodeError::io(
                            format!("removing {}", entry.path().display()),
                            error,
                        ));
                    }
                }
            }
        }
        Ok(report)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Runs a future on the storage runtime and waits for it. Must not be
    /// called from inside the runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Runs a future on the storage runtime in the background.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(future)
    }

    /// The backend's description, for logs and errors.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Writes an object whole.
    pub async fn put(&self, key: &Path, bytes: Bytes) -> Result<(), NodeError> {
        self.store
            .put(key, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.failed(format!("writing {key}"), e))
    }

    /// Reads an object whole.
    pub async fn get(&self, key: &Path) -> Result<Bytes, NodeError> {
        let result = self
            .store
            .get(key)
            .await
            .map_err(|e| self.failed(format!("reading {key}"), e))?;
        result
            .bytes()
            .await
            .map_err(|e| self.failed(format!("reading {key}"), e))
    }

    /// Reads byte ranges of an object.
    pub async fn get_ranges(
        &self,
        key: &Path,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, NodeError> {
        self.store
            .get_ranges(key, ranges)
            .await
            .map_err(|e| self.failed(format!("reading {key}"), e))
    }

    /// Opens an object for reading parts of it straight into the caller's
    /// memory. `plan` names the byte ranges the caller will read, in
    /// ascending order: a remote store fetches ranges closer than
    /// [`COALESCE_GAP_BYTES`] in one request (reads outside the plan are
    /// fetched on their own). Call from outside the storage runtime.
    pub fn open_object(
        &self,
        key: &Path,
        plan: &[Range<u64>],
    ) -> Result<ObjectReader<'_>, NodeError> {
        let source = match &self.dir {
            Some(dir) => {
                let path = dir
                    .inner
                    .path_to_filesystem(key)
                    .map_err(|e| self.failed(format!("locating {key}"), e))?;
                let opened = std::fs::File::open(&path).and_then(|file| {
                    let meta = file.metadata()?;
                    Ok((file, meta))
                });
                let (file, meta) = match opened {
                    Ok(opened) => opened,
                    Err(error) => {
                        let cause = if error.kind() == std::io::ErrorKind::NotFound {
                            StorageCause::NotFound
                        } else {
                            StorageCause::Failed(error.to_string())
                        };
                        return Err(NodeError::Storage {
                            context: format!("reading {key} ({})", self.description),
                            cause,
                        });
                    }
                };
                if !meta.is_file() {
                    return Err(NodeError::Storage {
                        context: format!("reading {key} ({})", self.description),
                        cause: StorageCause::NotFound,
                    });
                }
                (meta.len(), Source::File(file))
            }
            None => {
                let meta = self
                    .block_on(self.store.head(key))
                    .map_err(|e| self.failed(format!("reading {key}"), e))?;
                (
                    meta.size,
                    Source::Remote {
                        spans: coalesce(plan),
                        body: None,
                    },
                )
            }
        };
        Ok(ObjectReader {
            storage: self,
            key: key.clone(),
            size: source.0,
            source: source.1,
        })
    }

    /// Lists the objects under `prefix`.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>, NodeError> {
        let mut stream = self.store.list(Some(prefix));
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            out.push(meta.map_err(|e| self.failed(format!("listing {prefix}"), e))?);
        }
        Ok(out)
    }

    /// Deletes an object; a missing one is not an error.
    pub async fn delete(&self, key: &Path) -> Result<(), NodeError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.failed(format!("deleting {key}"), error)),
        }
    }

    fn failed(&self, context: String, error: object_store::Error) -> NodeError {
        NodeError::Storage {
            context: format!("{context} ({})", self.description),
            cause: StorageCause::from(&error),
        }
    }
}

/// Bytes of one positioned read from a directory store: 64 pages of 4 KiB,
/// few enough that they are still in the CPU's cache when the caller
/// verifies them right after they land.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Planned ranges of an object closer than this are fetched from a remote
/// store in one request, the bytes between them read and dropped
/// (`object_store`'s own default for `get_ranges`).
pub const COALESCE_GAP_BYTES: u64 = 1024 * 1024;

/// Ascending ranges merged where the gap between them is at most
/// [`COALESCE_GAP_BYTES`].
fn coalesce(plan: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut spans: Vec<Range<u64>> = Vec::with_capacity(plan.len());
    for range in plan.iter().filter(|range| !range.is_empty()) {
        match spans.last_mut() {
            Some(last)
                if range.start >= last.start
                    && range.start <= last.end.saturating_add(COALESCE_GAP_BYTES) =>
            {
                last.end = last.end.max(range.end);
            }
            _ => spans.push(range.clone()),
        }
    }
    spans
}

/// An object opened by [`Storage::open_object`]: reads parts of it into
/// memory the caller provides, telling the caller as bytes land so it can
/// verify them while they are in the CPU's cache.
pub struct ObjectReader<'a> {
    storage: &'a Storage,
    key: Path,
    size: u64,
    source: Source,
}

/// Where an [`ObjectReader`]'s bytes come from.
enum Source {
    /// A directory store's file, read with positioned reads.
    File(std::fs::File),
    /// Any other store: ranged GETs whose bodies stream in.
    Remote {
        /// The spans to fetch: the plan, coalesced.
        spans: Vec<Range<u64>>,
        /// The body being streamed, if any.
        body: Option<Body>,
    },
}

/// A ranged GET's body, part-way consumed.
struct Body {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    /// The object offset of the next byte (the first of `pending`).
    position: u64,
    /// The end of the range asked for.
    end: u64,
    /// What is left of the last chunk received.
    pending: Bytes,
}

impl ObjectReader<'_> {
    /// The object's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `out` with the object's bytes from `offset` on, calling
    /// `landed` with the part filled so far each time more has arrived (at
    /// most [`READ_CHUNK_BYTES`] more from a directory; a network chunk from
    /// a remote store). An error from `landed` stops the read and is
    /// returned. Reads from a remote store should ascend, as planned.
    pub fn read_into(
        &mut self,
        offset: u64,
        out: &mut [u8],
        landed: &mut dyn FnMut(&[u8]) -> Result<(), NodeError>,
    ) -> Result<(), NodeError> {
        let failed = |detail: String| NodeError::Storage {
            context: format!("reading {} ({})", self.key, self.storage.description),
            cause: StorageCause::Failed(detail),
        };
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|&end| end <= self.size)
            .ok_or_else(|| {
                failed(format!(
                    "bytes {offset}..+{} lie beyond its {} bytes",
                    out.len(),
                    self.size
                ))
            })?;
        match &mut self.source {
            Source::File(file) => {
                let mut filled = 0;
                while filled < out.len() {
                    let take = (out.len() - filled).min(READ_CHUNK_BYTES);
                    let at = offset + filled as u64;
                    file.read_exact_at(&mut out[filled..filled + take], at)
                        .map_err(|error| {
                            failed(if error.kind() == std::io::ErrorKind::UnexpectedEof {
                                format!(
                                    "it ends before byte {} (cut while read?)",
                                    at + take as u64
                                )
                            } else {
                                error.to_string()
                            })
                        })?;
                    filled += take;
                    landed(&out[..filled])?;
                }
                Ok(())
            }
            Source::Remote { spans, body } => {
                let covers = |body: &Body| body.position <= offset && end <= body.end;
                let body = match body {
                    Some(body) if covers(body) => body,
                    _ => {
                        let span = spans
                            .iter()
                            .find(|span| span.start <= offset && end <= span.end)
                            .cloned()
                            .unwrap_or(offset..end);
                        body.insert(self.storage.get_body(&self.key, span)?)
                    }
                };
                let mut filled = 0;
                // Each pass takes a chunk, skips bytes before `offset`, or
                // copies: at most one pass per byte and one per chunk.
                while filled < out.len() {
                    if body.pending.is_empty() {
                        let chunk = match self.storage.block_on(body.stream.next()) {
                            Some(Ok(chunk)) => chunk,
                            Some(Err(e)) => {
                                return Err(self
                                    .storage
                                    .failed(format!("reading {}", self.key), e));
                            }
                            None => {
                                return Err(failed(format!(
                                    "the body ended at byte {}, before {}",
                                    body.position, body.end
                                )));
                            }
                        };
                        if body.position + chunk.len() as u64 > body.end {
                            return Err(failed(format!(
                                "the body runs past byte {} asked for",
                                body.end
                            )));
                        }
                        body.pending = chunk;
                        continue;
                    }
                    if body.position < offset {
                        let skip = (offset - body.position).min(body.pending.len() as u64);
                        body.pending.advance(skip as usize);
                        body.position += skip;
                        continue;
                    }
                    let take = body.pending.len().min(out.len() - filled);
                    out[filled..filled + take].copy_from_slice(&body.pending[..take]);
                    body.pending.advance(take);
                    body.position += take as u64;
                    filled += take;
                    landed(&out[..filled])?;
                }
                Ok(())
            }
        }
    }
}

impl Storage {
    /// Starts a ranged GET of `span` of an object.
    fn get_body(&self, key: &Path, span: Range<u64>) -> Result<Body, NodeError> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(span.clone())),
            ..GetOptions::default()
        };
        let result = self
            .block_on(self.store.get_opts(key, options))
            .map_err(|e| self.failed(format!("reading {key}"), e))?;
        if result.range != span {
            return Err(NodeError::Storage {
                context: format!("reading {key} ({})", self.description),
                cause: StorageCause::Failed(format!(
                    "asked for bytes {span:?}, the store sent {:?}",
                    result.range
                )),
            });
        }
        Ok(Body {
            stream: result.into_stream(),
            position: span.start,
            end: span.end,
            pending: Bytes::new(),
        })
    }
}

/// A local directory as an object store, with durable puts (see the module
/// documentation). Reads, lists and deletes go to `object_store`'s local file
/// system unchanged.
#[derive(Debug)]
pub struct DurableDir {
    inner: LocalFileSystem,
    root: PathBuf,
}

impl DurableDir {
    /// A store rooted at `root`, which must exist.
    pub fn new(root: &FsPath) -> Result<DurableDir, NodeError> {
        let root = root
            .canonicalize()
            .map_err(|e| NodeError::io(format!("opening storage dir {}", root.display()), e))?;
        let inner = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| NodeError::Config(format!("storage dir {}: {e}", root.display())))?;
        Ok(DurableDir { inner, root })
    }

    fn put_blocking(path: PathBuf, root: PathBuf, payload: PutPayload) -> std::io::Result<()> {
        let parent = path
            .parent()
            .ok_or_else(|| std::io::Error::other("object path has no parent"))?
            .to_path_buf();
        let created = !parent.exists();
        std::fs::create_dir_all(&parent)?;
        // A staging name whose suffix is all digits, which `object_store`'s
        // listing skips.
        let staging = PathBuf::from(format!(
            "{}#{}",
            path.display(),
            rand::random::<u32>() as u64 + 1
        ));
        let result = (|| {
            let mut file = std::fs::File::create(&staging)?;
            for chunk in payload.iter() {
                file.write_all(chunk)?;
            }
            file.sync_all()?;
            drop(file);
            std::fs::rename(&staging, &path)?;
            sync_dir(&parent)?;
            if created {
                // New directories must be durable in their parents too.
                let mut dir = parent.as_path();
                while let Some(up) = dir.parent() {
                    sync_dir(up)?;
                    if up == root {
                        break;
                    }
                    dir = up;
                }
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        result
    }
}

fn sync_dir(dir: &FsPath) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl fmt::Display for DurableDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableDir({})", self.root.display())
    }
}

#[async_trait]
impl ObjectStore for DurableDir {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if !matches!(opts.mode, PutMode::Overwrite) {
            return self.inner.put_opts(location, payload, opts).await;
        }
        let path = self.inner.path_to_filesystem(location)?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || DurableDir::put_blocking(path, root, payload))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "DurableDir",
                source: Box::new(e),
            })?
            .map_err(|e| object_store::Error::Generic {
                store: "DurableDir",
                source: Box::new(e),
            })?;
        Ok(PutResult {
            e_tag: None,
            version: None,
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        // Not used by Pagoda, which writes objects whole.
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the S3 secret key file: one key, whitespace around it
    // ignored; an empty, multi-word, oversized or missing file refused
    // with its name.
    #[test]
    fn reads_secret_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "  abc/DEF+123\n").unwrap();
        assert_eq!(read_secret(&path).unwrap(), "abc/DEF+123");
        for bad in ["", " \n", "two words", "one\ntwo"] {
            std::fs::write(&path, bad).unwrap();
            let error = read_secret(&path).unwrap_err().to_string();
            assert!(
                error.contains("one key and nothing else"),
                "{bad:?}: {error}"
            );
        }
        std::fs::write(&path, "x".repeat(5000)).unwrap();
        let error = read_secret(&path).unwrap_err().to_string();
        assert!(error.contains("larger than 4096 bytes"), "{error}");
        let error = read_secret(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("absent"), "{error}");
    }

    // Guards reads straight into the caller's memory through a store other
    // than a directory: planned ranges come out exact (gaps skipped in the
    // coalesced body, a read outside the plan or behind it fetched on its
    // own), `landed` sees the filled part grow to the whole, and a read
    // past the object's end is an error, not a panic or a short fill.
    #[test]
    fn object_reader_streams_ranges_into_memory() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let storage = Storage::open(&StorageConfig::Custom {
            store,
            description: "memory".into(),
        })
        .unwrap();
        let bytes: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
        let key = Path::from("o");
        storage
            .block_on(storage.put(&key, Bytes::from(bytes.clone())))
            .unwrap();
        assert_eq!(
            coalesce(&[0..100, 200..300, (2 << 20)..(2 << 20) + 100, 10..20]),
            vec![0..300, (2 << 20)..(2 << 20) + 100, 10..20]
        );
        let plan = [0..100, 200..4296, (2 << 20)..(3 << 20)];
        let mut reader = storage.open_object(&key, &plan).unwrap();
        assert_eq!(reader.size(), 3 << 20);
        for range in plan.iter().chain([&(150..160), &(50..60)]) {
            let mut out = vec![0u8; (range.end - range.start) as usize];
            let mut seen = 0;
            reader
                .read_into(range.start, &mut out, &mut |filled| {
                    assert!(filled.len() > seen, "each call lands more");
                    seen = filled.len();
                    Ok(())
                })
                .unwrap();
            assert_eq!(seen, out.len());
            assert!(
                out[..] == bytes[range.start as usize..range.end as usize],
                "{range:?}"
            );
        }
        let mut out = vec![0u8; 10];
        let error = reader
            .read_into((3 << 20) - 5, &mut out, &mut |_| Ok(()))
            .unwrap_err();
        assert!(error.to_string().contains("beyond"), "{error}");
    }

    // Guards the `--storage` parser: each accepted form and the errors.
    #[test]
    fn parses_storage_urls() {
        assert!(matches!(
            StorageConfig::parse("s3://bucket/a/b/").unwrap(),
            StorageConfig::S3 { bucket, prefix, settings }
                if bucket == "bucket" && prefix == "a/b" && settings.is_empty()
        ));
        assert!(matches!(
            StorageConfig::parse("s3://bucket").unwrap(),
            StorageConfig::S3 { prefix, .. } if prefix.is_empty()
        ));
        assert!(matches!(
            StorageConfig::parse("file:///x/y").unwrap(),
            StorageConfig::Dir(path) if path == FsPath::new("/x/y")
        ));
        assert!(matches!(
            StorageConfig::parse("rel/dir").unwrap(),
            StorageConfig::Dir(_)
        ));
        assert!(StorageConfig::parse("s3://").is_err());
        assert!(StorageConfig::parse("gs://bucket").is_err());
        assert!(StorageConfig::parse("").is_err());
    }

    // Guards the durable directory: objects round-trip, listing does not
    // show staging files, and deletes of missing objects are fine.
    #[test]
    fn durable_dir_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageConfig::Dir(dir.path().to_path_buf())).unwrap();
        let key = Path::from("regions/r/data/1");
        storage
            .block_on(storage.put(&key, Bytes::from_static(b"hello")))
            .unwrap();
        // A leftover staging file from a crash is not an object.
        std::fs::write(dir.path().join("regions/r/data/1#12345"), b"junk").unwrap();
        let listed = storage
            .block_on(storage.list(&Path::from("regions/r")))
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].location, key);
        assert_eq!(&storage.block_on(storage.get(&key)).unwrap()[..], b"hello");
        let ranges = storage
            .block_on(storage.get_ranges(&key, &[1..3, 4..5]))
            .unwrap();
        assert_eq!(&ranges[0][..], b"el");
        assert_eq!(&ranges[1][..], b"o");
        storage.block_on(storage.delete(&key)).unwrap();
        storage.block_on(storage.delete(&key)).unwrap();
        // A caller can tell a missing object from a failure by its kind.
        match storage.block_on(storage.get(&key)) {
            Err(NodeError::Storage {
                cause: StorageCause::NotFound,
                ..
            }) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    // Guards the staging-file leak: files a crash left behind are removed
    // when old enough (and under a prefix at any age), objects never are.
    #[test]
    fn leftover_staging_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageConfig::Dir(dir.path().to_path_buf())).unwrap();
        let key = Path::from("regions/r/data/1.obj");
        storage
            .block_on(storage.put(&key, Bytes::from_static(b"object")))
            .unwrap();
        let old = dir.path().join("regions/r/data/1.obj#4242");
        std::fs::write(&old, vec![7u8; 1000]).unwrap();
        let ancient = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(ancient)
            .unwrap();
        let young = dir.path().join("regions/s/manifests/2.manifest#7");
        std::fs::create_dir_all(young.parent().unwrap()).unwrap();
        std::fs::write(&young, b"in flight").unwrap();
        let not_staging = dir.path().join("regions/r/data/notes#x1");
        std::fs::write(&not_staging, b"keep").unwrap();

        let report = storage
            .remove_staging(&Path::default(), STAGING_AGE_MIN)
            .unwrap();
        assert_eq!(
            report,
            StagingReport {
                files: 1,
                bytes: 1000
            }
        );
        assert!(!old.exists() && young.exists() && not_staging.exists());
        let report = storage
            .remove_staging(&Path::from("regions/s"), Duration::ZERO)
            .unwrap();
        assert_eq!(report.files, 1);
        assert!(!young.exists());
        // Under a prefix that object_store encodes (`%` in a region's key).
        let odd = crate::checkpoint::region_prefix("a b");
        let object = odd.child("data").child("1.obj");
        storage
            .block_on(storage.put(&object, Bytes::from_static(b"x")))
            .unwrap();
        let on_disk = storage
            .dir
            .as_ref()
            .unwrap()
            .inner
            .path_to_filesystem(&object)
            .unwrap();
        let staging = PathBuf::from(format!("{}#99", on_disk.display()));
        std::fs::write(&staging, b"left").unwrap();
        assert_eq!(
            storage.remove_staging(&odd, Duration::ZERO).unwrap().files,
            1
        );
        assert!(!staging.exists() && on_disk.exists());
        assert_eq!(&storage.block_on(storage.get(&key)).unwrap()[..], b"object");
        assert!(is_staging("a#1") && !is_staging("#1") && !is_staging("a#") && !is_staging("a"));
    }
}
