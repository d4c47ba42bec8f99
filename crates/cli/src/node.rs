//! `pagoda node`: run a memory node until SIGINT, SIGTERM or SIGPWR.
//!
//! A graceful stop loses nothing acknowledged: the node checkpoints every
//! region with dirty pages before it exits. If that fails (a full disk, an
//! unreachable store) even after retries, the node refuses to stop: it logs
//! which regions would lose what, and serves again. Signal it again once the
//! storage is mended; SIGQUIT stops it anyway, abandoning those changes, and
//! exits with a failure status.
//!
//! Every setting comes from one of four places, the first that has it
//! winning: the command-line flag, the environment variable
//! `PAGODA_NODE_<FLAG>` (`PAGODA_NODE_CAPACITY`), the `--config` file (TOML,
//! each key the flag's long name: `capacity = "4GiB"`), the default.
//! [`NodeSettings`] is all of them at once: clap fills it from flags and
//! environment, serde from the file, and layering them is merging their
//! TOML tables, so a setting needs no code of its own to take part.
//! `--print-config` prints the layered result, which reads back as itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pagoda_node::{Node, NodeConfig, S3Settings, StorageConfig};

use crate::size::{Size, format_bytes};

/// Arguments of `pagoda node`: run a node, or with a subcommand look at one.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: Option<NodeCommand>,
    /// Read settings from this TOML file: each key is a flag's long name
    /// (`capacity = "4GiB"`, `data-dir = "/var/lib/pagoda"`, `peer =
    /// ["10.0.0.2:7070"]`). Flags and PAGODA_NODE_* variables override it.
    #[arg(long, env = "PAGODA_NODE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective settings (flags over environment over --config
    /// file over defaults) as a TOML file for --config, and exit without
    /// starting the node.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    settings: NodeSettings,
}

