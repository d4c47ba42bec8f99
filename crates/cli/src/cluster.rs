//! `pagoda cluster`: a cluster as its coordinator records it (live nodes,
//! regions, their primaries and replicas), with each region's replication
//! lag as its primary reports it; and what the region commands need of the
//! coordinator: where to place a new region, which node leads a named one.
//!
//! The coordinator is only read here. Its records are written by the nodes
//! (each registers itself, and records the regions it creates).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pagoda::{ClientError, ReplicaRole, ReplicaSet};
use pagoda_cluster::{Coordinator, NodeRecord, RegionRecord, Versioned, WriterRecord};

use crate::NodeAddress;
use crate::size::format_bytes;

/// Arguments of `pagoda cluster`.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// Show the live nodes and the regions, with each replica's lag.
    ///
    /// The live nodes (address, capacity, free bytes, lease) and every
    /// region (size, mode, primary, replicas, primary epoch, in-sync set,
    /// writer) as the coordinator records them, with each replica's lag as
    /// the region's primary reports it ("unreachable" when it does not
    /// answer within 2 s). A region's status is `ok`, `primary down` (its
    /// primary is not a live node), `primary unreachable`, `primary
    /// refused` or `role mismatch`.
    ///
    /// --json prints one object: {"coordinator", "nodes": [{"addr",
    /// "capacity_bytes", "free_bytes", "lease_ms", "version"}], "regions":
    /// [{"name", "size", "mode", "primary", "primary_live", "primary_epoch",
    /// "replicas", "in_sync", "revision", "writer", "status",
    /// "primary_role", "primary_error", "replica_status"}]}; see README.md.
    Status {
        /// The cluster coordinator: etcd://HOST:PORT[,HOST:PORT...][/PREFIX]
        /// or embedded:DIR.
        #[arg(long, value_name = "ENDPOINT")]
        coordinator: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// A file holding the token to ask primaries for their replicas'
        /// state with.
        #[arg(long, env = "PAGODA_TOKEN_FILE", value_name = "FILE")]
        token_file: Option<std::path::PathBuf>,
        /// The credential the token belongs to; `default` is the nodes' own
        /// --token-file token.
        #[arg(long, env = "PAGODA_CREDENTIAL", value_name = "NAME", default_value = pagoda::DEFAULT_CREDENTIAL)]
        credential: String,
        /// How to speak TLS to the primaries.
        #[command(flatten)]
        tls: crate::TlsArgs,
    },
}

/// How long `cluster status` waits for a primary to connect and answer: a
/// primary that does not is shown as unreachable, not waited for.
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(2);

/// Most primaries `cluster status` asks at once.
const PRIMARY_QUERIES_MAX: usize = 16;

pub fn run(args: ClusterArgs) -> Result<(), String> {
    match args.command {
        ClusterCommand::Status {
            coordinator,
            json,
            token_file,
            credential,
            tls,
        } => {
            let auth = NodeAddress {
                node: String::new(),
                token_file,
                credential,
                tls,
            };
            status(&coordinator, &auth, json)
        }
    }
}

/// Opens the coordinator `endpoint` names, for a client command.
///
/// Unlike a node, a client never creates an embedded coordinator: a
/// directory without one is a mistyped endpoint, and reading an empty new
/// one would report a cluster with no nodes.
pub fn open(endpoint: &str) -> Result<Arc<dyn Coordinator>, String> {
    if let Some(dir) = endpoint.strip_prefix("embedded:") {
        let file = std::path::Path::new(dir).join(pagoda_cluster::embedded::FILE_NAME);
        if !dir.is_empty() && !file.is_file() {
            return Err(format!(
                "coordinator {endpoint}: there is no coordinator in {dir} ({} is missing); give \
                 the directory the nodes were started with",
                file.display()
            ));
        }
    }
    pagoda_cluster::connect(endpoint).map_err(|error| error.to_string())
}

/// Where a new region goes: its primary, then its replicas.
#[derive(Debug)]
pub struct Placement {
    /// The node that will lead it: the live node with the most free bytes.
    pub primary: NodeRecord,
    /// The nodes that will hold its replicas, by free bytes.
    pub replicas: Vec<NodeRecord>,
}

