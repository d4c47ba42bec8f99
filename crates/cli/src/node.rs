//! `pagoda node`: run a memory node until SIGINT, SIGTERM or SIGPWR.
//!
//! A graceful stop loses nothing acknowledged: the node checkpoints every
//! region with dirty pages before it exits. If that fails (a full disk, an
//! unreachable store) even after retries, the node refuses to stop: it logs
//! which regions would lose what, and serves again. Signal it again once the
//! storage is mended; SIGQUIT stops it anyway, abandoning those changes, and
//! exits with a failure status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pagoda_node::{Node, NodeConfig, StorageConfig};

use crate::size::{format_bytes, parse_size};

/// Arguments of `pagoda node`: run a node, or with a subcommand look at one.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: Option<NodeCommand>,
    /// The address to listen on. A non-loopback address requires --token-file
    /// (or credentials) and TLS (--tls-cert, --tls-key) or --insecure-no-tls.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// RAM for region pages, like 4GiB. Regions may add up to more (thin
    /// provisioning); a write that needs a segment beyond it fails with an
    /// out-of-memory error.
    #[arg(long, value_parser = parse_size, value_name = "SIZE", required = true)]
    capacity: Option<u64>,
    /// Where the node keeps its region metadata.
    #[arg(long, value_name = "DIR", required = true)]
    data_dir: Option<PathBuf>,
    /// A file holding a shared token: the credential `default`, with admin
    /// on every region. Named credentials: `pagoda token`.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// How long the holder of a region's writer role may send nothing
    /// before another client may take the role over, in seconds.
    #[arg(long, default_value_t = pagoda_node::server::WRITER_LEASE_MS_DEFAULT / 1000, value_name = "SECONDS")]
    writer_lease: u64,
    /// How long a connection spins on non-blocking reads before it sleeps, in
    /// microseconds (0 to never spin).
    #[arg(long, default_value_t = pagoda_node::server::SPIN_US_DEFAULT)]
    spin_us: u64,
    /// Most connections served at once.
    #[arg(long, default_value_t = pagoda_node::server::CONNECTIONS_MAX_DEFAULT)]
    connections_max: usize,
    /// Most connections that may be authenticating at once; a new one beyond
    /// that closes the one that has been authenticating longest.
    #[arg(long, default_value_t = pagoda_node::server::HANDSHAKES_MAX_DEFAULT)]
    handshakes_max: usize,
    /// Node-wide memory for connection buffers beyond each connection's
    /// baseline (large frames and replies), like 256MiB. A request that
    /// cannot get its buffers within a second is answered "busy".
    #[arg(long, value_parser = parse_size, value_name = "SIZE", default_value = "256MiB")]
    connection_memory: u64,
    /// How long a frame that has begun to arrive, or a reply that has begun
    /// to be written, may take before the connection is closed, in
    /// milliseconds.
    #[arg(long, default_value_t = pagoda_node::server::FRAME_TIMEOUT_MS_DEFAULT, value_name = "MS")]
    frame_timeout_ms: u64,
    /// Serve TLS with this certificate chain (PEM); with --tls-key. Required
    /// on a non-loopback address unless --insecure-no-tls. The files are
    /// re-read when they change, so a renewed certificate needs no restart.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by the authorities in this PEM
    /// file.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS: tokens, proofs and
    /// pages travel in clear.
    #[arg(long, conflicts_with = "tls_cert")]
    insecure_no_tls: bool,
    /// Speak TLS to other nodes (a recovery's source, a region's replicas),
    /// trusting the authorities in this PEM file; this node's --tls-cert and
    /// --tls-key are its client certificate where the peer requires one.
    #[arg(long, value_name = "FILE")]
    peer_tls_ca: Option<PathBuf>,
    /// Where checkpoints go: a directory, file:///path, or s3://bucket/prefix
    /// (endpoint and credentials from AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP). Default:
    /// the `checkpoints` directory in the data dir. `none` disables
    /// checkpoints.
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
    /// Checkpoint every region with dirty pages this often, in seconds
    /// (0: only on request).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    checkpoint_interval: u64,
    /// How long a graceful stop retries failed checkpoints before it gives up
    /// and goes on serving, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    stop_retry: u64,
    /// Start even if the catalog and storage disagree: with `regions.meta`
    /// missing from a data dir a node has used, start with no regions; with a
    /// region's newest checkpoint gone from storage, roll it back to the
    /// newest one left. Without it the node refuses to start and says why.
    #[arg(long)]
    accept_storage_mismatch: bool,
    /// A node this one may connect to, as a recovery's source or as a
    /// replicated region's replica (repeat for several). Without any, only
    /// addresses on this host's loopback.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    peers: Vec<String>,
    /// The credential this node authenticates as to a recovery's source
    /// (with the token the recovery carries, or this node's --token-file)
    /// and to a region's replicas (with this node's --token-file).
    #[arg(long, default_value = pagoda::DEFAULT_CREDENTIAL, value_name = "NAME")]
    peer_credential: String,
    /// Checkpoints kept per region; older ones are garbage-collected.
    #[arg(long, default_value_t = pagoda_node::server::CHECKPOINT_RETAIN_DEFAULT)]
    checkpoint_retain: usize,
    /// Replication: how long an in-sync replica may leave a write
    /// unacknowledged before its primary drops it from the in-sync set
    /// (`sync` writes then go on without it); a replica that hears nothing
    /// from its primary for half of it counts itself out of sync. In
    /// milliseconds, at least 400 (four heartbeats).
    #[arg(long, default_value_t = pagoda_node::server::REPLICA_TIMEOUT_MS_DEFAULT, value_name = "MS")]
    replica_timeout: u64,
    /// Replication: the most bytes of recent writes a primary keeps per
    /// region, so that a replica that fell behind or reconnects receives only
    /// what it missed; one further behind is rebuilt by segment digests. At
    /// least 1MiB.
    #[arg(long, value_parser = parse_size, value_name = "SIZE", default_value = "64MiB")]
    replication_log_bytes: u64,
    /// Replication, `async` mode: the most bytes an in-sync replica may lag
    /// behind its primary before writes wait for it.
    #[arg(long, value_parser = parse_size, value_name = "SIZE", default_value = "16MiB")]
    replication_lag_bytes: u64,
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g.
    /// 127.0.0.1:9070; port 0 picks a free one. Off by default. The endpoint
    /// has no authentication: a non-loopback address also needs
    /// --metrics-allow-remote.
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<SocketAddr>,
    /// Serve metrics on a non-loopback --metrics address, to anyone who can
    /// reach it.
    #[arg(long, requires = "metrics")]
    metrics_allow_remote: bool,
    /// The cluster coordinator this node registers with and records its
    /// regions in: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (an etcd
    /// cluster; prefix `pagoda` by default) or `embedded:DIR` (a file in a
    /// directory shared by the nodes of one machine). Default: the embedded
    /// one in the data dir (one node, no failover).
    #[arg(long, value_name = "ENDPOINT")]
    coordinator: Option<String>,
    /// The node's lease in the coordinator, in milliseconds: the node counts
    /// as failed, and its regions fail over, once it has not renewed it for
    /// this long. At least 1000; rounded up to whole seconds for etcd, whose
    /// leases are whole seconds.
    #[arg(long, default_value_t = pagoda_node::config::LEASE_MS_DEFAULT, value_name = "MS")]
    lease_ms: u64,
    /// With a shared --coordinator: how long a replica's node may be gone
    /// from the cluster before the primary builds a new replica on another
    /// live node (the most free bytes first), to restore the replica count,
    /// in milliseconds.
    #[arg(
        long,
        default_value_t = pagoda_node::config::REPLACE_REPLICA_AFTER_MS_DEFAULT,
        value_name = "MS"
    )]
    replace_replica_after_ms: u64,
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