/// Every setting of `pagoda node`, each `None` where its source says
/// nothing. The TOML keys are the flags' long names (kebab-case); the
/// environment variables are `PAGODA_NODE_` and the flag in upper snake
/// case. No field holds a secret (the token lives in `--token-file`, the S3
/// secret key in `--s3-secret-access-key-file` or `AWS_SECRET_ACCESS_KEY`),
/// so a printed configuration hides nothing and reads back whole.
#[derive(clap::Args, serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSettings {
    /// The address to listen on. A non-loopback address requires --token-file
    /// (or credentials) and TLS (--tls-cert, --tls-key) or --insecure-no-tls.
    #[arg(
        long,
        env = "PAGODA_NODE_LISTEN",
        value_name = "IP:PORT",
        value_parser = parse_socket_address
    )]
    #[serde(
        default,
        deserialize_with = "deserialize_socket_address",
        skip_serializing_if = "Option::is_none"
    )]
    listen: Option<SocketAddr>,
    /// RAM for region pages, like 4GiB. Regions may add up to more (thin
    /// provisioning); a write that needs a segment beyond it fails with an
    /// out-of-memory error. Required.
    #[arg(long, env = "PAGODA_NODE_CAPACITY", value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity: Option<Size>,
    /// A directory on SSD for the bulk tier: cold segments are paged out to
    /// a file there when RAM runs short, so the node holds RAM plus
    /// --bulk-capacity. Needs --bulk-capacity. Off by default.
    #[arg(long, env = "PAGODA_NODE_BULK_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    bulk_dir: Option<PathBuf>,
    /// Bytes the bulk tier may hold on disk, like 64GiB. Needs --bulk-dir.
    #[arg(long, env = "PAGODA_NODE_BULK_CAPACITY", value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    bulk_capacity: Option<Size>,
    /// Threads that read bulk-tier pages into replies while connections go
    /// on with their next requests, 1 to 256; 0 reads them on each
    /// connection's own thread (later requests on it then wait). Default 8.
    #[arg(long, env = "PAGODA_NODE_BULK_READ_THREADS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    bulk_read_threads: Option<usize>,
    /// RAM for a cache of hot bulk-tier pages (pages read often in segments
    /// paged out as a whole), like 512MiB; taken from --capacity in whole
    /// 2 MiB segments, at most half of it (none below 64MiB). Default: a
    /// quarter of --capacity.
    #[arg(long, env = "PAGODA_NODE_BULK_CACHE", value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    bulk_cache: Option<Size>,
    /// Where the node keeps its region metadata; created if missing.
    /// Required.
    #[arg(long, env = "PAGODA_NODE_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// A file holding a shared token: the credential `default`, with admin
    /// on every region. Named credentials: `pagoda token`.
    #[arg(long, env = "PAGODA_NODE_TOKEN_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<PathBuf>,
    /// How long the holder of a region's writer role may send nothing
    /// before another client may take the role over, in seconds.
    #[arg(long, env = "PAGODA_NODE_WRITER_LEASE", value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    writer_lease: Option<u64>,
    /// The most a connection spins on non-blocking reads before it sleeps, in
    /// microseconds (0 to never spin); the spin adapts below it.
    #[arg(long, env = "PAGODA_NODE_SPIN_US", value_name = "US")]
    #[serde(skip_serializing_if = "Option::is_none")]
    spin_us: Option<u64>,
    /// Most connections served at once.
    #[arg(long, env = "PAGODA_NODE_CONNECTIONS_MAX", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    connections_max: Option<usize>,
    /// Most connections that may be authenticating at once; a new one beyond
    /// that closes the one that has been authenticating longest.
    #[arg(long, env = "PAGODA_NODE_HANDSHAKES_MAX", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    handshakes_max: Option<usize>,
    /// Node-wide memory for connection buffers beyond each connection's
    /// baseline (large frames and replies), like 256MiB. A request that
    /// cannot get its buffers within a second is answered "busy".
    #[arg(long, env = "PAGODA_NODE_CONNECTION_MEMORY", value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_memory: Option<Size>,
    /// How long a frame that has begun to arrive, or a reply that has begun
    /// to be written, may take before the connection is closed, in
    /// milliseconds.
    #[arg(long, env = "PAGODA_NODE_FRAME_TIMEOUT_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    frame_timeout_ms: Option<u64>,
    /// Serve TLS with this certificate chain (PEM); with --tls-key. Required
    /// on a non-loopback address unless --insecure-no-tls. The files are
    /// re-read when they change, so a renewed certificate needs no restart.
    #[arg(long, env = "PAGODA_NODE_TLS_CERT", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "PAGODA_NODE_TLS_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by the authorities in this PEM
    /// file.
    #[arg(long, env = "PAGODA_NODE_TLS_CA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS: tokens, proofs and
    /// pages travel in clear.
    #[arg(
        long,
        env = "PAGODA_NODE_INSECURE_NO_TLS",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    insecure_no_tls: Option<bool>,
    /// Speak TLS to other nodes (a recovery's source, a region's replicas),
    /// trusting the authorities in this PEM file; this node's --tls-cert and
    /// --tls-key are its client certificate where the peer requires one.
    #[arg(long, env = "PAGODA_NODE_PEER_TLS_CA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_tls_ca: Option<PathBuf>,
    /// Where checkpoints go: a directory, file:///path, or s3://bucket/prefix
    /// (endpoint and credentials from the --s3-* settings, else from
    /// AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP). Default: the `checkpoints`
    /// directory in the data dir. `none` disables checkpoints.
    #[arg(long, env = "PAGODA_NODE_STORAGE", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<String>,
    /// The S3 endpoint URL, for S3-compatible stores other than AWS
    /// (overrides AWS_ENDPOINT_URL). Only with --storage s3://...
    #[arg(long, env = "PAGODA_NODE_S3_ENDPOINT", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    s3_endpoint: Option<String>,
    /// The S3 region (overrides AWS_REGION).
    #[arg(long, env = "PAGODA_NODE_S3_REGION", value_name = "REGION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    s3_region: Option<String>,
    /// The S3 access key id (overrides AWS_ACCESS_KEY_ID).
    #[arg(long, env = "PAGODA_NODE_S3_ACCESS_KEY_ID", value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    s3_access_key_id: Option<String>,
    /// A file holding the S3 secret access key and nothing else (overrides
    /// AWS_SECRET_ACCESS_KEY; a file, so no setting holds the secret).
    #[arg(
        long,
        env = "PAGODA_NODE_S3_SECRET_ACCESS_KEY_FILE",
        value_name = "FILE"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    s3_secret_access_key_file: Option<PathBuf>,
    /// Allow a plain-HTTP S3 endpoint (overrides AWS_ALLOW_HTTP).
    #[arg(
        long,
        env = "PAGODA_NODE_S3_ALLOW_HTTP",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    s3_allow_http: Option<bool>,
    /// Checkpoint every region with dirty pages this often, in seconds
    /// (0: only on request).
    #[arg(long, env = "PAGODA_NODE_CHECKPOINT_INTERVAL", value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_interval: Option<u64>,
    /// How long a graceful stop retries failed checkpoints before it gives up
    /// and goes on serving, in seconds.
    #[arg(long, env = "PAGODA_NODE_STOP_RETRY", value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_retry: Option<u64>,
    /// Start even if the catalog and storage disagree: with `regions.meta`
    /// missing from a data dir a node has used, start with no regions; with a
    /// region's newest checkpoint gone from storage, roll it back to the
    /// newest one left. Without it the node refuses to start and says why.
    #[arg(
        long,
        env = "PAGODA_NODE_ACCEPT_STORAGE_MISMATCH",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    accept_storage_mismatch: Option<bool>,
    /// A node this one may connect to, as a recovery's source or as a
    /// replicated region's replica (repeat for several, or separate them
    /// with commas). Without any, only addresses on this host's loopback.
    #[arg(
        long = "peer",
        env = "PAGODA_NODE_PEER",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    #[serde(rename = "peer", skip_serializing_if = "Option::is_none")]
    peers: Option<Vec<String>>,
    /// The credential this node authenticates as to a recovery's source
    /// (with the token the recovery carries, or this node's --token-file)
    /// and to a region's replicas (with this node's --token-file).
    #[arg(long, env = "PAGODA_NODE_PEER_CREDENTIAL", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_credential: Option<String>,
    /// Checkpoints kept per region; older ones are garbage-collected.
    #[arg(long, env = "PAGODA_NODE_CHECKPOINT_RETAIN", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_retain: Option<usize>,
    /// Replication: how long an in-sync replica may leave a write
    /// unacknowledged before its primary drops it from the in-sync set
    /// (`sync` writes then go on without it); a replica that hears nothing
    /// from its primary for half of it counts itself out of sync. In
    /// milliseconds, at least 400 (four heartbeats).
    #[arg(long, env = "PAGODA_NODE_REPLICA_TIMEOUT", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    replica_timeout: Option<u64>,
    /// Replication: the most bytes of recent writes a primary keeps per
    /// region, so that a replica that fell behind or reconnects receives only
    /// what it missed; one further behind is rebuilt by segment digests. At
    /// least 1MiB, and at least --replication-lag-bytes.
    #[arg(long, env = "PAGODA_NODE_REPLICATION_LOG_BYTES", value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    replication_log_bytes: Option<Size>,
    /// Replication, `async` mode: the most bytes an in-sync replica may lag
    /// behind its primary before writes wait for it.
    #[arg(long, env = "PAGODA_NODE_REPLICATION_LAG_BYTES", value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    replication_lag_bytes: Option<Size>,
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g.
    /// 127.0.0.1:9070; port 0 picks a free one. Off by default. The endpoint
    /// has no authentication: a non-loopback address also needs
    /// --metrics-allow-remote.
    #[arg(
        long,
        env = "PAGODA_NODE_METRICS",
        value_name = "IP:PORT",
        value_parser = parse_socket_address
    )]
    #[serde(
        default,
        deserialize_with = "deserialize_socket_address",
        skip_serializing_if = "Option::is_none"
    )]
    metrics: Option<SocketAddr>,
    /// Serve metrics on a non-loopback --metrics address, to anyone who can
    /// reach it.
    #[arg(
        long,
        env = "PAGODA_NODE_METRICS_ALLOW_REMOTE",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_allow_remote: Option<bool>,
    /// The cluster coordinator this node registers with and records its
    /// regions in: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (an etcd
    /// cluster; prefix `pagoda` by default) or `embedded:DIR` (a file in a
    /// directory shared by the nodes of one machine). Default: the embedded
    /// one in the data dir (one node, no failover).
    #[arg(long, env = "PAGODA_NODE_COORDINATOR", value_name = "ENDPOINT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator: Option<String>,
    /// The node's lease in the coordinator, in milliseconds: the node counts
    /// as failed, and its regions fail over, once it has not renewed it for
    /// this long. At least 1000; rounded up to whole seconds for etcd, whose
    /// leases are whole seconds.
    #[arg(long, env = "PAGODA_NODE_LEASE_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ms: Option<u64>,
    /// With a shared --coordinator: how long a replica's node may be gone
    /// from the cluster before the primary builds a new replica on another
    /// live node (the most free bytes first), to restore the replica count,
    /// in milliseconds. At least --lease-ms.
    #[arg(long, env = "PAGODA_NODE_REPLACE_REPLICA_AFTER_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    replace_replica_after_ms: Option<u64>,
    /// The Unix socket clients on this host connect to, to read regions'
    /// pages from shared memory without a round trip (co-located access):
    /// a path, or `off`. Default: `pagoda.sock` in the data dir (skipped,
    /// with a warning, if that path is too long for a Unix socket).
    #[arg(long, env = "PAGODA_NODE_LOCAL_SOCKET", value_name = "PATH|off")]
    #[serde(skip_serializing_if = "Option::is_none")]
    local_socket: Option<String>,
}