/// Places a region with `replicas` replicas on the coordinator's live nodes
/// by free capacity (`pagoda_cluster::place`), or says how many nodes it
/// needs and how many are live.
pub fn place_region(
    coordinator: &dyn Coordinator,
    name: &str,
    replicas: usize,
) -> Result<Placement, String> {
    let nodes = coordinator.nodes().map_err(|error| error.to_string())?;
    let needed = replicas + 1;
    let mut chosen = pagoda_cluster::place(&nodes, needed, &[]);
    if chosen.len() < needed {
        let what = match replicas {
            0 => "1 live node (its primary)".to_owned(),
            1 => "2 live nodes (a primary and 1 replica)".to_owned(),
            n => format!("{needed} live nodes (a primary and {n} replicas)"),
        };
        let live = if nodes.is_empty() {
            "none live".to_owned()
        } else {
            let addresses: Vec<&str> = nodes.iter().map(|node| node.addr.as_str()).collect();
            format!("{} live: {}", nodes.len(), addresses.join(", "))
        };
        return Err(format!(
            "region {name:?} needs {what}, but the coordinator {} has {live}",
            coordinator.endpoint()
        ));
    }
    let primary = chosen.remove(0);
    Ok(Placement {
        primary,
        replicas: chosen,
    })
}

/// A region's record, or an error saying the coordinator has none.
pub fn region_record(coordinator: &dyn Coordinator, name: &str) -> Result<RegionRecord, String> {
    match coordinator
        .region(name)
        .map_err(|error| error.to_string())?
    {
        Some(record) => Ok(record.value),
        None => Err(format!(
            "region {name:?} is not in the coordinator {}",
            coordinator.endpoint()
        )),
    }
}

/// What a region's primary said when asked for its replicas.
enum PrimaryAnswer {
    /// Its view of the region.
    Replicas(ReplicaSet),
    /// It could not be reached (or did not answer in time).
    Unreachable(String),
    /// It answered with a refusal (the region is not there, the
    /// credential may not read it).
    Refused(String),
}

/// One region as `cluster status` shows it.
struct RegionStatus {
    record: Versioned<RegionRecord>,
    writer: Option<WriterRecord>,
    primary_live: bool,
    answer: PrimaryAnswer,
}

impl RegionStatus {
    /// A word for the region's state: `ok`, `primary down` (not a live
    /// node), `primary unreachable`, `primary refused`, or `role mismatch`
    /// (its primary does not answer as the record says it should).
    fn status(&self) -> &'static str {
        if !self.primary_live {
            return "primary down";
        }
        match &self.answer {
            PrimaryAnswer::Unreachable(_) => "primary unreachable",
            PrimaryAnswer::Refused(_) => "primary refused",
            PrimaryAnswer::Replicas(set) => {
                let expected = if self.record.value.mode == pagoda_cluster::MODE_SYNC
                    || self.record.value.mode == pagoda_cluster::MODE_ASYNC
                {
                    ReplicaRole::Primary
                } else {
                    ReplicaRole::Solo
                };
                if set.role == expected {
                    "ok"
                } else {
                    "role mismatch"
                }
            }
        }
    }

    fn primary_error(&self) -> Option<&str> {
        match &self.answer {
            PrimaryAnswer::Replicas(_) => None,
            PrimaryAnswer::Unreachable(message) | PrimaryAnswer::Refused(message) => Some(message),
        }
    }

    fn json(&self) -> serde_json::Value {
        let record = &self.record.value;
        let (role, replica_status) = match &self.answer {
            PrimaryAnswer::Replicas(set) => (
                Some(set.role.name()),
                Some(
                    set.replicas
                        .iter()
                        .map(crate::region::replica_json)
                        .collect::<Vec<_>>(),
                ),
            ),
            _ => (None, None),
        };
        serde_json::json!({
            "name": record.name,
            "size": record.size,
            "mode": record.mode,
            "primary": record.primary,
            "primary_live": self.primary_live,
            "primary_epoch": record.primary_epoch,
            "replicas": record.replicas,
            "in_sync": record.in_sync,
            "revision": self.record.revision,
            "writer": self.writer.as_ref().map(|writer| serde_json::json!({
                "holder": writer.holder,
                "lease_ms": writer.lease_ms,
            })),
            "status": self.status(),
            "primary_role": role,
            "primary_error": self.primary_error(),
            "replica_status": replica_status,
        })
    }
}

