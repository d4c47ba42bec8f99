//! Who may do what on this node.
//!
//! - **Credentials** (`Credential`): a name, a salt and a stored key (see
//!   `pagoda_wire::auth`; never the token), and grants of a right (read,
//!   write, admin; each implies the ones before it) on a region pattern (an
//!   exact name, a prefix ending in `*`, or `*`). They live in
//!   `<data dir>/credentials` (format below), managed by `pagoda token`,
//!   and the node re-reads the file when it changes, so a credential created
//!   or revoked while the node runs counts from the next handshake, and a
//!   revoked credential's open connections are refused at their next
//!   request. The `--token-file` shared token is the credential `default`
//!   with admin on `*`, kept in memory only.
//! - **Sessions** (`Session`): one per connection. It runs the node's side of
//!   the challenge-response handshake, then checks every request against the
//!   credential's rights before dispatch, caching the decision per region id.
//! - **Writer roles** (`WriterRoles`): at most one connection per region may
//!   write it. Opening a region for writing takes the role; it is given back
//!   when the connection closes the region (its last write open) or ends, or
//!   taken over by another writer once its holder has been silent for the
//!   writer lease.
//!
//! A node with no `--token-file` and no credentials file is *open*: it
//! accepts any `Hello` (it may listen on loopback only), and its connections
//! have every right. Once a credentials file exists, even an empty one, the
//! node requires a credential.
//!
//! # The credentials file
//!
//! ```text
//! offset size field
//!  0     8    magic     "PGDACRD1"
//!  8     4    length    of the body
//! 12     4    checksum  crc32c of the body
//! 16     n    body      JSON: {"credentials": [{"name", "salt" (hex, 16 bytes),
//!                       "stored_key" (hex, 32 bytes), "grants": ["PATTERN=RIGHT", ...]}]}
//! ```
//!
//! It is written whole to `credentials.tmp`, fsynced, renamed over
//! `credentials`, and the directory fsynced; writers take `flock` on
//! `credentials.lock` around a read-modify-write. It is read with a bound
//! (`CREDENTIALS_FILE_BYTES_MAX`); a file that fails its magic, length,
//! checksum or validation stops the node from starting, and if it turns bad
//! while the node runs, new handshakes are refused until it is fixed.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pagoda_wire::auth::{self, KEY_BYTES, Key, SALT_BYTES};
use pagoda_wire::limits::{
    BATCH_BYTES_MAX, BATCH_PAGES_MAX, CREDENTIAL_NAME_BYTES_MAX, REGION_NAME_BYTES_MAX,
};
use pagoda_wire::{ErrorCode, OpenMode, Request, Response, VERSION};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::NodeError;
use crate::node::Shared;
use crate::region::Region;

pub use pagoda_wire::auth::generate_token;

/// The credentials file's name in the data dir.
pub const CREDENTIALS_FILE_NAME: &str = "credentials";
const CREDENTIALS_LOCK_FILE_NAME: &str = "credentials.lock";
const CREDENTIALS_MAGIC: &[u8; 8] = b"PGDACRD1";
/// Largest credentials file the node reads.
pub const CREDENTIALS_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Most credentials one node holds.
pub const CREDENTIALS_MAX: usize = 1024;
/// Most grants one credential holds.
pub const GRANTS_PER_CREDENTIAL_MAX: usize = 64;
/// The name of the credential the `--token-file` token stands for, and the
/// name a client sends when it is given only a token.
pub const DEFAULT_CREDENTIAL: &str = "default";
/// How long a failed handshake waits before it is answered (and closed).
pub const FAILED_HANDSHAKE_DELAY: Duration = Duration::from_millis(200);
/// How often, at most, a serving connection checks whether the credentials
/// file changed (a handshake always checks).
const CREDENTIALS_RECHECK_MS: u64 = 1000;

// ---------------------------------------------------------------------------
// Rights and grants.

/// What a credential may do with a region. Each right implies the ones
/// before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Right {
    /// Open, stat and read a region, see it listed, follow its recovery.
    Read,
    /// Read, and open for writing and write.
    Write,
    /// Write, and create, delete, checkpoint, recover, freeze, and list a
    /// region's dirty pages.
    Admin,
}

impl Right {
    /// The right's name, as `pagoda token` writes it.
    pub fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Admin => "admin",
        }
    }

    /// Parses `read`, `write` or `admin`.
    pub fn parse(text: &str) -> Option<Right> {
        match text {
            "read" => Some(Right::Read),
            "write" => Some(Right::Write),
            "admin" => Some(Right::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A right on the regions a pattern names: an exact name, a prefix ending
/// in `*`, or `*` for every region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pattern: String,
    right: Right,
}

impl Grant {
    /// A grant, if the pattern is valid: 1 to 255 bytes, with `*` only as
    /// its last character.
    pub fn new(pattern: &str, right: Right) -> Result<Grant, String> {
        if pattern.is_empty() || pattern.len() > REGION_NAME_BYTES_MAX {
            return Err(format!(
                "region pattern {pattern:?} must be 1 to {REGION_NAME_BYTES_MAX} bytes"
            ));
        }
        if pattern[..pattern.len() - 1].contains('*') {
            return Err(format!(
                "region pattern {pattern:?} may hold `*` only at its end (a prefix), or be `*`"
            ));
        }
        Ok(Grant {
            pattern: pattern.to_owned(),
            right,
        })
    }

    /// Parses `PATTERN=RIGHT`, like `logs-*=read`.
    pub fn parse(text: &str) -> Result<Grant, String> {
        let Some((pattern, right)) = text.rsplit_once('=') else {
            return Err(format!(
                "grant {text:?} is not PATTERN=RIGHT (like 'logs-*=read' or '*=admin')"
            ));
        };
        let right = Right::parse(right).ok_or_else(|| {
            format!("grant {text:?}: right {right:?} is not read, write or admin")
        })?;
        Grant::new(pattern, right)
    }

    /// The region pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The right granted.
    pub fn right(&self) -> Right {
        self.right
    }

    /// Whether the pattern names `region`.
    pub fn matches(&self, region: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => region.starts_with(prefix),
            None => region == self.pattern,
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.pattern, self.right)
    }
}

/// Checks a credential name: 1 to 64 bytes of ASCII letters, digits, `.`,
/// `_` and `-`.
pub fn validate_credential_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= CREDENTIAL_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "credential name {name:?} must be 1 to {CREDENTIAL_NAME_BYTES_MAX} ASCII letters, \
             digits, '.', '_' or '-'"
        ))
    }
}