/// The shortest --replica-timeout: a replica counts itself out of sync
/// after half of it without a heartbeat, so half must span a few of them.
const REPLICA_TIMEOUT_MS_MIN: u64 = 4 * pagoda_node::replication::HEARTBEAT.as_millis() as u64;

/// The smallest --replication-log-bytes: below it almost every reconnect of
/// a replica would need a rebuild by digests.
const REPLICATION_LOG_BYTES_MIN: u64 = 1 << 20;

/// The shortest --lease-ms: etcd grants leases in whole seconds, at least
/// one.
const LEASE_MS_MIN: u64 = pagoda_cluster::LEASE_MIN.as_millis() as u64;

/// The longest --lease-ms (an hour): a node that failed would keep its
/// regions from failing over for longer than that.
const LEASE_MS_MAX: u64 = 3_600_000;

/// The largest --config file read: a node's settings take a few KiB.
const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

/// Subcommands of `pagoda node`.
#[derive(clap::Subcommand, Debug)]
enum NodeCommand {
    /// Show a running node's statistics: capacity, RAM used, segment size,
    /// regions, connections and requests served.
    Stat {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: crate::NodeAddress,
    },
}

impl NodeSettings {
    /// The defaults: what a setting is when no flag, variable or file gives
    /// it. Settings that are off unless given (TLS, metrics, peers, a
    /// coordinator, a storage other than the data dir's) stay `None`.
    pub fn defaults() -> NodeSettings {
        use pagoda_node::config as defaults;
        NodeSettings {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7070))),
            writer_lease: Some(defaults::WRITER_LEASE_MS_DEFAULT / 1000),
            spin_us: Some(defaults::SPIN_US_DEFAULT),
            connections_max: Some(defaults::CONNECTIONS_MAX_DEFAULT),
            handshakes_max: Some(defaults::HANDSHAKES_MAX_DEFAULT),
            connection_memory: Some(Size(defaults::CONNECTION_MEMORY_BYTES_DEFAULT as u64)),
            frame_timeout_ms: Some(defaults::FRAME_TIMEOUT_MS_DEFAULT),
            insecure_no_tls: Some(false),
            checkpoint_interval: Some(60),
            stop_retry: Some(30),
            accept_storage_mismatch: Some(false),
            peer_credential: Some(pagoda::DEFAULT_CREDENTIAL.to_owned()),
            checkpoint_retain: Some(defaults::CHECKPOINT_RETAIN_DEFAULT),
            replica_timeout: Some(defaults::REPLICA_TIMEOUT_MS_DEFAULT),
            replication_log_bytes: Some(Size(defaults::REPLICATION_LOG_BYTES_DEFAULT as u64)),
            replication_lag_bytes: Some(Size(defaults::REPLICATION_LAG_BYTES_DEFAULT as u64)),
            metrics_allow_remote: Some(false),
            lease_ms: Some(defaults::LEASE_MS_DEFAULT),
            bulk_read_threads: Some(pagoda_node::bulk::READ_THREADS),
            replace_replica_after_ms: Some(defaults::REPLACE_REPLICA_AFTER_MS_DEFAULT),
            ..NodeSettings::default()
        }
    }

    /// The settings as a TOML table, one key per setting given.
    fn table(&self) -> Result<toml::Table, String> {
        toml::Table::try_from(self).map_err(|e| format!("writing the settings as TOML: {e}"))
    }

    /// Layers `layers`, lowest first: each setting is the one of the last
    /// layer that gives it.
    fn layered(layers: &[&NodeSettings]) -> Result<NodeSettings, String> {
        let mut table = toml::Table::new();
        for layer in layers {
            table.extend(layer.table()?);
        }
        table
            .try_into()
            .map_err(|e| format!("reading the layered settings back: {e}"))
    }

    /// Reads a `--config` file. Its keys must be settings' names; the
    /// values are read as the flags' are (`"4GiB"` for a size).
    pub fn read(path: &Path) -> Result<NodeSettings, String> {
        let context = format!("--config {}", path.display());
        let metadata = std::fs::metadata(path).map_err(|e| format!("{context}: {e}"))?;
        if metadata.len() > CONFIG_FILE_BYTES_MAX {
            return Err(format!(
                "{context}: the file is {} bytes; a node's settings take a few KiB (at most {})",
                metadata.len(),
                format_bytes(CONFIG_FILE_BYTES_MAX)
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{context}: {e}"))?;
        NodeSettings::parse(&text).map_err(|e| format!("{context}: {e}"))
    }

    /// Parses the text of a `--config` file.
    fn parse(text: &str) -> Result<NodeSettings, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let keys = setting_names();
        for key in table.keys() {
            if keys.contains(key) {
                continue;
            }
            let kebab = key.replace('_', "-");
            let hint = if keys.contains(&kebab) {
                format!("did you mean `{kebab}`? ")
            } else {
                String::new()
            };
            return Err(format!(
                "unknown key `{key}` ({hint}the keys are the long flags of `pagoda node`, \
                 without the dashes: `pagoda node --help` lists them)"
            ));
        }
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// The settings as a `--config` file.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| format!("writing the settings as TOML: {e}"))
    }

    /// The node's configuration: these settings (layered over the
    /// defaults) read and checked, every flag against the others. Reads the
    /// token file and resolves the --peer names; touches nothing else (the
    /// node checks its data dir and storage when it starts).
    pub fn node_config(&self) -> Result<NodeConfig, String> {
        let Some(Size(capacity)) = self.capacity else {
            return Err(missing("capacity", "4GiB"));
        };
        let Some(data_dir) = self.data_dir.clone() else {
            return Err(missing("data-dir", "/var/lib/pagoda"));
        };
        self.check_combinations()?;
        let mut config = NodeConfig::new(given(&self.listen), capacity, data_dir);
        config.spin = Duration::from_micros(given(&self.spin_us));
        config.connections_max = given(&self.connections_max);
        config.handshakes_max = given(&self.handshakes_max);
        config.connection_memory_bytes =
            bytes("connection-memory", given(&self.connection_memory))?;
        config.frame_timeout = Duration::from_millis(given(&self.frame_timeout_ms));
        if let (Some(cert_file), Some(key_file)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(pagoda_node::TlsConfig {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file: self.tls_ca.clone(),
            });
        }
        config.insecure_no_tls = given(&self.insecure_no_tls);
        config.peer_tls = self.peer_tls_ca.as_ref().map(|ca_file| pagoda::TlsOptions {
            ca_file: ca_file.clone(),
            cert_file: self.tls_cert.clone(),
            key_file: self.tls_key.clone(),
            server_name: None,
        });
        config.storage = match self.storage.as_deref() {
            Some("none") => None,
            // The parser's messages quote the URL and say what is wrong.
            Some(url) => Some(StorageConfig::parse(url).map_err(|error| match error {
                pagoda_node::NodeError::Config(message) => message,
                other => format!("--storage {url}: {other}"),
            })?),
            None => Some(StorageConfig::Dir(config.data_dir.join("checkpoints"))),
        };
        let s3 = S3Settings {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key_file: self.s3_secret_access_key_file.clone(),
            allow_http: self.s3_allow_http,
        };
        match &mut config.storage {
            Some(StorageConfig::S3 { settings, .. }) => *settings = s3,
            _ if !s3.is_empty() => {
                return Err(format!(
                    "the --s3-* settings apply only to S3 storage, but --storage is {}",
                    self.storage
                        .as_deref()
                        .unwrap_or("the default checkpoints directory")
                ));
            }
            _ => {}
        }
        let checkpoint_interval = given(&self.checkpoint_interval);
        config.checkpoint_interval =
            (checkpoint_interval > 0).then(|| Duration::from_secs(checkpoint_interval));
        config.checkpoint_retain = given(&self.checkpoint_retain);
        config.accept_storage_mismatch = given(&self.accept_storage_mismatch);
        config.peer_credential = given(&self.peer_credential);
        for peer in self.peers.iter().flatten() {
            use std::net::ToSocketAddrs;
            crate::check_address("--peer", peer)?;
            let addresses = peer
                .to_socket_addrs()
                .map_err(|e| format!("--peer {peer}: {e}"))?;
            config.peers.extend(addresses);
        }
        if let Some(path) = &self.token_file {
            config.token = Some(crate::read_token(path)?);
        }
        config.writer_lease = Duration::from_secs(given(&self.writer_lease));
        config.replica_timeout = Duration::from_millis(given(&self.replica_timeout));
        config.replication_log_bytes =
            bytes("replication-log-bytes", given(&self.replication_log_bytes))?;
        config.replication_lag_bytes =
            bytes("replication-lag-bytes", given(&self.replication_lag_bytes))?;
        config.metrics = self.metrics;
        config.metrics_allow_remote = given(&self.metrics_allow_remote);
        config.lease = Duration::from_millis(given(&self.lease_ms));
        config.replace_replica_after = Duration::from_millis(given(&self.replace_replica_after_ms));
        config.coordinator = self.coordinator.clone();
        config.bulk = match (&self.bulk_dir, self.bulk_capacity) {
            (Some(dir), Some(Size(capacity_bytes))) => Some(pagoda_node::bulk::BulkConfig {
                dir: dir.clone(),
                capacity_bytes,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err("--bulk-dir needs --bulk-capacity, like 64GiB".into());
            }
            (None, Some(_)) => {
                return Err(
                    "--bulk-capacity needs --bulk-dir, a directory on SSD for the bulk tier".into(),
                );
            }
        };
        config.bulk_read_threads = given(&self.bulk_read_threads);
        config.bulk_cache_bytes = self.bulk_cache.map(|Size(bytes)| bytes);
        if config.bulk_read_threads > pagoda_node::bulk::READ_THREADS_MAX {
            return Err(format!(
                "--bulk-read-threads {} is more than {}",
                config.bulk_read_threads,
                pagoda_node::bulk::READ_THREADS_MAX
            ));
        }
        config.local_socket = match self.local_socket.as_deref() {
            None => pagoda_node::config::LocalSocket::InDataDir,
            Some("off") => pagoda_node::config::LocalSocket::Off,
            Some("") => return Err("--local-socket: give a path, or off".into()),
            Some(path) => pagoda_node::config::LocalSocket::At(PathBuf::from(path)),
        };
        Ok(config)
    }

    /// Checks each setting's bounds and the settings against each other,
    /// wherever each came from (a flag's `requires` in clap would see only
    /// the command line). Each message names the flags to change.
    fn check_combinations(&self) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err("--tls-cert needs --tls-key, the certificate's private key".into());
            }
            (None, Some(_)) => {
                return Err("--tls-key needs --tls-cert, the certificate it is the key of".into());
            }
            _ => {}
        }
        if self.tls_ca.is_some() && self.tls_cert.is_none() {
            return Err(
                "--tls-ca (require client certificates) needs --tls-cert and --tls-key: only a \
                 node that serves TLS can ask for client certificates"
                    .into(),
            );
        }
        if given(&self.insecure_no_tls) && self.tls_cert.is_some() {
            return Err(
                "--insecure-no-tls and --tls-cert contradict each other: give one of them".into(),
            );
        }
        if given(&self.metrics_allow_remote) && self.metrics.is_none() {
            return Err("--metrics-allow-remote needs --metrics HOST:PORT".into());
        }
        if given(&self.writer_lease) == 0 {
            return Err("--writer-lease must be at least 1 second".into());
        }
        let replica_timeout = given(&self.replica_timeout);
        if replica_timeout < REPLICA_TIMEOUT_MS_MIN {
            return Err(format!(
                "--replica-timeout must be at least {REPLICA_TIMEOUT_MS_MIN} ms: a replica counts \
                 itself out of sync after half of it without a heartbeat, and they come every {} ms",
                pagoda_node::replication::HEARTBEAT.as_millis()
            ));
        }
        let Size(log_bytes) = given(&self.replication_log_bytes);
        if log_bytes < REPLICATION_LOG_BYTES_MIN {
            return Err(format!(
                "--replication-log-bytes must be at least {}",
                format_bytes(REPLICATION_LOG_BYTES_MIN)
            ));
        }
        let Size(lag_bytes) = given(&self.replication_lag_bytes);
        if lag_bytes > log_bytes {
            return Err(format!(
                "--replication-lag-bytes {} is more than --replication-log-bytes {}: an async \
                 replica allowed to lag that far would need writes the log no longer keeps, and \
                 a rebuild; raise --replication-log-bytes to at least {0} or lower \
                 --replication-lag-bytes",
                Size(lag_bytes),
                Size(log_bytes)
            ));
        }
        let lease_ms = given(&self.lease_ms);
        if lease_ms < LEASE_MS_MIN {
            return Err(format!(
                "--lease-ms {lease_ms} is too short: at least {LEASE_MS_MIN} ms (etcd leases are \
                 whole seconds, at least one)"
            ));
        }
        if lease_ms > LEASE_MS_MAX {
            return Err(format!(
                "--lease-ms {lease_ms} is too long: at most {LEASE_MS_MAX} ms (an hour); a failed \
                 node's regions fail over only once its lease lapses"
            ));
        }
        let replace_after_ms = given(&self.replace_replica_after_ms);
        if replace_after_ms < lease_ms {
            return Err(format!(
                "--replace-replica-after-ms {replace_after_ms} is shorter than --lease-ms \
                 {lease_ms}: one late lease renewal (a pause, a brief partition) would rebuild a \
                 whole replica; give --replace-replica-after-ms at least {lease_ms}"
            ));
        }
        Ok(())
    }
}

