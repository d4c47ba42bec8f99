//! Transactions against a real node on loopback, in each durability mode.

use std::sync::Arc;

use pagoda::{Client, ClientOptions, Durability, RegionOptions};
use pagoda_node::{Node, NodeConfig};
use rand::{Rng, SeedableRng};

const ACCOUNTS: u64 = 64;
const PAGE: u64 = 4096;
/// Accounts sit 1,000 bytes apart, so several share a page and a transfer
/// often spans pages.
const STRIDE: u64 = 1000;
const START: u64 = 1_000;

fn node() -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig::new("127.0.0.1:0".parse().unwrap(), 64 << 20, dir.path().into());
    (Node::start(config).unwrap(), dir)
}

fn options(durability: Durability) -> RegionOptions {
    RegionOptions {
        durability,
        // A tiny cache, so reads miss and fetch from the node often.
        cache_bytes: 2 * PAGE,
        ..RegionOptions::default()
    }
}

fn balance(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap())
}

fn total(region: &pagoda::Region) -> u64 {
    (0..ACCOUNTS)
        .map(|account| {
            let mut buf = [0u8; 8];
            region.read_at(account * STRIDE, &mut buf).unwrap();
            balance(&buf)
        })
        .sum()
}

/// Four threads move money between random accounts in transactions; the sum
/// never changes if transactions are isolated and atomic.
fn transfers(region: &Arc<pagoda::Region>, per_thread: u64) {
    region
        .transaction(|tx| {
            for account in 0..ACCOUNTS {
                tx.write_at(account * STRIDE, &START.to_le_bytes())?;
            }
            Ok(())
        })
        .unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|seed| {
            let region = region.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                for _ in 0..per_thread {
                    let from = rng.gen_range(0..ACCOUNTS);
                    let to = rng.gen_range(0..ACCOUNTS);
                    let amount = rng.gen_range(1..50u64);
                    region
                        .transaction(|tx| {
                            let mut buf = [0u8; 8];
                            tx.read_at(from * STRIDE, &mut buf)?;
                            let source = balance(&buf);
                            if source < amount || from == to {
                                return Ok(());
                            }
                            tx.write_at(from * STRIDE, &(source - amount).to_le_bytes())?;
                            // Reads see the transaction's own writes.
                            tx.read_at(from * STRIDE, &mut buf)?;
                            assert_eq!(balance(&buf), source - amount);
                            tx.read_at(to * STRIDE, &mut buf)?;
                            tx.write_at(to * STRIDE, &(balance(&buf) + amount).to_le_bytes())?;
                            Ok(())
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

// Guards isolation and durability in both journaled modes: concurrent
// transfers keep the total, and after the region is closed a fresh client
// reading the node directly (no journal, cold cache) sees the same balances.
#[test]
fn transfers_keep_the_total_and_reach_the_node() {
    for mode in ["local", "remote", "write-back"] {
        let (node, _dir) = node();
        let journal = tempfile::tempdir().unwrap();
        let durability = match mode {
            "local" => Durability::Local {
                journal_dir: journal.path().to_path_buf(),
            },
            "remote" => Durability::Remote,
            _ => Durability::WriteBack,
        };
        let client = Client::connect(node.local_addr(), ClientOptions::default()).unwrap();
        client.create_region("bank", 1 << 20, PAGE as u32).unwrap();
        let region = Arc::new(client.open_region("bank", options(durability)).unwrap());
        transfers(&region, 300);
        assert_eq!(
            total(&region),
            ACCOUNTS * START,
            "{mode}: money was made or lost"
        );
        let balances: Vec<u64> = (0..ACCOUNTS)
            .map(|account| {
                let mut buf = [0u8; 8];
                region.read_at(account * STRIDE, &mut buf).unwrap();
                balance(&buf)
            })
            .collect();
        let stats = region.journal_stats();
        assert!(stats.commits >= 1_000, "{mode}: {stats:?}");
        drop(region);
        let reader = Client::connect(node.local_addr(), ClientOptions::default()).unwrap();
        let cold = reader
            .open_region_read_only("bank", RegionOptions::with_cache_bytes(PAGE))
            .unwrap();
        for (account, expected) in balances.iter().enumerate() {
            let mut buf = [0u8; 8];
            cold.read_at(account as u64 * STRIDE, &mut buf).unwrap();
            assert_eq!(
                balance(&buf),
                *expected,
                "{mode}: account {account} on the node"
            );
        }
    }
}

// Guards coalescing through the region API: many committers in Local mode
// share persists.
#[test]
fn local_commits_coalesce() {
    let (node, _dir) = node();
    let journal = tempfile::tempdir().unwrap();
    let client = Client::connect(node.local_addr(), ClientOptions::default()).unwrap();
    client.create_region("c", 1 << 20, PAGE as u32).unwrap();
    let region = Arc::new(
        client
            .open_region(
                "c",
                options(Durability::Local {
                    journal_dir: journal.path().to_path_buf(),
                }),
            )
            .unwrap(),
    );
    let threads: Vec<_> = (0..16u64)
        .map(|thread| {
            let region = region.clone();
            std::thread::spawn(move || {
                for n in 0..50u64 {
                    region
                        .write_at(thread * PAGE + n * 8 % PAGE, &n.to_le_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    region.flush().unwrap();
    let stats = region.journal_stats();
    assert_eq!(stats.commits, 800);
    assert!(
        stats.persists < stats.commits,
        "16 committers should share persists: {stats:?}"
    );
    assert_eq!(stats.lag_records, 0, "flush ships everything: {stats:?}");
}
