//! Transactions with typed access: bank transfers between accounts that
//! are `#[repr(C)]` structs in a region.
//!
//! Several threads move money between random accounts, each transfer a
//! transaction that reads two accounts and writes both. Transactions are
//! atomic and isolated, so the total never changes; commits are durable on
//! the node when they return (`Durability::Remote`). Accounts sit 48 bytes
//! apart, so many share a page and some straddle two: transfers touching a
//! common page conflict, and are re-run.
//!
//! ```text
//! cargo run -p pagoda --example transaction
//! cargo run -p pagoda --example transaction -- --node 127.0.0.1:7070 --transfers 10000
//! ```

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytemuck::{Pod, Zeroable};
use pagoda::{Durability, RegionOptions};

const USAGE: &str =
    "transaction [--node ADDR] [--token-file PATH] [--accounts N] [--transfers N] [--threads N]";

/// One account as stored in the region: `repr(C)` and without padding, so
/// it is `Pod` and its stored bytes are its fields, little-endian, in order.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct Account {
    id: u64,
    balance: i64,
    transfers_in: u64,
    transfers_out: u64,
    /// Bytes for whatever else an account holds, to make it 48 bytes.
    reserved: [u8; 16],
}

const OPENING_BALANCE: i64 = 1_000;

fn offset_of(account: u64) -> u64 {
    account * size_of::<Account>() as u64
}

/// A small, seedable generator, enough to pick accounts.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(&common::Args::parse(
        USAGE,
        &["accounts", "transfers", "threads"],
    ))
}

fn run(args: &common::Args) -> Result<(), Box<dyn std::error::Error>> {
    let accounts = args.number("accounts", 1_000).max(2);
    let transfers = args.number("transfers", 2_000);
    let threads = args.number("threads", 4).max(1);
    let (client, embedded) = args.connect()?;

    let page_size = 4096u64;
    let region_bytes = offset_of(accounts).div_ceil(page_size) * page_size;
    let options = RegionOptions {
        durability: Durability::Remote,
        ..RegionOptions::with_cache_bytes(1 << 20)
    };
    let name = format!("accounts-{accounts}");
    let region =
        Arc::new(client.open_or_create_region(&name, region_bytes, page_size as u32, options)?);

    // Open every account in one transaction: all of them or none.
    region.transaction(|tx| {
        for id in 0..accounts {
            let account = Account {
                id,
                balance: OPENING_BALANCE,
                ..Account::zeroed()
            };
            tx.write_value(offset_of(id), &account)?;
        }
        Ok(())
    })?;
    println!("opened {accounts} accounts of {OPENING_BALANCE} in region {name:?}");

    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let region = region.clone();
            let count = transfers / threads + u64::from(thread < transfers % threads);
            std::thread::spawn(move || -> Result<(), pagoda::ClientError> {
                let mut random = 0x9e37_79b9_7f4a_7c15 ^ (thread + 1);
                for _ in 0..count {
                    let from = next_random(&mut random) % accounts;
                    let to = (from + 1 + next_random(&mut random) % (accounts - 1)) % accounts;
                    let amount = (next_random(&mut random) % 50) as i64 + 1;
                    // The body may run more than once (after a conflict):
                    // it only reads and writes through `tx`.
                    region.transaction(|tx| {
                        let mut source: Account = tx.read_value(offset_of(from))?;
                        if source.balance < amount {
                            return Ok(()); // refused: not enough money
                        }
                        let mut target: Account = tx.read_value(offset_of(to))?;
                        source.balance -= amount;
                        source.transfers_out += 1;
                        target.balance += amount;
                        target.transfers_in += 1;
                        tx.write_value(offset_of(from), &source)?;
                        tx.write_value(offset_of(to), &target)
                    })?;
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a transfer thread panicked")?;
    }
    let seconds = started.elapsed().as_secs_f64();

    // Read every account back in one go and check the books.
    let mut all = vec![Account::zeroed(); accounts as usize];
    region.read_slice(0, &mut all)?;
    let total: i64 = all.iter().map(|account| account.balance).sum();
    let moves_in: u64 = all.iter().map(|account| account.transfers_in).sum();
    let moves_out: u64 = all.iter().map(|account| account.transfers_out).sum();
    let stats = region.journal_stats();
    println!(
        "{transfers} transfers on {threads} threads in {seconds:.2} s: {} commits, {} re-runs after a conflict",
        stats.commits, stats.conflicts
    );
    println!(
        "total {total} (expected {}), {moves_in} transfers in, {moves_out} out",
        OPENING_BALANCE * accounts as i64
    );
    if total != OPENING_BALANCE * accounts as i64 || moves_in != moves_out {
        return Err("the books do not balance".into());
    }
    for (id, account) in all.iter().enumerate() {
        assert_eq!(account.id, id as u64, "account {id} is where it belongs");
    }

    drop(region);
    drop(client);
    drop(embedded);
    Ok(())
}

#[cfg(test)]
mod tests {
    // Guards the example itself (`cargo test` runs it, small): concurrent
    // transfers keep the total, against a node it starts itself.
    #[test]
    fn transfers_balance_the_books() {
        let args = super::common::Args::from_pairs(&[
            ("accounts", "200"),
            ("transfers", "400"),
            ("threads", "3"),
        ]);
        super::run(&args).unwrap();
    }
}
