//! `pagoda region`: create, list, inspect and delete regions.

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
    /// Delete a region and free its RAM.
    Rm {
        /// The region's name.
        name: String,
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
    })
}

pub fn run(args: RegionArgs) -> Result<(), String> {
    let client = args.node.connect()?;
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
                println!("pages read      {}", stat.pages_read);
                println!("pages written   {}", stat.pages_written);
            }
        }
        RegionCommand::Rm { name } => {
            client.delete_region(&name).map_err(|e| e.to_string())?;
            println!("deleted region {name:?}");
        }
    }
    Ok(())
}