/// The value of a setting that has a default: set once the defaults are
/// layered under the given settings, which [`run`] does first.
fn given<T: Clone>(value: &Option<T>) -> T {
    value
        .clone()
        .expect("every setting with a default is set once the defaults are layered under it")
}

/// Parses an address to listen on (--listen, --metrics): an IP address
/// and a port, with the missing part named rather than "invalid socket
/// address syntax".
fn parse_socket_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let example = "for example 127.0.0.1:7070";
    if text
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok()
        || !text.contains(':')
    {
        return Err(format!("the port is missing ({example})"));
    }
    let (host, port) = text.rsplit_once(':').expect("the text holds a colon");
    if port.parse::<u16>().is_err() {
        return Err(format!("{port:?} is not a port ({example})"));
    }
    Err(format!(
        "{host:?} is not an IP address; a node listens on an address of this host \
         ({example}, or 0.0.0.0:{port} for all of them)"
    ))
}

/// Reads an address to listen on from the config file, as the flag does.
fn deserialize_socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    parse_socket_address(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A size setting in bytes, as the node keeps it.
fn bytes(flag: &str, Size(bytes): Size) -> Result<usize, String> {
    usize::try_from(bytes).map_err(|_| format!("--{flag} {} is too large", Size(bytes)))
}

/// The message for a required setting that nothing gave.
fn missing(key: &str, example: &str) -> String {
    let variable = format!("PAGODA_NODE_{}", key.replace('-', "_").to_ascii_uppercase());
    format!(
        "--{key} is missing: give --{key} {example}, set {variable}, or write \
         `{key} = \"{example}\"` in the --config file"
    )
}

/// The names of the settings: the long flags of `pagoda node`, which are
/// also the keys of its config file.
fn setting_names() -> Vec<String> {
    use clap::Args;
    NodeSettings::augment_args(clap::Command::new("settings"))
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(str::to_owned))
        .collect()
}