// ---------------------------------------------------------------------------
// Credentials.

/// A named credential: what the node needs to check a proof of its token,
/// and its grants. Holds no secret: the stored key cannot be used to log in
/// without a proof captured from a real client (which TLS prevents).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    name: String,
    salt: [u8; SALT_BYTES],
    stored_key: Key,
    grants: Vec<Grant>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("grants", &self.grants)
            .finish()
    }
}

impl Credential {
    /// A credential for `token` under a fresh salt.
    pub fn new(name: &str, token: &[u8], grants: Vec<Grant>) -> Result<Credential, String> {
        validate_credential_name(name)?;
        if token.is_empty() {
            return Err("a token must not be empty".into());
        }
        if grants.len() > GRANTS_PER_CREDENTIAL_MAX {
            return Err(format!(
                "a credential holds at most {GRANTS_PER_CREDENTIAL_MAX} grants"
            ));
        }
        let salt = auth::random_salt();
        Ok(Credential {
            name: name.to_owned(),
            salt,
            stored_key: auth::derive_stored_key(token, &salt),
            grants,
        })
    }

    /// The credential's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its grants.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// The strongest right any grant gives on `region`.
    pub fn right_on(&self, region: &str) -> Option<Right> {
        self.grants
            .iter()
            .filter(|grant| grant.matches(region))
            .map(|grant| grant.right)
            .max()
    }

    /// Whether the credential may read every region (a grant on `*`).
    fn reads_everything(&self) -> bool {
        self.grants.iter().any(|grant| grant.pattern == "*")
    }
}

#[derive(Serialize, Deserialize)]
struct PersistedFile {
    credentials: Vec<PersistedCredential>,
}

#[derive(Serialize, Deserialize)]
struct PersistedCredential {
    name: String,
    salt: String,
    stored_key: String,
    grants: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(out)
}

fn credentials_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CREDENTIALS_FILE_NAME)
}

/// Reads the credentials file of `data_dir`: `None` if there is none. A
/// file that is too large, torn, corrupt or invalid is an error naming it.
pub fn read_credentials(data_dir: &Path) -> Result<Option<Vec<Credential>>, NodeError> {
    let path = credentials_path(data_dir);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(NodeError::io(format!("opening {}", path.display()), error)),
    };
    let corrupt = |detail: String| NodeError::Corrupt {
        path: path.display().to_string(),
        detail,
    };
    let mut bytes = Vec::new();
    file.take(CREDENTIALS_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| NodeError::io(format!("reading {}", path.display()), e))?;
    if bytes.len() as u64 > CREDENTIALS_FILE_BYTES_MAX {
        return Err(corrupt(format!(
            "file exceeds the limit of {CREDENTIALS_FILE_BYTES_MAX} bytes"
        )));
    }
    if bytes.len() < 16 || &bytes[..8] != CREDENTIALS_MAGIC {
        return Err(corrupt(
            "not a Pagoda credentials file (bad magic or too short)".into(),
        ));
    }
    let length = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let checksum = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    let body = &bytes[16..];
    if body.len() != length {
        return Err(corrupt(
            "length does not match the file (truncated?)".into(),
        ));
    }
    if crc32c::crc32c(body) != checksum {
        return Err(corrupt("checksum mismatch".into()));
    }
    let persisted: PersistedFile =
        serde_json::from_slice(body).map_err(|e| corrupt(format!("invalid body: {e}")))?;
    if persisted.credentials.len() > CREDENTIALS_MAX {
        return Err(corrupt(format!(
            "{} credentials exceed the limit of {CREDENTIALS_MAX}",
            persisted.credentials.len()
        )));
    }
    let mut credentials: Vec<Credential> = Vec::with_capacity(persisted.credentials.len());
    for entry in persisted.credentials {
        validate_credential_name(&entry.name).map_err(corrupt)?;
        if credentials.iter().any(|c| c.name == entry.name) {
            return Err(corrupt(format!(
                "credential {:?} appears twice",
                entry.name
            )));
        }
        let salt = unhex::<SALT_BYTES>(&entry.salt)
            .ok_or_else(|| corrupt(format!("credential {:?}: invalid salt", entry.name)))?;
        let stored_key = unhex::<KEY_BYTES>(&entry.stored_key)
            .ok_or_else(|| corrupt(format!("credential {:?}: invalid stored key", entry.name)))?;
        if entry.grants.len() > GRANTS_PER_CREDENTIAL_MAX {
            return Err(corrupt(format!(
                "credential {:?} has more than {GRANTS_PER_CREDENTIAL_MAX} grants",
                entry.name
            )));
        }
        let grants = entry
            .grants
            .iter()
            .map(|text| Grant::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(format!("credential {:?}: {e}", entry.name)))?;
        credentials.push(Credential {
            name: entry.name,
            salt,
            stored_key,
            grants,
        });
    }
    Ok(Some(credentials))
}