/// Asks each region's primary for its replicas, primaries in parallel (at
/// most `PRIMARY_QUERIES_MAX` at once), each connection bounded by
/// `PRIMARY_TIMEOUT` and never retried.
fn ask_primaries(
    regions: &[Versioned<RegionRecord>],
    auth: &NodeAddress,
) -> BTreeMap<String, PrimaryAnswer> {
    let mut by_primary: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for region in regions {
        by_primary
            .entry(region.value.primary.as_str())
            .or_default()
            .push(region.value.name.as_str());
    }
    let by_primary: Vec<(&str, Vec<&str>)> = by_primary.into_iter().collect();
    let mut answers = BTreeMap::new();
    for batch in by_primary.chunks(PRIMARY_QUERIES_MAX) {
        std::thread::scope(|scope| {
            let threads: Vec<_> = batch
                .iter()
                .map(|(primary, names)| {
                    scope.spawn(move || {
                        let address = NodeAddress {
                            node: (*primary).to_owned(),
                            ..auth.clone()
                        };
                        let client = match address.connect_with(PRIMARY_TIMEOUT, Duration::ZERO) {
                            Ok(client) => client,
                            Err(message) => {
                                return names
                                    .iter()
                                    .map(|name| {
                                        (
                                            (*name).to_owned(),
                                            PrimaryAnswer::Unreachable(message.clone()),
                                        )
                                    })
                                    .collect::<Vec<_>>();
                            }
                        };
                        names
                            .iter()
                            .map(|name| {
                                let answer = match client.replicas(name) {
                                    Ok(set) => PrimaryAnswer::Replicas(set),
                                    Err(error @ ClientError::Remote { .. }) => {
                                        PrimaryAnswer::Refused(crate::client_error(error))
                                    }
                                    Err(error) => {
                                        PrimaryAnswer::Unreachable(crate::client_error(error))
                                    }
                                };
                                ((*name).to_owned(), answer)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for thread in threads {
                answers.extend(thread.join().expect("a primary's query does not panic"));
            }
        });
    }
    answers
}

/// `pagoda cluster status`.
fn status(endpoint: &str, auth: &NodeAddress, json: bool) -> Result<(), String> {
    let coordinator = open(endpoint)?;
    let mut nodes = coordinator.nodes().map_err(|error| error.to_string())?;
    nodes.sort_by(|a, b| a.addr.cmp(&b.addr));
    let mut regions = coordinator.regions().map_err(|error| error.to_string())?;
    regions.sort_by(|a, b| a.value.name.cmp(&b.value.name));
    let mut writers = Vec::with_capacity(regions.len());
    for region in &regions {
        writers.push(
            coordinator
                .writer(&region.value.name)
                .map_err(|error| error.to_string())?,
        );
    }
    let mut answers = ask_primaries(&regions, auth);
    let statuses: Vec<RegionStatus> = regions
        .into_iter()
        .zip(writers)
        .map(|(record, writer)| {
            let primary_live = nodes.iter().any(|node| node.addr == record.value.primary);
            // Two keys whose records carry one name: the second gets no
            // answer of its own.
            let answer = answers.remove(&record.value.name).unwrap_or_else(|| {
                PrimaryAnswer::Refused("the record's name appears twice in the coordinator".into())
            });
            RegionStatus {
                record,
                writer,
                primary_live,
                answer,
            }
        })
        .collect();
    if json {
        let nodes: Vec<serde_json::Value> = nodes
            .iter()
            .map(|node| {
                serde_json::json!({
                    "addr": node.addr,
                    "capacity_bytes": node.capacity_bytes,
                    "free_bytes": node.free_bytes,
                    "lease_ms": node.lease_ms,
                    "version": node.version,
                })
            })
            .collect();
        let regions: Vec<serde_json::Value> = statuses.iter().map(RegionStatus::json).collect();
        println!(
            "{}",
            serde_json::json!({
                "coordinator": coordinator.endpoint(),
                "nodes": nodes,
                "regions": regions,
            })
        );
    } else {
        print_status(&coordinator.endpoint(), &nodes, &statuses);
    }
    Ok(())
}

/// `pagoda cluster status` as text: a table of live nodes, then one of
/// regions, each followed by its replicas.
fn print_status(endpoint: &str, nodes: &[NodeRecord], regions: &[RegionStatus]) {
    let yes_no = |value: bool| if value { "yes" } else { "no" };
    println!("coordinator     {endpoint}");
    println!("live nodes      {}", nodes.len());
    println!("regions         {}", regions.len());
    println!();
    if nodes.is_empty() {
        println!("no live nodes");
    } else {
        println!(
            "{:<24} {:>12} {:>12} {:>10}  VERSION",
            "NODE", "CAPACITY", "FREE", "LEASE"
        );
        for node in nodes {
            println!(
                "{:<24} {:>12} {:>12} {:>10}  {}",
                node.addr,
                format_bytes(node.capacity_bytes),
                format_bytes(node.free_bytes),
                format!("{} ms", node.lease_ms),
                node.version
            );
        }
    }
    println!();
    if regions.is_empty() {
        println!("no regions");
        return;
    }
    println!(
        "{:<24} {:>12} {:<6} {:<24} {:>6}  {:<20} STATUS",
        "REGION", "SIZE", "MODE", "PRIMARY", "EPOCH", "WRITER"
    );
    for region in regions {
        let record = &region.record.value;
        let writer = region
            .writer
            .as_ref()
            .map_or("-", |writer| writer.holder.as_str());
        println!(
            "{:<24} {:>12} {:<6} {:<24} {:>6}  {:<20} {}",
            record.name,
            format_bytes(record.size),
            record.mode,
            record.primary,
            record.primary_epoch,
            writer,
            region.status()
        );
        if let Some(message) = region.primary_error() {
            println!("    primary: {message}");
        }
        if let PrimaryAnswer::Replicas(set) = &region.answer
            && region.status() == "role mismatch"
        {
            println!(
                "    primary: {} answers as {}",
                record.primary,
                set.role.name()
            );
        }
        if record.replicas.is_empty() {
            continue;
        }
        println!(
            "    {:<24} {:>7} {:>11} {:>12} {:>9}  MESSAGE",
            "REPLICA", "IN SYNC", "CONNECTED", "LAG", "LAG MS"
        );
        for addr in &record.replicas {
            let in_sync = yes_no(record.in_sync.contains(addr));
            match &region.answer {
                PrimaryAnswer::Replicas(set) => {
                    match set.replicas.iter().find(|replica| &replica.addr == addr) {
                        Some(replica) => println!(
                            "{}",
                            format!(
                                "    {:<24} {:>7} {:>11} {:>12} {:>9}  {}",
                                addr,
                                in_sync,
                                yes_no(replica.connected),
                                format_bytes(replica.lag_bytes),
                                replica.lag_ms,
                                replica.message
                            )
                            .trim_end()
                        ),
                        None => println!(
                            "    {:<24} {:>7} {:>11} {:>12} {:>9}  not a replica of the primary",
                            addr, in_sync, "-", "-", "-"
                        ),
                    }
                }
                _ => println!(
                    "    {:<24} {:>7} {:>11} {:>12} {:>9}",
                    addr, in_sync, "-", "unreachable", "-"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addr: &str, free_bytes: u64) -> NodeRecord {
        NodeRecord {
            addr: addr.to_owned(),
            capacity_bytes: 1 << 30,
            free_bytes,
            lease_ms: 3000,
            version: String::new(),
        }
    }

    // Guards placement: the most free bytes leads, and too few live nodes
    // is refused saying how many are needed and which are live.
    #[test]
    fn placement_by_free_bytes_or_a_count_of_live_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = pagoda_cluster::embedded::EmbeddedCoordinator::open(dir.path()).unwrap();
        let endpoint = coordinator.endpoint();
        assert_eq!(
            place_region(&coordinator, "r", 0).unwrap_err(),
            format!(
                "region \"r\" needs 1 live node (its primary), but the coordinator {endpoint} has none live"
            )
        );
        let lease = coordinator.grant_lease(Duration::from_secs(60)).unwrap();
        for (addr, free) in [("10.0.0.1:1", 10), ("10.0.0.2:1", 30), ("10.0.0.3:1", 20)] {
            coordinator.put_node(&node(addr, free), lease).unwrap();
        }
        let placement = place_region(&coordinator, "r", 1).unwrap();
        assert_eq!(placement.primary.addr, "10.0.0.2:1");
        let replicas: Vec<&str> = placement.replicas.iter().map(|n| n.addr.as_str()).collect();
        assert_eq!(replicas, ["10.0.0.3:1"]);
        assert_eq!(
            place_region(&coordinator, "r", 3).unwrap_err(),
            format!(
                "region \"r\" needs 4 live nodes (a primary and 3 replicas), but the coordinator \
                 {endpoint} has 3 live: 10.0.0.1:1, 10.0.0.2:1, 10.0.0.3:1"
            )
        );
    }

    // Guards the client's refusal to create an embedded coordinator where
    // there was none (a mistyped directory would read as an empty cluster).
    #[test]
    fn an_embedded_endpoint_without_a_coordinator_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("embedded:{}", dir.path().display());
        let error = open(&endpoint).unwrap_err();
        assert!(error.contains("there is no coordinator in"), "{error}");
        assert!(
            !dir.path()
                .join(pagoda_cluster::embedded::FILE_NAME)
                .exists(),
            "the client created a coordinator"
        );
        pagoda_cluster::embedded::EmbeddedCoordinator::open(dir.path()).unwrap();
        assert!(open(&endpoint).is_ok());
    }
}