/// Appends each setting's default to its help, as clap would for a
/// `default_value`: the settings have none in clap (a default there would
/// hide the config file's value), so [`NodeSettings::defaults`] says them.
pub fn with_defaults_in_help(command: clap::Command) -> clap::Command {
    let Ok(defaults) = NodeSettings::defaults().table() else {
        return command;
    };
    let ids: Vec<(String, clap::Id)> = command
        .get_arguments()
        .filter_map(|arg| Some((arg.get_long()?.to_owned(), arg.get_id().clone())))
        .collect();
    ids.into_iter().fold(command, |command, (long, id)| {
        let Some(value) = defaults.get(&long) else {
            return command;
        };
        let value = match value {
            toml::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        command.mut_arg(id, |arg| {
            let help = arg
                .get_help()
                .map(|help| help.to_string())
                .unwrap_or_default();
            arg.help(format!("{help} [default: {value}]"))
        })
    })
}

pub fn run(args: NodeArgs, log_format: crate::LogFormat) -> Result<(), String> {
    if let Some(NodeCommand::Stat { json, node }) = &args.command {
        return stat(node, *json);
    }
    let file = match &args.config {
        Some(path) => NodeSettings::read(path)?,
        None => NodeSettings::default(),
    };
    let settings = NodeSettings::layered(&[&NodeSettings::defaults(), &file, &args.settings])?;
    let config = settings.node_config()?;
    if args.print_config {
        print!("{}", settings.to_toml()?);
        return Ok(());
    }
    let capacity = config.capacity_bytes;
    let stop = Arc::new(AtomicBool::new(false));
    let abandon = Arc::new(AtomicBool::new(false));
    // SIGPWR: the host's power is failing (a UPS says so): stop as for
    // SIGTERM, handing each region this node leads to an in-sync replica.
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        libc::SIGPWR,
    ] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("installing a signal handler: {e}"))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGQUIT, abandon.clone())
        .map_err(|e| format!("installing a signal handler: {e}"))?;
    let node = Node::start(config).map_err(|e| e.to_string())?;
    let announcement = format!(
        "pagoda node listening on {} with {} for pages, checkpoints in {}; stop with Ctrl-C",
        node.local_addr(),
        format_bytes(capacity),
        settings
            .storage
            .as_deref()
            .unwrap_or("<data dir>/checkpoints")
    );
    // With JSON logs every line on stderr is JSON, the announcement too.
    match log_format {
        crate::LogFormat::Text => eprintln!("{announcement}"),
        crate::LogFormat::Json => tracing::info!("{announcement}"),
    }
    if let Some(metrics) = node.metrics_addr() {
        let line = format!("pagoda node serving metrics on http://{metrics}/metrics");
        match log_format {
            crate::LogFormat::Text => eprintln!("{line}"),
            crate::LogFormat::Json => tracing::info!("{line}"),
        }
    }
    let mut node = node;
    loop {
        while !stop.load(Ordering::SeqCst) && !abandon.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if abandon.load(Ordering::SeqCst) {
            eprintln!("SIGQUIT: stopping, abandoning whatever the last checkpoints cannot save");
            return match node.try_stop(Duration::ZERO) {
                Ok(()) => Ok(()),
                Err(unsaved) => Err(format!("stopped on SIGQUIT, losing changes: {unsaved}")),
            };
        }
        stop.store(false, Ordering::SeqCst);
        eprintln!("shutting down: finishing requests in flight, then checkpointing");
        match node.try_stop(Duration::from_secs(given(&settings.stop_retry))) {
            Ok(()) => return Ok(()),
            Err(unsaved) => eprintln!(
                "ERROR: refusing to stop: {unsaved} The node serves again. Mend the storage \
                 and signal it again (SIGTERM), or send SIGQUIT to stop anyway and lose them."
            ),
        }
    }
}

