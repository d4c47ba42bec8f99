//! `pagoda region`: create, list, inspect, delete, checkpoint, recover and
//! checksum regions.

use pagoda::RegionStat;

use crate::NodeAddress;
use crate::size::{format_bytes, parse_size};

/// Arguments of `pagoda region`.
#[derive(clap::Args, Debug)]
pub struct RegionArgs {
    #[command(subcommand)]
    command: RegionCommand,
    #[command(flatten)]
    node: NodeAddress,
}

#[derive(clap::Subcommand, Debug)]
enum RegionCommand {
    /// Create a region.
    Create {
        /// The region's name.
        name: String,
        /// Its size, like 1GiB; a multiple of the page size.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Its page size: a power of two from 4KiB to 2MiB.
        #[arg(long, value_parser = parse_size, default_value = "4KiB")]
        page_size: u64,
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
    })
}

pub fn run(args: RegionArgs) -> Result<(), String> {
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
            target.node = to;
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
    let client = match args.command {
        // A checkpoint's reply waits for the whole checkpoint.
        RegionCommand::Checkpoint { .. } => args
            .node
            .connect_with_timeout(std::time::Duration::from_secs(CHECKPOINT_TIMEOUT_S))?,
        // The whole-region digest's reply waits for the node to hash
        // every written segment.
        RegionCommand::Checksum { .. } => args
            .node
            .connect_with_timeout(std::time::Duration::from_secs(CHECKSUM_TIMEOUT_S))?,
        _ => args.node.connect()?,
    };
    match args.command {
        RegionCommand::Create {
            name,
            size,
            page_size,
        } => {
            let page_size = u32::try_from(page_size)
                .map_err(|_| format!("page size {page_size} is too large"))?;
            let info = client
                .create_region(&name, size, page_size)
                .map_err(|e| e.to_string())?;
            println!(
                "created region {:?} (id {}): {} in pages of {}",
                info.name,
                info.id,
                format_bytes(info.size),
                format_bytes(info.page_size as u64)
            );
        }
        RegionCommand::Ls { json } => {
            let list = client.list_regions().map_err(|e| e.to_string())?;
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
            let stat = client.stat_region(&name).map_err(|e| e.to_string())?;
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
                println!("metadata        {}", format_bytes(stat.metadata_bytes));
                println!("pages read      {}", stat.pages_read);
                println!("pages written   {}", stat.pages_written);
                println!("state           {}", stat.state.name());
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
            client.delete_region(&name).map_err(|e| e.to_string())?;
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
            let info = result.map_err(|e| e.to_string())?;
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
        RegionCommand::Recover { .. } => unreachable!("handled above"),
    }
    Ok(())
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
    let checksum = client.checksum(name, segments).map_err(|e| e.to_string())?;
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
    let progress = result.map_err(|e| e.to_string())?;
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
