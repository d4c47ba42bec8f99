//! `pagoda region`: create, list, inspect, delete, checkpoint, recover and
//! checksum regions; show a replicated region's replicas and promote one.

use std::sync::Arc;

use pagoda::{RegionStat, ReplicaInfo, ReplicaRole, ReplicaSet, ReplicationMode};
use pagoda_cluster::Coordinator;

use crate::NodeAddress;
use crate::size::{SizeArg, check_region_size, format_bytes, parse_size, parse_size_arg};

/// Arguments of `pagoda region`.
#[derive(clap::Args, Debug)]
pub struct RegionArgs {
    #[command(subcommand)]
    command: RegionCommand,
    #[command(flatten)]
    node: NodeAddress,
    /// Go through this cluster coordinator instead of --node
    /// (etcd://HOST:PORT[,HOST:PORT...][/PREFIX] or embedded:DIR): `create`
    /// places the region on its live nodes by free bytes, the commands that
    /// name a region reach its primary as recorded there. Not with --node.
    #[arg(long, global = true, value_name = "ENDPOINT")]
    coordinator: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum RegionCommand {
    /// Create a region.
    Create {
        /// The region's name.
        name: String,
        /// Its size, like 1GiB; a multiple of the page size.
        #[arg(long, value_parser = parse_size_arg)]
        size: SizeArg,
        /// Its page size: a power of two from 4KiB to 2MiB.
        #[arg(long, value_parser = parse_size, default_value = "4KiB")]
        page_size: u64,
        /// Replicate it: a replica on each of these nodes (HOST:PORT, comma
        /// separated), which --node, its primary, connects to with its
        /// cluster credential. With --coordinator: how many replicas, the
        /// coordinator's live nodes with the most free bytes holding them.
        #[arg(long, value_name = "ADDR[,ADDR...] | N", value_delimiter = ',')]
        replicas: Vec<String>,
        /// When a write is acknowledged: `sync`, once every in-sync replica
        /// has it; `async`, by the primary alone, replicas following with a
        /// bounded lag (--replication-lag-bytes of the primary).
        #[arg(long, value_enum, default_value_t = Mode::Sync, requires = "replicas")]
        mode: Mode,
    },
    /// List regions.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a region's statistics.
    Stat {
        /// The region's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a region, free its RAM and remove its checkpoints.
    Rm {
        /// The region's name.
        name: String,
    },
    /// Take a checkpoint of a region to the node's storage backend.
    Checkpoint {
        /// The region's name.
        name: String,
        /// Write every page, not only those dirty since the last checkpoint.
        #[arg(long)]
        full: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a digest of a region's contents, computed by the node, to
    /// compare copies of a region on different nodes. Not a consistent
    /// snapshot while the region is being written.
    Checksum {
        /// The region's name.
        name: String,
        /// Also print each segment's digest.
        #[arg(long)]
        segments: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a replicated region as --node sees it: its role, the primary,
    /// the epochs, the log position and whether it is in sync; on the
    /// primary, each replica's acknowledged position, state and lag.
    Replicas {
        /// The region's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make --node's replica of a region its primary, at a new primary
    /// epoch. Refused for a replica not known to be in sync (the refusal
    /// says what --force would lose).
    Promote {
        /// The region's name.
        name: String,
        /// Promote even a replica not known to be in sync (or a fenced
        /// copy): writes the old primary acknowledged after this replica's
        /// position are lost.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a region on node --to from its latest baseline plus the pages
    /// dirty on node --from since (moving it: the copy on --from becomes
    /// read-only).
    Recover {
        /// The region's name.
        name: String,
        /// The node holding the region now.
        #[arg(long, value_name = "ADDR", required_unless_present = "baseline_only")]
        from: Option<String>,
        /// The node to rebuild it on (default: --node).
        #[arg(long, value_name = "ADDR")]
        to: Option<String>,
        /// A file holding the --from node's token (default: --token-file).
        #[arg(long, value_name = "FILE")]
        from_token_file: Option<std::path::PathBuf>,
        /// Recover from the baseline alone when --from is lost: every write
        /// since the last checkpoint is lost.
        #[arg(long, conflicts_with = "from")]
        baseline_only: bool,
        /// Print the result as JSON (no progress bars).
        #[arg(long)]
        json: bool,
    },
}

/// A replicated region's mode, on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Acknowledged once every in-sync replica has the write.
    Sync,
    /// Acknowledged by the primary; replicas follow with a bounded lag.
    Async,
}

impl From<Mode> for ReplicationMode {
    fn from(mode: Mode) -> ReplicationMode {
        match mode {
            Mode::Sync => ReplicationMode::Sync,
            Mode::Async => ReplicationMode::Async,
        }
    }
}

/// Checks a --replicas list: no address empty or named twice. (The node
/// checks the rest: how many, and that it may reach them.)
pub fn check_replicas(replicas: &[String]) -> Result<(), String> {
    for (index, replica) in replicas.iter().enumerate() {
        if replica.trim().is_empty() {
            return Err("--replicas has an empty address".into());
        }
        crate::check_address("--replicas", replica)?;
        if replicas[..index].contains(replica) {
            return Err(format!("--replicas names {replica} twice"));
        }
    }
    Ok(())
}

fn stat_json(stat: &RegionStat) -> serde_json::Value {
    serde_json::json!({
        "name": stat.info.name,
        "id": stat.info.id,
        "size": stat.info.size,
        "page_size": stat.info.page_size,
        "segments_allocated": stat.segments_allocated,
        "resident_bytes": stat.resident_bytes,
        "pages_read": stat.pages_read,
        "pages_written": stat.pages_written,
        "state": stat.state.name(),
        "checkpoint": stat.checkpoint,
        "checkpoint_age_ms": (stat.checkpoint_age_ms != u64::MAX).then_some(stat.checkpoint_age_ms),
        "dirty_pages": stat.dirty_pages,
        "uid": format!("{:016x}", stat.uid),
        "metadata_bytes": stat.metadata_bytes,
        "segments_paged_out": stat.segments_paged_out,
        "bulk_bytes": stat.bulk_bytes,
        "bulk_zero_bytes": stat.bulk_zero_bytes,
        "segments_loading": stat.segments_loading,
        "state_reason": (!stat.state_reason.is_empty()).then_some(&stat.state_reason),
    })
}

/// With --coordinator, how many replicas `--replicas N` asks for (none
/// without it).
fn replica_count(replicas: &[String]) -> Result<usize, String> {
    match replicas {
        [] => Ok(0),
        [count] if count.trim().parse::<usize>().is_ok() => {
            Ok(count.trim().parse().expect("checked"))
        }
        _ => Err(format!(
            "--replicas {}: with --coordinator, --replicas is how many replicas (--replicas 2); \
             the coordinator chooses the nodes",
            replicas.join(",")
        )),
    }
}

/// What --coordinator decided for a command: the node it goes to is written
/// into the arguments as if given with --node.
enum Resolved {
    /// A new region's placement.
    Placed {
        coordinator: Arc<dyn Coordinator>,
        placement: crate::cluster::Placement,
    },
    /// A named region's primary, as recorded.
    Primary { name: String },
}

/// Finds where a command goes with --coordinator ENDPOINT: `create` places
/// the region (and fills in --replicas with the chosen nodes), the commands
/// that name a region go to its recorded primary. `ls`, `promote` and
/// `recover` are about particular nodes and are refused.
fn resolve(args: &mut RegionArgs, endpoint: &str) -> Result<Resolved, String> {
    match &args.command {
        RegionCommand::Ls { .. } => {
            return Err(
                "region ls lists one node's regions: give --node, not --coordinator \
                        (pagoda cluster status lists the coordinator's regions)"
                    .into(),
            );
        }
        RegionCommand::Promote { .. } => {
            return Err(
                "region promote promotes the replica on --node: give --node, not \
                        --coordinator (pagoda cluster status shows each region's replicas)"
                    .into(),
            );
        }
        RegionCommand::Recover { .. } => {
            return Err(
                "region recover moves a region between the nodes given with --from and \
                        --to (default --node): give them, not --coordinator"
                    .into(),
            );
        }
        _ => {}
    }
    if let RegionCommand::Create { replicas, .. } = &args.command {
        // Checked before the coordinator is asked anything.
        replica_count(replicas)?;
    }
    let coordinator = crate::cluster::open(endpoint)?;
    match &mut args.command {
        RegionCommand::Create { name, replicas, .. } => {
            let count = replica_count(replicas)?;
            if let Some(record) = coordinator.region(name).map_err(|e| e.to_string())? {
                return Err(format!(
                    "region {name:?} already exists in the coordinator {} (primary {})",
                    coordinator.endpoint(),
                    record.value.primary
                ));
            }
            let placement = crate::cluster::place_region(&*coordinator, name, count)?;
            args.node.node = placement.primary.addr.clone();
            *replicas = placement
                .replicas
                .iter()
                .map(|node| node.addr.clone())
                .collect();
            Ok(Resolved::Placed {
                coordinator,
                placement,
            })
        }
        RegionCommand::Stat { name, .. }
        | RegionCommand::Rm { name }
        | RegionCommand::Checkpoint { name, .. }
        | RegionCommand::Checksum { name, .. }
        | RegionCommand::Replicas { name, .. } => {
            let record = crate::cluster::region_record(&*coordinator, name)?;
            args.node.node = record.primary;
            Ok(Resolved::Primary { name: name.clone() })
        }
        RegionCommand::Ls { .. }
        | RegionCommand::Promote { .. }
        | RegionCommand::Recover { .. } => {
            unreachable!("refused above")
        }
    }
}

/// `pagoda region`. `node_on_command_line`: --node was given on the command
/// line (not only by PAGODA_NODE, which --coordinator overrides).
pub fn run(mut args: RegionArgs, node_on_command_line: bool) -> Result<(), String> {
    let resolved = match args.coordinator.clone() {
        Some(_) if node_on_command_line => {
            return Err(
                "--node and --coordinator are mutually exclusive: --coordinator finds \
                        the node itself"
                    .into(),
            );
        }
        Some(endpoint) => Some(resolve(&mut args, &endpoint)?),
        None => None,
    };
    if let RegionCommand::Recover {
        name,
        from,
        to,
        from_token_file,
        baseline_only,
        json,
    } = args.command
    {
        let mut target = args.node.clone();
        if let Some(to) = to {
            crate::check_address("--to", &to)?;
            target.node = to;
        }
        if let Some(from) = &from {
            crate::check_address("--from", from)?;
        }
        let source_token = match from_token_file.as_ref().or(args.node.token_file.as_ref()) {
            Some(path) => Some(crate::read_token(path)?),
            None => None,
        };
        return recover(
            &target,
            &name,
            from.as_deref(),
            source_token.as_deref(),
            baseline_only,
            json,
        );
    }
    if let RegionCommand::Create {
        replicas,
        size,
        page_size,
        ..
    } = &args.command
    {
        if resolved.is_none() && replica_count(replicas).is_ok_and(|count| count > 0) {
            return Err(format!(
                "--replicas {} is a count of replicas, which needs --coordinator ENDPOINT to \
                 choose the nodes; with --node, --replicas lists the replicas' addresses \
                 (HOST:PORT,...)",
                replicas.join(",")
            ));
        }
        check_replicas(replicas)?;
        // The node checks the page size and says what is wrong with it;
        // only against a valid one are multiples worth suggesting.
        if page_size.is_power_of_two() {
            check_region_size(&size.text, size.bytes, *page_size)?;
        }
    }
    let connected = match args.command {
        // A checkpoint's reply waits for the whole checkpoint.
        RegionCommand::Checkpoint { .. } => args
            .node
            .connect_with_timeout(std::time::Duration::from_secs(CHECKPOINT_TIMEOUT_S)),
        // The whole-region digest's reply waits for the node to hash
        // every written segment.
        RegionCommand::Checksum { .. } => args
            .node
            .connect_with_timeout(std::time::Duration::from_secs(CHECKSUM_TIMEOUT_S)),
        _ => args.node.connect(),
    };
    let client = connected.map_err(|error| match &resolved {
        Some(Resolved::Primary { name }) => {
            format!("{error} (the primary of {name:?} in the coordinator)")
        }
        Some(Resolved::Placed { .. }) => format!("{error} (the primary chosen by the coordinator)"),
        None => error,
    })?;
    match args.command {
        RegionCommand::Create {
            name,
            size,
            page_size,
            replicas,
            mode,
        } => {
            let page_size = u32::try_from(page_size)
                .map_err(|_| format!("page size {page_size} is too large"))?;
            let size = size.bytes;
            let info = if replicas.is_empty() {
                client.create_region(&name, size, page_size)
            } else {
                let replicas: Vec<&str> = replicas.iter().map(String::as_str).collect();
                client.create_replicated_region(&name, size, page_size, &replicas, mode.into())
            }
            .map_err(crate::client_error)?;
            println!(
                "created region {:?} (id {}): {} in pages of {}",
                info.name,
                info.id,
                format_bytes(info.size),
                format_bytes(info.page_size as u64)
            );
            if !replicas.is_empty() {
                println!(
                    "primary {}, {} replicas: {}",
                    args.node.node,
                    ReplicationMode::from(mode).name(),
                    replicas.join(", ")
                );
            }
            if let Some(Resolved::Placed {
                coordinator,
                placement,
            }) = &resolved
            {
                report_placement(&**coordinator, &info.name, placement);
            }
        }
        RegionCommand::Ls { json } => {
            let list = client.list_regions().map_err(crate::client_error)?;
            if json {
                let items: Vec<_> = list
                    .iter()
                    .map(|r| serde_json::json!({"name": r.name, "id": r.id, "size": r.size, "page_size": r.page_size}))
                    .collect();
                println!("{}", serde_json::Value::Array(items));
            } else if list.is_empty() {
                println!("no regions");
            } else {
                println!("{:<32} {:>6} {:>12} {:>10}", "NAME", "ID", "SIZE", "PAGE");
                for region in list {
                    println!(
                        "{:<32} {:>6} {:>12} {:>10}",
                        region.name,
                        region.id,
                        format_bytes(region.size),
                        format_bytes(region.page_size as u64)
                    );
                }
            }
        }
        RegionCommand::Stat { name, json } => {
            let stat = client.stat_region(&name).map_err(crate::client_error)?;
            if json {
                println!("{}", stat_json(&stat));
            } else {
                println!("region          {} (id {})", stat.info.name, stat.info.id);
                println!("size            {}", format_bytes(stat.info.size));
                println!(
                    "page size       {}",
                    format_bytes(stat.info.page_size as u64)
                );
                println!(
                    "resident        {} in {} segments",
                    format_bytes(stat.resident_bytes),
                    stat.segments_allocated
                );
                if stat.segments_paged_out > 0 {
                    println!(
                        "on disk         {} in {} segments ({} of it zero pages, stored as nothing)",
                        format_bytes(stat.bulk_bytes),
                        stat.segments_paged_out,
                        format_bytes(stat.bulk_zero_bytes)
                    );
                }
                println!("metadata        {}", format_bytes(stat.metadata_bytes));
                println!("pages read      {}", stat.pages_read);
                println!("pages written   {}", stat.pages_written);
                if stat.state_reason.is_empty() {
                    println!("state           {}", stat.state.name());
                } else {
                    println!(
                        "state           {}: {}",
                        stat.state.name(),
                        stat.state_reason
                    );
                }
                if stat.segments_loading > 0 {
                    println!(
                        "loading         {} segments left to load from the baseline (served on first access meanwhile)",
                        stat.segments_loading
                    );
                }
                if stat.checkpoint == 0 {
                    println!("checkpoint      none");
                } else {
                    println!(
                        "checkpoint      {}, taken {:.1} s ago",
                        stat.checkpoint,
                        stat.checkpoint_age_ms as f64 / 1000.0
                    );
                }
                println!("dirty pages     {} since the checkpoint", stat.dirty_pages);
            }
        }
        RegionCommand::Rm { name } => {
            client.delete_region(&name).map_err(crate::client_error)?;
            println!("deleted region {name:?}");
        }
        RegionCommand::Checkpoint { name, full, json } => {
            let spinner = (!json).then(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_message(format!("checkpointing {name:?}"));
                bar.enable_steady_tick(std::time::Duration::from_millis(100));
                bar
            });
            let result = client.checkpoint(&name, full);
            if let Some(bar) = spinner {
                bar.finish_and_clear();
            }
            let info = result.map_err(crate::client_error)?;
            let seconds = info.micros as f64 / 1e6;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": name,
                        "number": info.number,
                        "full": info.full,
                        "pages": info.pages,
                        "bytes": info.bytes,
                        "objects": info.objects,
                        "baseline_pages": info.baseline_pages,
                        "seconds": seconds,
                    })
                );
            } else {
                println!(
                    "checkpoint {} of {name:?} ({}): {} pages, {} in {} objects, {:.3} s ({}/s); the baseline holds {} pages",
                    info.number,
                    if info.full { "full" } else { "incremental" },
                    info.pages,
                    format_bytes(info.bytes),
                    info.objects,
                    seconds,
                    format_bytes((info.bytes as f64 / seconds.max(1e-9)) as u64),
                    info.baseline_pages
                );
            }
        }
        RegionCommand::Checksum {
            name,
            segments,
            json,
        } => checksum(&client, &name, segments, json)?,
        RegionCommand::Replicas { name, json } => {
            let set = client.replicas(&name).map_err(crate::client_error)?;
            if json {
                println!("{}", replica_set_json(&name, &set));
            } else {
                print_replica_set(&name, &set);
            }
        }
        RegionCommand::Promote { name, force, json } => {
            let set = client.promote(&name, force).map_err(crate::client_error)?;
            if json {
                println!("{}", replica_set_json(&name, &set));
            } else {
                println!(
                    "promoted {name:?} on {}: {} at primary epoch {} (writer epoch {}, LSN {})",
                    args.node.node,
                    set.role.name(),
                    set.primary_epoch,
                    set.writer_epoch,
                    set.lsn
                );
                if !set.replicas.is_empty() {
                    let addresses: Vec<&str> =
                        set.replicas.iter().map(|r| r.addr.as_str()).collect();
                    println!("its replicas: {}", addresses.join(", "));
                }
                if !set.message.is_empty() {
                    println!("{}", set.message);
                }
            }
        }
        RegionCommand::Recover { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// After `create --coordinator`: where the region went and why, and
/// whether its primary recorded it in the coordinator (a node started
/// without this --coordinator records it elsewhere).
fn report_placement(
    coordinator: &dyn Coordinator,
    name: &str,
    placement: &crate::cluster::Placement,
) {
    let mut chosen = vec![format!(
        "primary {} ({} free)",
        placement.primary.addr,
        format_bytes(placement.primary.free_bytes)
    )];
    chosen.extend(placement.replicas.iter().map(|node| {
        format!(
            "replica {} ({} free)",
            node.addr,
            format_bytes(node.free_bytes)
        )
    }));
    println!(
        "placed by the coordinator {} (most free bytes first): {}",
        coordinator.endpoint(),
        chosen.join(", ")
    );
    match coordinator.region(name) {
        Ok(Some(record)) => println!(
            "recorded in the coordinator: primary {} at primary epoch {}",
            record.value.primary, record.value.primary_epoch
        ),
        Ok(None) => eprintln!(
            "warning: the coordinator {} has no record of region {name:?}: was {} started with \
             --coordinator {}?",
            coordinator.endpoint(),
            placement.primary.addr,
            coordinator.endpoint()
        ),
        Err(error) => eprintln!("warning: reading the region's record back: {error}"),
    }
}

/// One replica as a primary reports it, as JSON (documented in README.md;
/// `pagoda cluster status --json` uses it too).
pub fn replica_json(replica: &ReplicaInfo) -> serde_json::Value {
    serde_json::json!({
        "addr": replica.addr,
        "acked_lsn": replica.acked,
        "in_sync": replica.in_sync,
        "connected": replica.connected,
        "lag_bytes": replica.lag_bytes,
        "lag_ms": replica.lag_ms,
        "sent_bytes": replica.sent_bytes,
        "rebuilt_bytes": replica.rebuilt_bytes,
        "rebuilds": replica.rebuilds,
        "message": replica.message,
    })
}

/// A region's replication as JSON: the fields of `ReplicaSet`, and on a
/// primary one object per replica (documented in README.md).
fn replica_set_json(name: &str, set: &ReplicaSet) -> serde_json::Value {
    let replicas: Vec<serde_json::Value> = set.replicas.iter().map(replica_json).collect();
    serde_json::json!({
        "name": name,
        "role": set.role.name(),
        "mode": set.mode.name(),
        "primary": set.primary,
        "primary_epoch": set.primary_epoch,
        "writer_epoch": set.writer_epoch,
        "lsn": set.lsn,
        "checkpoint": set.checkpoint,
        "checkpoint_lsn": set.checkpoint_lsn,
        "in_sync": set.in_sync,
        "message": set.message,
        "replicas": replicas,
    })
}

/// `pagoda region replicas` as text: the node's view, then on a primary a
/// table of its replicas.
fn print_replica_set(name: &str, set: &ReplicaSet) {
    let yes_no = |value: bool| if value { "yes" } else { "no" };
    println!("region          {name}");
    println!("role            {}", set.role.name());
    if set.role == ReplicaRole::Solo {
        println!("not replicated");
        return;
    }
    println!("mode            {}", set.mode.name());
    println!(
        "primary         {}",
        if set.primary.is_empty() {
            "unknown"
        } else {
            &set.primary
        }
    );
    println!("primary epoch   {}", set.primary_epoch);
    println!("writer epoch    {}", set.writer_epoch);
    println!("lsn             {}", set.lsn);
    if set.checkpoint == 0 {
        println!("checkpoint      none known");
    } else {
        println!(
            "checkpoint      {} (holds writes through lsn {})",
            set.checkpoint, set.checkpoint_lsn
        );
    }
    println!("in sync         {}", yes_no(set.in_sync));
    if !set.message.is_empty() {
        println!("message         {}", set.message);
    }
    if set.role != ReplicaRole::Primary {
        return;
    }
    if set.replicas.is_empty() {
        println!("no replicas");
        return;
    }
    println!();
    println!(
        "{:<24} {:>12} {:>7} {:>9} {:>12} {:>9}  MESSAGE",
        "REPLICA", "ACKED LSN", "IN SYNC", "CONNECTED", "LAG", "LAG MS"
    );
    for replica in &set.replicas {
        println!(
            "{:<24} {:>12} {:>7} {:>9} {:>12} {:>9}  {}",
            replica.addr,
            replica.acked,
            yes_no(replica.in_sync),
            yes_no(replica.connected),
            format_bytes(replica.lag_bytes),
            replica.lag_ms,
            replica.message
        );
    }
}

/// How long `region checkpoint` waits for the node's reply.
const CHECKPOINT_TIMEOUT_S: u64 = 6 * 3600;

/// How long `region checksum` waits for the node's reply (hashing 1 TiB at
/// under 1 GB/s takes tens of minutes).
const CHECKSUM_TIMEOUT_S: u64 = 6 * 3600;

/// A digest as lowercase hexadecimal.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `pagoda region checksum`: the region's digest, its segment size and
/// count, and with `segments` one line (or JSON entry) per segment.
fn checksum(client: &pagoda::Client, name: &str, segments: bool, json: bool) -> Result<(), String> {
    let checksum = client
        .checksum(name, segments)
        .map_err(crate::client_error)?;
    if json {
        let mut value = serde_json::json!({
            "name": name,
            "digest": hex(&checksum.digest),
            "segment_bytes": checksum.segment_bytes,
            "segment_count": checksum.segment_count,
        });
        if segments {
            value["segments"] = checksum
                .segments
                .iter()
                .enumerate()
                .map(|(index, digest)| serde_json::json!({"index": index, "digest": hex(digest)}))
                .collect();
        }
        println!("{value}");
    } else {
        println!("{}", hex(&checksum.digest));
        println!(
            "{} segments of {}",
            checksum.segment_count,
            format_bytes(checksum.segment_bytes)
        );
        for (index, digest) in checksum.segments.iter().enumerate() {
            println!("{index} {}", hex(digest));
        }
    }
    Ok(())
}

fn recover(
    target: &NodeAddress,
    name: &str,
    from: Option<&str>,
    source_token: Option<&[u8]>,
    baseline_only: bool,
    json: bool,
) -> Result<(), String> {
    let client = target.connect()?;
    let bars = (!json).then(|| {
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>9} [{bar:40}] {pos}/{len} pages {msg}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        let baseline = multi.add(indicatif::ProgressBar::new(0).with_style(style.clone()));
        baseline.set_prefix("baseline");
        let source = multi.add(indicatif::ProgressBar::new(0).with_style(style));
        source.set_prefix("source");
        (multi, baseline, source)
    });
    let result = client.recover(
        name,
        from,
        source_token,
        baseline_only,
        std::time::Duration::from_millis(100),
        |progress| {
            if let Some((_, baseline, source)) = &bars {
                baseline.set_length(progress.baseline_pages);
                baseline.set_position(progress.baseline_pages_done);
                baseline.set_message(format!("({} read)", format_bytes(progress.storage_bytes)));
                source.set_length(progress.source_pages);
                source.set_position(progress.source_pages_done);
                source.set_message(format!("({} copied)", format_bytes(progress.source_bytes)));
            }
        },
    );
    if let Some((_, baseline, source)) = &bars {
        baseline.finish();
        source.finish();
    }
    let progress = result.map_err(crate::client_error)?;
    let seconds = progress.elapsed_ms as f64 / 1000.0;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "name": name,
                "seconds": seconds,
                "baseline_checkpoint": progress.baseline_checkpoint,
                "baseline_age_ms": progress.baseline_age_ms,
                "baseline_pages": progress.baseline_pages,
                "storage_bytes": progress.storage_bytes,
                "source_pages": progress.source_pages_done,
                "source_bytes": progress.source_bytes,
                "message": progress.message,
            })
        );
    } else {
        println!(
            "recovered {name:?} in {seconds:.2} s: {} read from storage (baseline checkpoint {}), {} copied from the source",
            format_bytes(progress.storage_bytes),
            progress.baseline_checkpoint,
            format_bytes(progress.source_bytes)
        );
        if !progress.message.is_empty() {
            println!("{}", progress.message);
        }
    }
    Ok(())
}