/// `pagoda node stat`: the node's `NodeStat`, as text or JSON.
fn stat(address: &crate::NodeAddress, json: bool) -> Result<(), String> {
    let client = address.connect()?;
    let stat = client.node_stat().map_err(crate::client_error)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "node": address.node,
                "capacity_bytes": stat.capacity_bytes,
                "used_bytes": stat.used_bytes,
                "segment_bytes": stat.segment_bytes,
                "regions": stat.regions,
                "connections": stat.connections,
                "requests": stat.requests,
                "bulk_capacity_bytes": stat.bulk_capacity_bytes,
                "bulk_used_bytes": stat.bulk_used_bytes,
                "bulk_referenced_bytes": stat.bulk_referenced_bytes,
                "bulk_zero_bytes": stat.bulk_zero_bytes,
                "segments_paged_out": stat.segments_paged_out,
                "segments_paged_in": stat.segments_paged_in,
            })
        );
    } else {
        let percent = if stat.capacity_bytes == 0 {
            0.0
        } else {
            stat.used_bytes as f64 * 100.0 / stat.capacity_bytes as f64
        };
        println!("node            {}", address.node);
        println!("capacity        {}", format_bytes(stat.capacity_bytes));
        println!(
            "used            {} ({percent:.1} %)",
            format_bytes(stat.used_bytes)
        );
        println!("segment size    {}", format_bytes(stat.segment_bytes));
        println!("regions         {}", stat.regions);
        println!("connections     {}", stat.connections);
        println!("requests        {}", stat.requests);
        if stat.bulk_capacity_bytes > 0 {
            let saved = stat.bulk_zero_bytes
                + stat
                    .bulk_referenced_bytes
                    .saturating_sub(stat.bulk_used_bytes);
            println!(
                "bulk tier       {} of {} used; {} saved by zero and duplicate pages",
                format_bytes(stat.bulk_used_bytes),
                format_bytes(stat.bulk_capacity_bytes),
                format_bytes(saved)
            );
            println!(
                "paging          {} segments out, {} in since start",
                stat.segments_paged_out, stat.segments_paged_in
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings with every field given, none at its default.
    fn every_setting() -> NodeSettings {
        NodeSettings {
            listen: Some(SocketAddr::from(([127, 0, 0, 2], 7171))),
            capacity: Some(Size(3 << 30)),
            bulk_dir: Some(PathBuf::from("/ssd/pagoda")),
            bulk_capacity: Some(Size(64 << 30)),
            bulk_read_threads: Some(9),
            bulk_cache: Some(Size(96 << 20)),
            data_dir: Some(PathBuf::from("/var/lib/pagoda")),
            token_file: Some(PathBuf::from("/etc/pagoda/token")),
            writer_lease: Some(61),
            spin_us: Some(51),
            connections_max: Some(513),
            handshakes_max: Some(65),
            connection_memory: Some(Size(257 << 20)),
            frame_timeout_ms: Some(30_001),
            tls_cert: Some(PathBuf::from("/etc/pagoda/cert.pem")),
            tls_key: Some(PathBuf::from("/etc/pagoda/key.pem")),
            tls_ca: Some(PathBuf::from("/etc/pagoda/clients.pem")),
            insecure_no_tls: Some(true),
            peer_tls_ca: Some(PathBuf::from("/etc/pagoda/peers.pem")),
            storage: Some("s3://bucket/prefix".into()),
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            s3_region: Some("eu-central-1".into()),
            s3_access_key_id: Some("pagoda".into()),
            s3_secret_access_key_file: Some(PathBuf::from("/etc/pagoda/s3-secret")),
            s3_allow_http: Some(true),
            checkpoint_interval: Some(61),
            stop_retry: Some(31),
            accept_storage_mismatch: Some(true),
            peers: Some(vec!["10.0.0.2:7070".into(), "node-3:7070".into()]),
            peer_credential: Some("replicator".into()),
            checkpoint_retain: Some(3),
            replica_timeout: Some(2001),
            replication_log_bytes: Some(Size(65 << 20)),
            replication_lag_bytes: Some(Size(17 << 20)),
            metrics: Some(SocketAddr::from(([0, 0, 0, 0], 9070))),
            metrics_allow_remote: Some(true),
            coordinator: Some("etcd://10.0.0.9:2379".into()),
            lease_ms: Some(3001),
            replace_replica_after_ms: Some(30_001),
            local_socket: Some("/run/pagoda/pagoda.sock".into()),
        }
    }

    // Guards "the keys are the flags": every flag of `pagoda node` is a key
    // of the file and the other way round, and its variable is
    // PAGODA_NODE_ and the flag in upper snake case.
    #[test]
    fn every_flag_is_a_key_with_its_variable() {
        use clap::Args;
        let command = NodeSettings::augment_args(clap::Command::new("settings"));
        let mut flags: Vec<String> = Vec::new();
        for arg in command.get_arguments() {
            let long = arg.get_long().expect("every setting is a long flag");
            let variable = format!("PAGODA_NODE_{}", long.replace('-', "_").to_uppercase());
            assert_eq!(
                arg.get_env().and_then(|env| env.to_str()),
                Some(variable.as_str()),
                "--{long}"
            );
            flags.push(long.to_owned());
        }
        let mut keys: Vec<String> = every_setting().table().unwrap().keys().cloned().collect();
        flags.sort();
        keys.sort();
        assert_eq!(flags, keys);
        assert_eq!(setting_names().len(), keys.len());
    }

    // Guards the round trip: every setting written as TOML reads back as
    // itself, sizes in their exact spelling.
    #[test]
    fn settings_round_trip_through_toml() {
        let settings = every_setting();
        let text = settings.to_toml().unwrap();
        assert!(text.contains("capacity = \"3GiB\"\n"), "{text}");
        assert!(
            text.contains("peer = [\"10.0.0.2:7070\", \"node-3:7070\"]\n"),
            "{text}"
        );
        assert_eq!(NodeSettings::parse(&text).unwrap(), settings);
    }

    // Guards the layering: a later layer wins where it says something and
    // leaves the rest to the ones below.
    #[test]
    fn later_layers_win_setting_by_setting() {
        let file = NodeSettings {
            capacity: Some(Size(1 << 30)),
            spin_us: Some(7),
            ..NodeSettings::default()
        };
        let command_line = NodeSettings {
            capacity: Some(Size(2 << 30)),
            ..NodeSettings::default()
        };
        let layered =
            NodeSettings::layered(&[&NodeSettings::defaults(), &file, &command_line]).unwrap();
        assert_eq!(layered.capacity, Some(Size(2 << 30)));
        assert_eq!(layered.spin_us, Some(7));
        assert_eq!(
            layered.connections_max,
            NodeSettings::defaults().connections_max
        );
        assert_eq!(layered.data_dir, None);
    }

    // Guards the defaults: with capacity and data dir given, they make a
    // valid configuration, the one `NodeConfig::new` describes.
    #[test]
    fn defaults_make_a_valid_configuration() {
        let given = NodeSettings {
            capacity: Some(Size(64 << 20)),
            data_dir: Some(PathBuf::from("/tmp/pagoda")),
            ..NodeSettings::default()
        };
        let settings = NodeSettings::layered(&[&NodeSettings::defaults(), &given]).unwrap();
        let config = settings.node_config().unwrap();
        let expected = NodeConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 7070)),
            64 << 20,
            PathBuf::from("/tmp/pagoda"),
        );
        assert_eq!(config.spin, expected.spin);
        assert_eq!(config.writer_lease, expected.writer_lease);
        assert_eq!(
            config.connection_memory_bytes,
            expected.connection_memory_bytes
        );
        assert_eq!(config.replica_timeout, expected.replica_timeout);
        assert_eq!(config.lease, expected.lease);
        assert_eq!(config.replace_replica_after, expected.replace_replica_after);
        assert_eq!(config.checkpoint_interval, Some(Duration::from_secs(60)));
    }

    // Guards the bulk tier's flags: off by default, both given reach the
    // node's configuration, one without the other is refused naming it.
    #[test]
    fn bulk_settings_come_in_pairs() {
        let base = NodeSettings {
            capacity: Some(Size(64 << 20)),
            data_dir: Some(PathBuf::from("/tmp/pagoda")),
            ..NodeSettings::default()
        };
        let config = |given: &NodeSettings| {
            NodeSettings::layered(&[&NodeSettings::defaults(), given])
                .unwrap()
                .node_config()
        };
        assert!(config(&base).unwrap().bulk.is_none(), "off by default");
        let both = NodeSettings {
            bulk_dir: Some(PathBuf::from("/ssd/pagoda")),
            bulk_capacity: Some(Size(1 << 30)),
            ..base.clone()
        };
        let bulk = config(&both).unwrap().bulk.unwrap();
        assert_eq!(
            (bulk.dir, bulk.capacity_bytes),
            (PathBuf::from("/ssd/pagoda"), 1 << 30)
        );
        let dir_only = NodeSettings {
            bulk_capacity: None,
            ..both.clone()
        };
        assert!(
            config(&dir_only)
                .unwrap_err()
                .contains("--bulk-dir needs --bulk-capacity")
        );
        let capacity_only = NodeSettings {
            bulk_dir: None,
            ..both
        };
        assert!(
            config(&capacity_only)
                .unwrap_err()
                .contains("--bulk-capacity needs --bulk-dir")
        );
        assert_eq!(
            config(&base).unwrap().bulk_read_threads,
            pagoda_node::bulk::READ_THREADS
        );
        let threads = |count| NodeSettings {
            bulk_read_threads: Some(count),
            ..base.clone()
        };
        assert_eq!(config(&threads(0)).unwrap().bulk_read_threads, 0);
        assert_eq!(config(&base).unwrap().bulk_cache_bytes, None, "a quarter");
        let cache = NodeSettings {
            bulk_cache: Some(Size(32 << 20)),
            ..base.clone()
        };
        assert_eq!(config(&cache).unwrap().bulk_cache_bytes, Some(32 << 20));
        assert!(
            config(&threads(257))
                .unwrap_err()
                .contains("--bulk-read-threads 257 is more than 256")
        );
    }

    // Guards the S3 settings: given with S3 storage they reach the storage
    // configuration; given with any other storage they are refused, naming
    // the storage, rather than silently ignored.
    #[test]
    fn s3_settings_reach_s3_storage_only() {
        let given = NodeSettings {
            capacity: Some(Size(64 << 20)),
            data_dir: Some(PathBuf::from("/tmp/pagoda")),
            storage: Some("s3://bucket/prefix".into()),
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            s3_secret_access_key_file: Some(PathBuf::from("/etc/pagoda/s3-secret")),
            s3_allow_http: Some(true),
            ..NodeSettings::default()
        };
        let settings = NodeSettings::layered(&[&NodeSettings::defaults(), &given]).unwrap();
        match settings.node_config().unwrap().storage {
            Some(StorageConfig::S3 {
                bucket,
                prefix,
                settings,
            }) => {
                assert_eq!((bucket.as_str(), prefix.as_str()), ("bucket", "prefix"));
                assert_eq!(
                    settings,
                    S3Settings {
                        endpoint: Some("http://127.0.0.1:9000".into()),
                        secret_access_key_file: Some(PathBuf::from("/etc/pagoda/s3-secret")),
                        allow_http: Some(true),
                        ..S3Settings::default()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        for storage in [None, Some("/srv/checkpoints")] {
            let given = NodeSettings {
                storage: storage.map(str::to_owned),
                s3_region: Some("eu-central-1".into()),
                ..given.clone()
            };
            let settings = NodeSettings::layered(&[&NodeSettings::defaults(), &given]).unwrap();
            let error = settings.node_config().unwrap_err();
            assert!(
                error.contains("apply only to S3 storage")
                    && error.contains(storage.unwrap_or("default checkpoints directory")),
                "{error}"
            );
        }
    }

    // Guards the words for a bad address to listen on: what is missing,
    // said once (clap or the file's excerpt quotes the value).
    #[test]
    fn listen_addresses_name_what_is_missing() {
        assert_eq!(
            parse_socket_address("localhost"),
            Err("the port is missing (for example 127.0.0.1:7070)".into())
        );
        assert_eq!(
            parse_socket_address("[::1]"),
            Err("the port is missing (for example 127.0.0.1:7070)".into())
        );
        assert_eq!(
            parse_socket_address("127.0.0.1:x"),
            Err("\"x\" is not a port (for example 127.0.0.1:7070)".into())
        );
        assert!(
            parse_socket_address("localhost:7070")
                .unwrap_err()
                .starts_with("\"localhost\" is not an IP address")
        );
    }
}