pub fn run(args: NodeArgs, log_format: crate::LogFormat) -> Result<(), String> {
    if let Some(NodeCommand::Stat { json, node }) = &args.command {
        return stat(node, *json);
    }
    let capacity = args
        .capacity
        .expect("clap requires --capacity without a subcommand");
    let data_dir = args
        .data_dir
        .clone()
        .expect("clap requires --data-dir without a subcommand");
    let mut config = NodeConfig::new(args.listen, capacity, data_dir);
    config.spin = Duration::from_micros(args.spin_us);
    config.connections_max = args.connections_max;
    config.handshakes_max = args.handshakes_max;
    config.connection_memory_bytes = usize::try_from(args.connection_memory)
        .map_err(|_| "--connection-memory is too large".to_string())?;
    config.frame_timeout = Duration::from_millis(args.frame_timeout_ms);
    if let (Some(cert_file), Some(key_file)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(pagoda_node::TlsConfig {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: args.tls_ca.clone(),
        });
    }
    config.insecure_no_tls = args.insecure_no_tls;
    config.peer_tls = args.peer_tls_ca.as_ref().map(|ca_file| pagoda::TlsOptions {
        ca_file: ca_file.clone(),
        cert_file: args.tls_cert.clone(),
        key_file: args.tls_key.clone(),
        server_name: None,
    });
    config.storage = match args.storage.as_deref() {
        Some("none") => None,
        Some(url) => Some(StorageConfig::parse(url).map_err(|e| e.to_string())?),
        None => Some(StorageConfig::Dir(config.data_dir.join("checkpoints"))),
    };
    config.checkpoint_interval =
        (args.checkpoint_interval > 0).then(|| Duration::from_secs(args.checkpoint_interval));
    config.checkpoint_retain = args.checkpoint_retain;
    config.accept_storage_mismatch = args.accept_storage_mismatch;
    config.peer_credential = args.peer_credential.clone();
    for peer in &args.peers {
        use std::net::ToSocketAddrs;
        crate::check_address("--peer", peer)?;
        let addresses = peer
            .to_socket_addrs()
            .map_err(|e| format!("--peer {peer}: {e}"))?;
        config.peers.extend(addresses);
    }
    if let Some(path) = &args.token_file {
        config.token = Some(crate::read_token(path)?);
    }
    if args.writer_lease == 0 {
        return Err("--writer-lease must be at least 1 second".into());
    }
    config.writer_lease = Duration::from_secs(args.writer_lease);
    if args.replica_timeout < REPLICA_TIMEOUT_MS_MIN {
        return Err(format!(
            "--replica-timeout must be at least {REPLICA_TIMEOUT_MS_MIN} ms: a replica counts \
             itself out of sync after half of it without a heartbeat, and they come every {} ms",
            pagoda_node::replication::HEARTBEAT.as_millis()
        ));
    }
    config.replica_timeout = Duration::from_millis(args.replica_timeout);
    if args.replication_log_bytes < REPLICATION_LOG_BYTES_MIN {
        return Err(format!(
            "--replication-log-bytes must be at least {}",
            format_bytes(REPLICATION_LOG_BYTES_MIN)
        ));
    }
    config.replication_log_bytes = usize::try_from(args.replication_log_bytes)
        .map_err(|_| "--replication-log-bytes is too large".to_string())?;
    config.replication_lag_bytes = usize::try_from(args.replication_lag_bytes)
        .map_err(|_| "--replication-lag-bytes is too large".to_string())?;
    config.metrics = args.metrics;
    config.metrics_allow_remote = args.metrics_allow_remote;
    if args.lease_ms < LEASE_MS_MIN {
        return Err(format!(
            "--lease-ms {} is too short: at least {LEASE_MS_MIN} ms (etcd leases are whole \
             seconds, at least one)",
            args.lease_ms
        ));
    }
    config.lease = Duration::from_millis(args.lease_ms);
    config.replace_replica_after = Duration::from_millis(args.replace_replica_after_ms);
    config.coordinator = args.coordinator.clone();
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
        args.storage.as_deref().unwrap_or("<data dir>/checkpoints")
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
        match node.try_stop(Duration::from_secs(args.stop_retry)) {
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
    }
    Ok(())
}