/// Replaces the credentials file of `data_dir` atomically (write, fsync,
/// rename, fsync the directory).
pub fn write_credentials(data_dir: &Path, credentials: &[Credential]) -> Result<(), NodeError> {
    assert!(
        credentials.len() <= CREDENTIALS_MAX,
        "callers refuse more credentials than the limit"
    );
    let persisted = PersistedFile {
        credentials: credentials
            .iter()
            .map(|c| PersistedCredential {
                name: c.name.clone(),
                salt: hex(&c.salt),
                stored_key: hex(&c.stored_key),
                grants: c.grants.iter().map(Grant::to_string).collect(),
            })
            .collect(),
    };
    let body = serde_json::to_vec(&persisted).expect("credentials serialize");
    let mut bytes = Vec::with_capacity(16 + body.len());
    bytes.extend_from_slice(CREDENTIALS_MAGIC);
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    assert!(
        bytes.len() as u64 <= CREDENTIALS_FILE_BYTES_MAX,
        "bounded credentials fit the file limit"
    );

    let temporary = data_dir.join(format!("{CREDENTIALS_FILE_NAME}.tmp"));
    let path = credentials_path(data_dir);
    let context = |what: &str| format!("{what} {}", temporary.display());
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|e| NodeError::io(context("creating"), e))?;
        file.write_all(&bytes)
            .map_err(|e| NodeError::io(context("writing"), e))?;
        file.sync_all()
            .map_err(|e| NodeError::io(context("syncing"), e))?;
    }
    fs::rename(&temporary, &path)
        .map_err(|e| NodeError::io(format!("renaming over {}", path.display()), e))?;
    File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| NodeError::io(format!("syncing dir {}", data_dir.display()), e))?;
    Ok(())
}

/// Reads, changes and writes back the credentials of `data_dir` under an
/// exclusive lock, so that two `pagoda token` commands never lose each
/// other's change. `change` sees the current list (empty if there is no
/// file) and may refuse with a message; nothing is written then.
pub fn edit_credentials<T>(
    data_dir: &Path,
    change: impl FnOnce(&mut Vec<Credential>) -> Result<T, String>,
) -> Result<T, NodeError> {
    if !data_dir.is_dir() {
        return Err(NodeError::Config(format!(
            "data dir {} does not exist (create it, or start the node on it once)",
            data_dir.display()
        )));
    }
    let lock_path = data_dir.join(CREDENTIALS_LOCK_FILE_NAME);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| NodeError::io(format!("opening {}", lock_path.display()), e))?;
    // SAFETY: flock on a file descriptor we own; released when it closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(NodeError::io(
            format!("locking {}", lock_path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    let mut credentials = read_credentials(data_dir)?.unwrap_or_default();
    let result = change(&mut credentials).map_err(NodeError::InvalidArgument)?;
    if credentials.len() > CREDENTIALS_MAX {
        return Err(NodeError::InvalidArgument(format!(
            "a node holds at most {CREDENTIALS_MAX} credentials"
        )));
    }
    write_credentials(data_dir, &credentials)?;
    drop(lock);
    Ok(result)
}

// ---------------------------------------------------------------------------
// The node's view of its credentials.

/// What identifies a version of the credentials file: every change replaces
/// it by rename, so its inode changes; length and mtime catch an edit in
/// place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    length: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let metadata = fs::metadata(path).ok()?;
        Some(FileStamp {
            inode: metadata.ino(),
            length: metadata.len(),
            mtime_ns: metadata.mtime() as i128 * 1_000_000_000 + metadata.mtime_nsec() as i128,
        })
    }
}

/// One loaded version of the node's credentials.
struct Snapshot {
    credentials: HashMap<String, Arc<Credential>>,
    /// Whether a credential is required (a token is configured or the file
    /// exists).
    required: bool,
    /// Why the file could not be read, if it went bad after start.
    broken: Option<String>,
}

/// What the handshake finds for a credential name.
enum Lookup {
    Found(Arc<Credential>),
    Unknown,
}

/// The node's credentials: the configured token's and the file's, reloaded
/// when the file changes.
pub(crate) struct CredentialStore {
    data_dir: PathBuf,
    configured: Option<Arc<Credential>>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Bumped whenever a reload changes what the node accepts; sessions
    /// compare it on every request.
    generation: AtomicU64,
    /// When the file was last checked, in ms since `epoch`.
    checked_ms: AtomicU64,
    /// The file version loaded; its lock serializes reloads.
    stamp: Mutex<Option<FileStamp>>,
    /// A per-start secret behind the salts invented for unknown names.
    secret: [u8; 32],
    epoch: Instant,
}

impl CredentialStore {
    /// Loads the credentials at start; a corrupt file is refused.
    pub(crate) fn open(
        data_dir: &Path,
        token: Option<&[u8]>,
    ) -> Result<CredentialStore, NodeError> {
        let configured = match token {
            Some(token) => Some(Arc::new(
                Credential::new(
                    DEFAULT_CREDENTIAL,
                    token,
                    vec![Grant::new("*", Right::Admin).expect("valid pattern")],
                )
                .map_err(NodeError::Config)?,
            )),
            None => None,
        };
        let path = credentials_path(data_dir);
        let stamp = FileStamp::of(&path);
        let loaded = read_credentials(data_dir)?;
        let store = CredentialStore {
            data_dir: data_dir.to_path_buf(),
            snapshot: RwLock::new(Arc::new(Snapshot {
                credentials: HashMap::new(),
                required: true,
                broken: None,
            })),
            configured,
            generation: AtomicU64::new(0),
            checked_ms: AtomicU64::new(0),
            stamp: Mutex::new(stamp),
            secret: auth::random_nonce(),
            epoch: Instant::now(),
        };
        *store.snapshot.write() = Arc::new(store.snapshot_of(loaded, false));
        Ok(store)
    }

