//! `pagoda node`: run a memory node until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pagoda_node::{Node, NodeConfig};

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
}

pub fn run(args: NodeArgs) -> Result<(), String> {
    let mut config = NodeConfig::new(args.listen, args.capacity, args.data_dir);
    config.spin = Duration::from_micros(args.spin_us);
    config.connections_max = args.connections_max;
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
        "pagoda node listening on {} with {} for pages; stop with Ctrl-C",
        node.local_addr(),
        format_bytes(args.capacity)
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("shutting down: finishing requests in flight");
    node.shutdown();
    Ok(())
}
