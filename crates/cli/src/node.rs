//! `pagoda node`: run a memory node until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pagoda_node::{Node, NodeConfig, StorageConfig};

use crate::size::{format_bytes, parse_size};

/// Arguments of `pagoda node`.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// The address to listen on. A non-loopback address requires --token-file.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// RAM for region pages, like 4GiB. Regions may add up to more (thin
    /// provisioning); a write that needs a segment beyond it fails with an
    /// out-of-memory error.
    #[arg(long, value_parser = parse_size)]
    capacity: u64,
    /// Where the node keeps its region metadata.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// A file holding the shared token clients must present.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// How long a connection spins on non-blocking reads before it sleeps, in
    /// microseconds (0 to never spin).
    #[arg(long, default_value_t = pagoda_node::server::SPIN_US_DEFAULT)]
    spin_us: u64,
    /// Most connections served at once.
    #[arg(long, default_value_t = pagoda_node::server::CONNECTIONS_MAX_DEFAULT)]
    connections_max: usize,
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
    /// Checkpoints kept per region; older ones are garbage-collected.
    #[arg(long, default_value_t = pagoda_node::server::CHECKPOINT_RETAIN_DEFAULT)]
    checkpoint_retain: usize,
}

pub fn run(args: NodeArgs) -> Result<(), String> {
    let mut config = NodeConfig::new(args.listen, args.capacity, args.data_dir);
    config.spin = Duration::from_micros(args.spin_us);
    config.connections_max = args.connections_max;
    config.storage = match args.storage.as_deref() {
        Some("none") => None,
        Some(url) => Some(StorageConfig::parse(url).map_err(|e| e.to_string())?),
        None => Some(StorageConfig::Dir(config.data_dir.join("checkpoints"))),
    };
    config.checkpoint_interval =
        (args.checkpoint_interval > 0).then(|| Duration::from_secs(args.checkpoint_interval));
    config.checkpoint_retain = args.checkpoint_retain;
    if let Some(path) = &args.token_file {
        config.token = Some(crate::read_token(path)?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("installing a signal handler: {e}"))?;
    }
    let node = Node::start(config).map_err(|e| e.to_string())?;
    eprintln!(
        "pagoda node listening on {} with {} for pages, checkpoints in {}; stop with Ctrl-C",
        node.local_addr(),
        format_bytes(args.capacity),
        args.storage.as_deref().unwrap_or("<data dir>/checkpoints")
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("shutting down: finishing requests in flight");
    node.shutdown();
    Ok(())
}