    /// A snapshot of `loaded` (`None`: no file). A node that has required
    /// credentials goes on requiring them (`was_required`): a file deleted
    /// while it runs leaves it accepting no credential, never open.
    fn snapshot_of(&self, loaded: Option<Vec<Credential>>, was_required: bool) -> Snapshot {
        let required = was_required || self.configured.is_some() || loaded.is_some();
        let mut credentials: HashMap<String, Arc<Credential>> = loaded
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.name.clone(), Arc::new(c)))
            .collect();
        if let Some(configured) = &self.configured
            && credentials
                .insert(DEFAULT_CREDENTIAL.to_owned(), configured.clone())
                .is_some()
        {
            tracing::warn!(
                "the credentials file holds a credential named {DEFAULT_CREDENTIAL:?}; \
                 the --token-file token stands for that name and takes precedence"
            );
        }
        Snapshot {
            credentials,
            required,
            broken: None,
        }
    }

    /// Whether clients must authenticate.
    pub(crate) fn required(&self) -> bool {
        self.snapshot.read().required
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().clone()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads the file if it changed. With `force` it always checks (a
    /// handshake); otherwise at most once per `CREDENTIALS_RECHECK_MS`
    /// across the node, so the check costs a serving connection a
    /// comparison (`now` is the clock read it makes anyway).
    fn refresh(&self, force: bool, now: Instant) {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let last = self.checked_ms.load(Ordering::Relaxed);
        if !force
            && (now_ms < last + CREDENTIALS_RECHECK_MS
                || self
                    .checked_ms
                    .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err())
        {
            return;
        }
        self.checked_ms.store(now_ms, Ordering::Relaxed);
        let mut stamp = self.stamp.lock();
        let current = FileStamp::of(&credentials_path(&self.data_dir));
        if *stamp == current {
            return;
        }
        match read_credentials(&self.data_dir) {
            Ok(loaded) => {
                let count = loaded.as_ref().map_or(0, Vec::len);
                if loaded.is_none() && self.required() {
                    tracing::warn!(
                        "the credentials file was removed; no credential is accepted until it \
                         is back (the node stays closed)"
                    );
                }
                let was_required = self.required();
                *self.snapshot.write() = Arc::new(self.snapshot_of(loaded, was_required));
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(credentials = count, "credentials reloaded");
            }
            Err(error) => {
                // Keep what was accepted so far for connections already
                // authenticated, but refuse new handshakes until the file is
                // fixed: a damaged file must not open the node.
                tracing::error!(%error, "credentials file unreadable; refusing new handshakes");
                let previous = self.snapshot();
                *self.snapshot.write() = Arc::new(Snapshot {
                    credentials: previous.credentials.clone(),
                    required: true,
                    broken: Some(error.to_string()),
                });
            }
        }
        *stamp = current;
    }

    fn lookup(&self, name: &str) -> Lookup {
        match self.snapshot().credentials.get(name) {
            Some(credential) => Lookup::Found(credential.clone()),
            None => Lookup::Unknown,
        }
    }

    /// A salt for a name with no credential, the same for every handshake
    /// of this node's run, so that a challenge does not tell whether a name
    /// exists.
    fn invented_salt(&self, name: &str) -> [u8; SALT_BYTES] {
        let digest = Sha256::new()
            .chain_update(self.secret)
            .chain_update(name.as_bytes())
            .finalize();
        digest[..SALT_BYTES].try_into().unwrap()
    }
}

// ---------------------------------------------------------------------------
// Writer roles.

/// A connection, as the writer role table knows it.
pub(crate) struct Holder {
    connection: u64,
    who: Mutex<String>,
    /// When the connection last sent a request, in ms since the table's
    /// epoch.
    last_active_ms: AtomicU64,
}

/// One connection's hold on one region's writer role.
pub(crate) struct Role {
    holder: Arc<Holder>,
    /// The writer epoch the role was granted under.
    epoch: u64,
    /// Cleared when the role is released or taken over.
    valid: AtomicBool,
}

/// Which connection holds each region's writer role, by region id.
pub(crate) struct WriterRoles {
    roles: Mutex<HashMap<u64, Arc<Role>>>,
    lease: Duration,
    epoch: Instant,
}

impl WriterRoles {
    pub(crate) fn new(lease: Duration) -> WriterRoles {
        WriterRoles {
            roles: Mutex::new(HashMap::new()),
            lease,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Takes region `id`'s writer role for `holder` under `epoch`, or says
    /// who has it. `resume`: the holder claimed the current epoch (it is the
    /// same writer, back on a new connection), so a holder under that epoch
    /// is replaced without waiting for its lease.
    fn acquire(
        &self,
        id: u64,
        name: &str,
        holder: &Arc<Holder>,
        epoch: u64,
        resume: bool,
    ) -> Result<Arc<Role>, String> {
        let mut roles = self.roles.lock();
        if let Some(existing) = roles.get(&id)
            && existing.valid.load(Ordering::Acquire)
        {
            if existing.holder.connection == holder.connection {
                return Ok(existing.clone());
            }
            if resume && existing.epoch == epoch {
                existing.valid.store(false, Ordering::Release);
                tracing::info!(
                    region = name,
                    epoch,
                    "writer resumed its epoch on a new connection"
                );
                let role = Arc::new(Role {
                    holder: holder.clone(),
                    epoch,
                    valid: AtomicBool::new(true),
                });
                roles.insert(id, role.clone());
                return Ok(role);
            }
            let idle_ms = self
                .now_ms()
                .saturating_sub(existing.holder.last_active_ms.load(Ordering::Relaxed));
            let who = existing.holder.who.lock().clone();
            if idle_ms < self.lease.as_millis() as u64 {
                return Err(format!(
                    "region {name:?} is open for writing by {who} (last request {idle_ms} ms ago); \
                     one writer at a time: it must close the region or disconnect first \
                     (or stay silent for the writer lease of {} s)",
                    self.lease.as_secs()
                ));
            }
            existing.valid.store(false, Ordering::Release);
            tracing::warn!(
                region = name,
                previous = %who,
                idle_ms,
                "writer role taken over from a holder silent beyond the lease"
            );
        }
        let role = Arc::new(Role {
            holder: holder.clone(),
            epoch,
            valid: AtomicBool::new(true),
        });
        roles.insert(id, role.clone());
        Ok(role)
    }

    fn release(&self, id: u64, role: &Arc<Role>) {
        role.valid.store(false, Ordering::Release);
        let mut roles = self.roles.lock();
        if roles.get(&id).is_some_and(|held| Arc::ptr_eq(held, role)) {
            roles.remove(&id);
        }
    }

    /// Who holds region `id`'s role now, if anyone.
    fn holder_of(&self, id: u64) -> Option<String> {
        let roles = self.roles.lock();
        let role = roles.get(&id)?;
        role.valid
            .load(Ordering::Acquire)
            .then(|| role.holder.who.lock().clone())
    }
}

// ---------------------------------------------------------------------------
// Sessions.

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Who a connection is, once authenticated.
enum Principal {
    /// A connection to an open node (no credentials configured): every
    /// right.
    Anonymous,
    /// A credential.
    Credential(Arc<Credential>),
}

enum State {
    AwaitHello,
    AwaitProof {
        credential_name: String,
        client_name: String,
        credential: Option<Arc<Credential>>,
        auth_message: Vec<u8>,
    },
    Authenticated(Principal),
}

/// What `Session::admit` decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Serve the request.
    Dispatch,
    /// The reply is written; the connection goes on.
    Replied,
    /// An error reply is written; close the connection.
    Close,
}

/// A region's writer role as one connection holds it: how many write opens
/// it has given out.
struct HeldRole {
    opens: u32,
    role: Arc<Role>,
}

/// One connection's authentication and rights.
pub(crate) struct Session {
    shared: Arc<Shared>,
    state: State,
    holder: Arc<Holder>,
    /// The store generation the cached decisions were made under.
    generation: u64,
    /// The credential's right per region id (regions never change name, and
    /// ids are never reused).
    rights: HashMap<u64, Option<Right>>,
    /// The writer roles this connection holds, by region id.
    roles: HashMap<u64, HeldRole>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for (id, held) in self.roles.drain() {
            self.shared.writers.release(id, &held.role);
        }
    }
}

fn error_reply(
    shared: &Shared,
    out: &mut Vec<u8>,
    request_id: u64,
    code: ErrorCode,
    message: &str,
) {
    crate::metrics::count_error(shared, code);
    Response::Error { code, message }.encode(out, request_id, 0);
}

fn hello_ok(out: &mut Vec<u8>, request_id: u64) {
    Response::HelloOk {
        version: VERSION,
        batch_bytes_max: BATCH_BYTES_MAX as u32,
        batch_pages_max: BATCH_PAGES_MAX as u32,
    }
    .encode(out, request_id, 0);
}

impl Session {
    pub(crate) fn new(shared: &Arc<Shared>) -> Session {
        let connection = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        Session {
            shared: shared.clone(),
            state: State::AwaitHello,
            holder: Arc::new(Holder {
                connection,
                who: Mutex::new(format!("connection {connection}")),
                last_active_ms: AtomicU64::new(shared.writers.now_ms()),
            }),
            generation: 0,
            rights: HashMap::new(),
            roles: HashMap::new(),
        }
    }

    /// Whether the handshake is complete.
    pub(crate) fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated(_))
    }

    /// Runs the handshake (`Hello`, `AuthProof`) and checks every other
    /// request against the connection's rights and writer roles, answering
    /// what it refuses (and `CloseRegion`, and `ListRegions` for a
    /// credential that may not read every region) itself.
    pub(crate) fn admit(
        &mut self,
        request: &Request<'_>,
        request_id: u64,
        out: &mut Vec<u8>,
    ) -> Outcome {
        match (&self.state, request) {
            (State::AwaitHello, Request::Hello { .. }) => self.hello(request, request_id, out),
            (State::AwaitProof { .. }, Request::AuthProof { proof }) => {
                self.proof(proof, request_id, out)
            }
            (State::Authenticated(_), _) => self.check(request, request_id, out),
            (State::AwaitHello, _) => {
                error_reply(
                    &self.shared,
                    out,
                    request_id,
                    ErrorCode::NotAuthenticated,
                    "the first request on a connection must be Hello",
                );
                Outcome::Close
            }
            (State::AwaitProof { .. }, _) => {
                error_reply(
                    &self.shared,
                    out,
                    request_id,
                    ErrorCode::NotAuthenticated,
                    "the node sent a challenge: the next request must be AuthProof",
                );
                Outcome::Close
            }
        }
    }

    /// Refuses the handshake: `Unauthorized` with `reason`, and a
    /// rate-limited warning that may say more (`logged`: which of an unknown
    /// name or a wrong token, which the client is not told).
    fn refuse_handshake(
        &mut self,
        out: &mut Vec<u8>,
        request_id: u64,
        client_name: &str,
        credential: &str,
        reason: &str,
        logged: &str,
    ) -> Outcome {
        if self.shared.failed_handshakes_log.allow() {
            tracing::warn!(client_name, credential, "authentication failed: {logged}");
        }
        // A refusal is answered only after a pause, on this connection's own
        // thread: a client guessing or flooding failed handshakes gets a few
        // a second per connection, not thousands, and the connections it may
        // hold while authenticating are bounded (`handshakes_max`).
        std::thread::sleep(FAILED_HANDSHAKE_DELAY);
        let message = if credential.is_empty() {
            "this node requires a credential and none was given".to_owned()
        } else {
            format!("authentication as credential {credential:?} failed: {reason}")
        };
        error_reply(
            &self.shared,
            out,
            request_id,
            ErrorCode::Unauthorized,
            &message,
        );
        Outcome::Close
    }

    fn hello(&mut self, request: &Request<'_>, request_id: u64, out: &mut Vec<u8>) -> Outcome {
        let Request::Hello {
            client_name,
            credential,
            client_nonce,
        } = *request
        else {
            unreachable!("admit passes only Hello here");
        };
        let store = &self.shared.credentials;
        store.refresh(true, Instant::now());
        let snapshot = store.snapshot();
        if !snapshot.required {
            self.authenticated(Principal::Anonymous, client_name, "");
            hello_ok(out, request_id);
            return Outcome::Replied;
        }
        if let Some(reason) = &snapshot.broken {
            let reason = format!("the node's credentials file is unreadable ({reason})");
            return self.refuse_handshake(
                out,
                request_id,
                client_name,
                credential,
                &reason,
                &reason,
            );
        }
        if credential.is_empty() {
            return self.refuse_handshake(
                out,
                request_id,
                client_name,
                credential,
                "no credential given",
                "no credential given",
            );
        }
        // An unknown name gets a challenge like any other, and fails at the
        // proof: the answer to Hello does not tell which names exist.
        let (salt, found) = match store.lookup(credential) {
            Lookup::Found(found) => (found.salt, Some(found)),
            Lookup::Unknown => (store.invented_salt(credential), None),
        };
        let node_nonce = auth::random_nonce();
        self.state = State::AwaitProof {
            credential_name: credential.to_owned(),
            client_name: client_name.to_owned(),
            credential: found,
            auth_message: auth::auth_message(&client_nonce, &node_nonce, credential, client_name),
        };
        Response::AuthChallenge {
            salt: &salt,
            node_nonce,
        }
        .encode(out, request_id, 0);
        Outcome::Replied
    }

    fn proof(&mut self, proof: &Key, request_id: u64, out: &mut Vec<u8>) -> Outcome {
        let State::AwaitProof {
            credential_name,
            client_name,
            credential,
            auth_message,
        } = std::mem::replace(&mut self.state, State::AwaitHello)
        else {
            unreachable!("admit passes only AuthProof after a challenge here");
        };
        // An unknown name's proof is checked too (against a key nobody
        // has), so that the time taken does not tell names apart either.
        let stored = credential
            .as_ref()
            .map_or([0u8; KEY_BYTES], |c| c.stored_key);
        let verified = auth::verify_proof(&stored, &auth_message, proof) && credential.is_some();
        match credential {
            Some(credential) if verified => {
                self.authenticated(
                    Principal::Credential(credential),
                    &client_name,
                    &credential_name,
                );
                hello_ok(out, request_id);
                Outcome::Replied
            }
            found => {
                let logged = if found.is_some() {
                    "wrong token"
                } else {
                    "no such credential"
                };
                self.refuse_handshake(
                    out,
                    request_id,
                    &client_name,
                    &credential_name,
                    "unknown credential or wrong token",
                    logged,
                )
            }
        }
    }

    fn authenticated(&mut self, principal: Principal, client_name: &str, credential: &str) {
        *self.holder.who.lock() = if credential.is_empty() {
            format!(
                "client {client_name:?} (connection {})",
                self.holder.connection
            )
        } else {
            format!(
                "client {client_name:?} with credential {credential:?} (connection {})",
                self.holder.connection
            )
        };
        self.generation = self.shared.credentials.generation();
        self.state = State::Authenticated(principal);
    }

    fn principal(&self) -> &Principal {
        match &self.state {
            State::Authenticated(principal) => principal,
            _ => unreachable!("checked only after authentication"),
        }
    }

    /// Re-resolves the credential after the store changed: refused if it was
    /// revoked or replaced, or if the node now requires credentials of an
    /// anonymous connection.
    fn revalidate(&mut self) -> Result<(), String> {
        let store = &self.shared.credentials;
        self.generation = store.generation();
        self.rights.clear();
        let renewed = match self.principal() {
            Principal::Anonymous => {
                if store.required() {
                    return Err(
                        "this node now requires a credential; reconnect with one".to_owned()
                    );
                }
                return Ok(());
            }
            Principal::Credential(old) => match store.lookup(&old.name) {
                Lookup::Found(new) if new.stored_key == old.stored_key => new,
                Lookup::Found(_) => {
                    return Err(format!(
                        "credential {:?} was replaced; reconnect with its new token",
                        old.name
                    ));
                }
                Lookup::Unknown => {
                    return Err(format!("credential {:?} has been revoked", old.name));
                }
            },
        };
        self.state = State::Authenticated(Principal::Credential(renewed));
        Ok(())
    }

    fn right_on_name(&self, name: &str) -> Option<Right> {
        match self.principal() {
            Principal::Anonymous => Some(Right::Admin),
            Principal::Credential(credential) => credential.right_on(name),
        }
    }

    /// The right on region `id`, and its name; `None` if there is no such
    /// region (the request is then dispatched to be refused as usual).
    fn right_on_id(&mut self, id: u64) -> Option<(Option<Right>, Option<String>)> {
        if let Some(right) = self.rights.get(&id) {
            return Some((*right, None));
        }
        let region = self.shared.catalog.by_id(id).ok()?;
        let name = region.info().name.clone();
        let right = self.right_on_name(&name);
        self.rights.insert(id, right);
        Some((right, Some(name)))
    }

    fn forbidden(&self, name: &str, needed: Right, has: Option<Right>) -> String {
        let credential = match self.principal() {
            Principal::Anonymous => "(none)",
            Principal::Credential(credential) => credential.name.as_str(),
        };
        format!(
            "credential {credential:?} lacks the {needed} right on region {name:?} \
             (it has {})",
            has.map_or("no right", Right::name)
        )
    }

    fn region_name(&self, id: u64) -> String {
        self.shared
            .catalog
            .by_id(id)
            .map_or_else(|_| format!("#{id}"), |region| region.info().name.clone())
    }

    fn check(&mut self, request: &Request<'_>, request_id: u64, out: &mut Vec<u8>) -> Outcome {
        // One clock read per request: it renews the writer lease and paces
        // the check of the credentials file.
        let now = Instant::now();
        self.holder
            .last_active_ms
            .store(self.shared.writers.ms_at(now), Ordering::Relaxed);
        self.shared.credentials.refresh(false, now);
        if self.shared.credentials.generation() != self.generation
            && let Err(message) = self.revalidate()
        {
            tracing::info!(who = %self.holder.who.lock(), "{message}; connection closed");
            error_reply(
                &self.shared,
                out,
                request_id,
                ErrorCode::Unauthorized,
                &message,
            );
            return Outcome::Close;
        }
        let shared = self.shared.clone();
        let refuse = |out: &mut Vec<u8>, code: ErrorCode, message: &str| {
            error_reply(&shared, out, request_id, code, message);
            Outcome::Replied
        };
        let (needed, name) = match request {
            Request::Hello { .. } | Request::AuthProof { .. } => {
                return refuse(
                    out,
                    ErrorCode::InvalidArgument,
                    "the connection is authenticated already",
                );
            }
            Request::Ping { .. } | Request::NodeStat | Request::LocalSocket => {
                return Outcome::Dispatch;
            }
            Request::CloseRegion { region } => {
                self.close_one(*region);
                Response::Done.encode(out, request_id, 0);
                return Outcome::Replied;
            }
            Request::ListRegions => {
                let filtered = match self.principal() {
                    Principal::Anonymous => None,
                    Principal::Credential(c) if c.reads_everything() => None,
                    Principal::Credential(c) => Some(
                        self.shared
                            .catalog
                            .list()
                            .into_iter()
                            .filter(|info| c.right_on(&info.name).is_some())
                            .collect(),
                    ),
                };
                return match filtered {
                    None => Outcome::Dispatch,
                    Some(list) => {
                        Response::RegionList(list).encode(out, request_id, 0);
                        Outcome::Replied
                    }
                };
            }
            Request::Replicate { uid, .. } => {
                // A primary's entry: its node's credential needs admin on
                // the region.
                let Ok(region) = self.shared.catalog.by_uid(*uid) else {
                    return Outcome::Dispatch;
                };
                let id = region.info().id;
                return self.check_id(id, Right::Admin, request_id, out);
            }
            Request::ReplicaStatus { name } => (Right::Read, *name),
            Request::CreateRegion { name, .. }
            | Request::CreateReplica { name, .. }
            | Request::Promote { name, .. }
            | Request::DeleteRegion { name }
            | Request::Checkpoint { name, .. }
            | Request::RecoverRegion { name, .. } => (Right::Admin, *name),
            Request::StatRegion { name } | Request::RecoveryStatus { name } => (Right::Read, *name),
            Request::RegionChecksum { name, .. } => (Right::Read, *name),
            Request::OpenRegion {
                name,
                mode,
                claim_epoch,
            } => {
                let needed = match mode {
                    OpenMode::Read => Right::Read,
                    OpenMode::Write => Right::Write,
                };
                let has = self.right_on_name(name);
                if has < Some(needed) {
                    let message = self.forbidden(name, needed, has);
                    return refuse(out, ErrorCode::Forbidden, &message);
                }
                if *mode == OpenMode::Write
                    && let Ok(region) = self.shared.catalog.by_name(name)
                {
                    return match self.open_one(&region, *claim_epoch) {
                        Ok(writer_epoch) => {
                            Response::RegionOpened {
                                info: region.info().clone(),
                                writer_epoch,
                                lsn: region.log().applied(),
                            }
                            .encode(out, request_id, 0);
                            Outcome::Replied
                        }
                        Err(error) => refuse(out, error.code(), &error.to_string()),
                    };
                }
                return Outcome::Dispatch;
            }
            Request::ReadPages { region, .. }
            | Request::StoredSegments { region, .. }
            | Request::ShareRegion { region } => {
                return self.check_id(*region, Right::Read, request_id, out);
            }
            Request::DirtyPages { region, .. } | Request::FreezeRegion { region } => {
                return self.check_id(*region, Right::Admin, request_id, out);
            }
            Request::WritePages { region, .. } | Request::ApplyJournal { region, .. } => {
                let outcome = self.check_id(*region, Right::Write, request_id, out);
                if outcome != Outcome::Dispatch {
                    return outcome;
                }
                return self.check_writer(*region, request_id, out);
            }
        };
        let has = self.right_on_name(name);
        if has < Some(needed) {
            let message = self.forbidden(name, needed, has);
            return refuse(out, ErrorCode::Forbidden, &message);
        }
        Outcome::Dispatch
    }

    fn check_id(&mut self, id: u64, needed: Right, request_id: u64, out: &mut Vec<u8>) -> Outcome {
        let Some((has, name)) = self.right_on_id(id) else {
            return Outcome::Dispatch;
        };
        if has >= Some(needed) {
            return Outcome::Dispatch;
        }
        let name = name.unwrap_or_else(|| self.region_name(id));
        let message = self.forbidden(&name, needed, has);
        error_reply(
            &self.shared,
            out,
            request_id,
            ErrorCode::Forbidden,
            &message,
        );
        Outcome::Replied
    }

    fn check_writer(&mut self, id: u64, request_id: u64, out: &mut Vec<u8>) -> Outcome {
        if let Some(held) = self.roles.get(&id) {
            if held.role.valid.load(Ordering::Acquire) {
                return Outcome::Dispatch;
            }
            // Taken over by a newer writer (this connection was silent
            // beyond the lease, or the writer resumed on a new connection):
            // this one is fenced off.
            let epoch = held.role.epoch;
            self.roles.remove(&id);
            if let Ok(region) = self.shared.catalog.by_id(id) {
                let current = region.log().writer_epoch();
                let (code, message) = if current > epoch {
                    let error = NodeError::StaleEpoch {
                        region: region.info().name.clone(),
                        what: "writer",
                        epoch,
                        current,
                    };
                    (error.code(), error.to_string())
                } else {
                    (
                        ErrorCode::NotWriter,
                        format!(
                            "region {:?}: this connection's writer epoch {epoch} was resumed on \
                             another connection",
                            region.info().name
                        ),
                    )
                };
                error_reply(&self.shared, out, request_id, code, &message);
                return Outcome::Replied;
            }
        }
        if self.shared.catalog.by_id(id).is_err() {
            // No such region: dispatched to be refused as such.
            return Outcome::Dispatch;
        }
        let name = self.region_name(id);
        let message = match self.shared.writers.holder_of(id) {
            Some(who) => format!(
                "this connection does not hold the writer role of region {name:?}: {who} does"
            ),
            None => format!(
                "this connection does not hold the writer role of region {name:?}; \
                 open the region for writing first"
            ),
        };
        error_reply(
            &self.shared,
            out,
            request_id,
            ErrorCode::NotWriter,
            &message,
        );
        Outcome::Replied
    }

    /// Counts one more write open of `region`, taking its role if this
    /// connection does not hold it yet, and returns the writer epoch the
    /// connection holds. A new writer (`claim_epoch` 0) is given the next
    /// epoch, persisted before it is answered; a writer that lost its
    /// connection resumes its epoch by claiming it, even from a connection
    /// the node still believes alive, unless a newer writer took over.
    fn open_one(&mut self, region: &Region, claim_epoch: u64) -> Result<u64, NodeError> {
        let id = region.info().id;
        let name = &region.info().name;
        if let Some(held) = self.roles.get_mut(&id) {
            if held.role.valid.load(Ordering::Acquire) {
                held.opens += 1;
                return Ok(held.role.epoch);
            }
            self.roles.remove(&id);
        }
        // Only the copy that takes writes hands out writer epochs: a replica
        // learns them from its primary.
        crate::cluster::check_writable(&self.shared, region)?;
        let current = region.log().writer_epoch();
        let epoch = match claim_epoch {
            0 => current + 1,
            claim if claim < current => {
                return Err(NodeError::StaleEpoch {
                    region: name.clone(),
                    what: "writer",
                    epoch: claim,
                    current,
                });
            }
            claim if claim > current => {
                return Err(NodeError::InvalidArgument(format!(
                    "writer epoch {claim} of region {name:?} was never handed out (the newest is \
                     {current})"
                )));
            }
            claim => claim,
        };
        let role = self
            .shared
            .writers
            .acquire(id, name, &self.holder, epoch, claim_epoch != 0)
            .map_err(NodeError::WriterBusy)?;
        if epoch > current {
            region.log().raise_writer_epoch(epoch);
            if let Err(error) = self.shared.catalog.save_states() {
                self.shared.writers.release(id, &role);
                return Err(error);
            }
        }
        self.roles.insert(id, HeldRole { opens: 1, role });
        Ok(epoch)
    }

    /// Gives back one write open of region `id`; the last gives back the
    /// role.
    fn close_one(&mut self, id: u64) {
        let Some(held) = self.roles.get_mut(&id) else {
            return;
        };
        held.opens -= 1;
        if held.opens == 0 {
            let held = self.roles.remove(&id).expect("present above");
            self.shared.writers.release(id, &held.role);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards pattern matching: exact names, prefixes and `*`.
    #[test]
    fn grants_match_exact_names_prefixes_and_everything() {
        let exact = Grant::parse("logs=read").unwrap();
        assert!(exact.matches("logs") && !exact.matches("logs2"));
        let prefix = Grant::parse("logs-*=write").unwrap();
        assert!(prefix.matches("logs-") && prefix.matches("logs-a") && !prefix.matches("log"));
        let all = Grant::parse("*=admin").unwrap();
        assert!(all.matches("anything") && all.matches(""));
        assert_eq!(all.to_string(), "*=admin");
        for bad in ["", "=read", "a*b=read", "x=owner", "noequals"] {
            assert!(Grant::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    // Guards the order of rights: admin implies write implies read, and the
    // strongest matching grant wins.
    #[test]
    fn strongest_matching_grant_wins() {
        let grants = vec![
            Grant::parse("*=read").unwrap(),
            Grant::parse("app-*=write").unwrap(),
            Grant::parse("app-db=admin").unwrap(),
        ];
        let credential = Credential::new("c", b"t", grants).unwrap();
        assert_eq!(credential.right_on("other"), Some(Right::Read));
        assert_eq!(credential.right_on("app-x"), Some(Right::Write));
        assert_eq!(credential.right_on("app-db"), Some(Right::Admin));
        assert!(Right::Admin > Right::Write && Right::Write > Right::Read);
        let none = Credential::new("d", b"t", vec![]).unwrap();
        assert_eq!(none.right_on("x"), None);
    }

    // Guards the file: what is written reads back equal; a flipped byte, a
    // truncation, and an oversized file are refused with the file's name.
    #[test]
    fn credentials_file_round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_credentials(dir.path()).unwrap().is_none());
        let credentials = vec![
            Credential::new("a", b"token-a", vec![Grant::parse("*=admin").unwrap()]).unwrap(),
            Credential::new(
                "b.reader",
                b"token-b",
                vec![Grant::parse("x-*=read").unwrap()],
            )
            .unwrap(),
        ];
        write_credentials(dir.path(), &credentials).unwrap();
        assert_eq!(read_credentials(dir.path()).unwrap().unwrap(), credentials);
        let path = dir.path().join(CREDENTIALS_FILE_NAME);
        let bytes = fs::read(&path).unwrap();
        for damaged in [
            {
                let mut b = bytes.clone();
                b[20] ^= 1;
                b
            },
            bytes[..bytes.len() - 1].to_vec(),
            b"PGDACAT1".to_vec(),
        ] {
            fs::write(&path, &damaged).unwrap();
            let error = read_credentials(dir.path()).unwrap_err().to_string();
            assert!(error.contains("credentials"), "{error}");
        }
        fs::write(&path, vec![0u8; CREDENTIALS_FILE_BYTES_MAX as usize + 1]).unwrap();
        let error = read_credentials(dir.path()).unwrap_err().to_string();
        assert!(error.contains("limit"), "{error}");
    }

    // Guards the file's secrets: it holds neither the token nor the client
    // key, only the salt and stored key.
    #[test]
    fn credentials_file_holds_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = b"very-secret-token-value";
        let credential = Credential::new("a", token, vec![]).unwrap();
        write_credentials(dir.path(), std::slice::from_ref(&credential)).unwrap();
        let text = fs::read(dir.path().join(CREDENTIALS_FILE_NAME)).unwrap();
        let client_key = hex(&auth::client_key(token, &credential.salt));
        let haystack = String::from_utf8_lossy(&text);
        assert!(!haystack.contains("very-secret"));
        assert!(!haystack.contains(&client_key));
        assert!(haystack.contains(&hex(&credential.stored_key)));
    }
}
