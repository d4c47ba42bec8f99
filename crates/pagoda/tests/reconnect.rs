//! The client's reconnects: a TCP proxy on loopback sits between client and
//! node, and the tests cut its connections (or stall them, or swallow the
//! node's replies) while the client works. Every call that is safe to
//! repeat must come through; what is not safe must say its outcome is
//! unknown; a writer deposed meanwhile must be fenced.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use pagoda::{Client, ClientError, ClientOptions, Colocated, Durability, ErrorCode, RegionOptions};
use pagoda_node::{Node, NodeConfig};

const PAGE: usize = 4096;
/// Cuts per load test.
const CUTS: usize = 20;
/// A load test's bound on time.
const LOAD_TIME_MAX: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The proxy.

/// Forward bytes both ways.
const FORWARD: u8 = 0;
/// Forward the client's bytes; drop the node's (replies never arrive).
const SWALLOW_REPLIES: u8 = 1;
/// Drop bytes both ways, keeping the connections open (a host that went
/// silent).
const STALL: u8 = 2;

struct Pair {
    client: TcpStream,
    node: TcpStream,
    mode: Arc<AtomicU8>,
}

struct ProxyState {
    pairs: Mutex<Vec<Pair>>,
    stop: AtomicBool,
    accepted: AtomicU64,
}

/// A TCP proxy on loopback to one node, whose connections a test can cut.
struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            pairs: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
        });
        let thread_state = state.clone();
        let thread = std::thread::spawn(move || {
            while !thread_state.stop.load(Ordering::Acquire) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    Err(_) => continue,
                };
                client.set_nonblocking(false).unwrap();
                let Ok(node) = TcpStream::connect(upstream) else {
                    continue;
                };
                client.set_nodelay(true).unwrap();
                node.set_nodelay(true).unwrap();
                let mode = Arc::new(AtomicU8::new(FORWARD));
                pump(client.try_clone().unwrap(), node.try_clone().unwrap(), {
                    let mode = mode.clone();
                    move || {
                        mode.load(Ordering::Acquire) == FORWARD
                            || mode.load(Ordering::Acquire) == SWALLOW_REPLIES
                    }
                });
                pump(node.try_clone().unwrap(), client.try_clone().unwrap(), {
                    let mode = mode.clone();
                    move || mode.load(Ordering::Acquire) == FORWARD
                });
                thread_state.accepted.fetch_add(1, Ordering::Relaxed);
                thread_state
                    .pairs
                    .lock()
                    .unwrap()
                    .push(Pair { client, node, mode });
            }
            // The listener is dropped here: new connections are refused.
        });
        Proxy {
            addr,
            state,
            thread: Some(thread),
        }
    }

    /// Closes every current connection (both sides).
    fn cut(&self) {
        let pairs: Vec<Pair> = self.state.pairs.lock().unwrap().drain(..).collect();
        for pair in pairs {
            let _ = pair.client.shutdown(Shutdown::Both);
            let _ = pair.node.shutdown(Shutdown::Both);
        }
    }

    /// Sets the mode of every current connection (new ones forward).
    fn set_mode(&self, mode: u8) {
        for pair in self.state.pairs.lock().unwrap().iter() {
            pair.mode.store(mode, Ordering::Release);
        }
    }

    /// Stops listening (new connections are refused) and cuts the rest.
    fn stop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.cut();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies `from` to `to` while `forward()` says so (dropping the bytes
/// otherwise), until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream, forward: impl Fn() -> bool + Send + 'static) {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if forward() && to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

// ---------------------------------------------------------------------------
// Helpers.

fn node_with(dir: &std::path::Path, writer_lease: Option<Duration>) -> Node {
    let mut config = NodeConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        256 << 20,
        dir.to_path_buf(),
    );
    if let Some(lease) = writer_lease {
        config.writer_lease = lease;
    }
    Node::start(config).expect("node starts")
}

fn options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(10),
        reconnect_for: Duration::from_secs(20),
        // Every read goes through the proxy whose cuts these tests make: a
        // co-located client would copy misses from the node's memory,
        // around the proxy.
        colocated: Colocated::Off,
        ..ClientOptions::default()
    }
}

/// A small deterministic generator (xorshift), per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Cuts the proxy's connections `CUTS` times, 30 to 90 ms apart, then sets
/// `done`.
fn cutter(proxy: Arc<Proxy>, done: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..CUTS {
            std::thread::sleep(Duration::from_millis(30 + rng.next() % 60));
            proxy.cut();
        }
        done.store(true, Ordering::Release);
        CUTS
    })
}

fn read_all(client: &Client, info: &pagoda::RegionInfo) -> Vec<u8> {
    let pages: Vec<u64> = (0..info.size / PAGE as u64).collect();
    let mut out = vec![0u8; info.size as usize];
    client.raw().read_pages(info, &pages, &mut out).unwrap();
    out
}

// ---------------------------------------------------------------------------
// Tests.

// Guards the write path across reconnects: under a write load from several
// threads, through a write-back `Region` (evicting and flushing) and through
// `Raw::write_pages`, 20 cuts of the connection make no call fail, and
// the node ends with exactly every acknowledged write (numbered writes sent
// again are applied once, in order).
#[test]
fn writes_survive_repeated_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), None);
    let proxy = Arc::new(Proxy::start(node.local_addr()));
    let client = Client::connect(proxy.addr, options()).unwrap();
    let cached = client
        .create_region("cached", 1 << 20, PAGE as u32)
        .unwrap();
    let direct = client
        .create_region("direct", 1 << 20, PAGE as u32)
        .unwrap();
    // A cache of 16 pages for 4 × 32 pages written: evictions write back.
    let region = Arc::new(
        client
            .open_region("cached", RegionOptions::with_cache_bytes(16 * PAGE as u64))
            .unwrap(),
    );
    const THREADS: usize = 4;
    const PAGES_PER_THREAD: usize = 32;
    const ITERATIONS_MIN: u64 = 200;
    const ITERATIONS_MAX: u64 = 20_000;
    let done = Arc::new(AtomicBool::new(false));
    let cuts = cutter(proxy.clone(), done.clone());
    let began = Instant::now();
    let mut workers = Vec::new();
    for thread in 0..THREADS {
        // Through the region: records of 16 bytes at random places in the
        // thread's own pages, flushed every 50 writes.
        let region = region.clone();
        let done = done.clone();
        workers.push(std::thread::spawn(move || {
            let base = thread * PAGES_PER_THREAD * PAGE;
            let mut model = vec![0u8; PAGES_PER_THREAD * PAGE];
            let mut rng = Rng(thread as u64 * 7919 + 1);
            let mut iteration = 0u64;
            while (iteration < ITERATIONS_MIN || !done.load(Ordering::Acquire))
                && iteration < ITERATIONS_MAX
                && began.elapsed() < LOAD_TIME_MAX
            {
                let at = (rng.next() as usize % (model.len() / 16)) * 16;
                let mut record = [0u8; 16];
                record[..8].copy_from_slice(&(thread as u64).to_le_bytes());
                record[8..].copy_from_slice(&iteration.to_le_bytes());
                region.write_at((base + at) as u64, &record).unwrap();
                model[at..at + 16].copy_from_slice(&record);
                if iteration % 50 == 49 {
                    region.flush().unwrap();
                }
                iteration += 1;
            }
            region.flush().unwrap();
            (base, model)
        }));
    }
    let mut direct_workers = Vec::new();
    for thread in 0..2usize {
        // Through `Raw::write_pages`: whole pages of the thread's own.
        let client = client.clone();
        let direct = direct.clone();
        let done = done.clone();
        direct_workers.push(std::thread::spawn(move || {
            let first = thread * PAGES_PER_THREAD;
            let mut model = vec![0u8; PAGES_PER_THREAD * PAGE];
            let mut rng = Rng(thread as u64 * 104_729 + 3);
            let mut iteration = 0u64;
            while (iteration < ITERATIONS_MIN || !done.load(Ordering::Acquire))
                && iteration < ITERATIONS_MAX
                && began.elapsed() < LOAD_TIME_MAX
            {
                let page = rng.next() as usize % PAGES_PER_THREAD;
                let fill = (rng.next() % 251) as u8;
                let data = vec![fill; PAGE];
                client
                    .raw()
                    .write_pages(&direct, &[(first + page) as u64], &data)
                    .unwrap();
                model[page * PAGE..(page + 1) * PAGE].copy_from_slice(&data);
                iteration += 1;
            }
            (first * PAGE, model)
        }));
    }
    assert_eq!(cuts.join().unwrap(), CUTS);
    let cached_models: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let direct_models: Vec<_> = direct_workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .collect();
    region.flush().unwrap();
    let writes: usize = cached_models.len() + direct_models.len();
    eprintln!(
        "{} reconnects for {CUTS} cuts under {writes} writing threads",
        client.reconnects()
    );
    assert!(
        client.reconnects() >= 5,
        "only {} reconnects for {CUTS} cuts",
        client.reconnects()
    );
    assert!(proxy.state.accepted.load(Ordering::Relaxed) >= 6);

    // Read back past the proxy, from a client of its own.
    let checker = common::client(&node);
    let on_node = read_all(&checker, &cached);
    for (base, model) in &cached_models {
        assert!(
            on_node[*base..*base + model.len()] == model[..],
            "region pages at {base} differ from the model"
        );
    }
    let on_node = read_all(&checker, &direct);
    for (base, model) in &direct_models {
        assert!(
            on_node[*base..*base + model.len()] == model[..],
            "direct pages at {base} differ from the model"
        );
    }
}

// Guards a journaled region across reconnects: transactions of several
// threads each take the next number from a counter and write their mark in
// that number's slot, while the connection is cut 20 times. No commit or
// flush fails; after the flush the node holds every committed transaction
// (the counter equals the commits, every slot holds its transaction's
// mark): the shipper sent its unacknowledged records again, in order,
// before any page fetch, and nothing was applied twice out of order.
#[test]
fn journaled_transactions_survive_repeated_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let journal = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), None);
    let proxy = Arc::new(Proxy::start(node.local_addr()));
    let client = Client::connect(proxy.addr, options()).unwrap();
    let info = client
        .create_region("journaled", 1 << 20, PAGE as u32)
        .unwrap();
    // A cache of 4 pages: the counter page is evicted and fetched again
    // often, so fetches after reconnects see the records or fail the test.
    let region = Arc::new(
        client
            .open_region(
                "journaled",
                RegionOptions {
                    cache_bytes: 4 * PAGE as u64,
                    durability: Durability::Local {
                        journal_dir: journal.path().to_path_buf(),
                    },
                    ..RegionOptions::default()
                },
            )
            .unwrap(),
    );
    const THREADS: u64 = 4;
    const COMMITS_MIN: u64 = 100;
    const COMMITS_MAX: u64 = 5_000;
    let done = Arc::new(AtomicBool::new(false));
    let cuts = cutter(proxy.clone(), done.clone());
    let began = Instant::now();
    let mut workers = Vec::new();
    for thread in 0..THREADS {
        let region = region.clone();
        let done = done.clone();
        workers.push(std::thread::spawn(move || {
            let mut committed = Vec::new();
            let mut sequence = 0u64;
            while (sequence < COMMITS_MIN || !done.load(Ordering::Acquire))
                && sequence < COMMITS_MAX
                && began.elapsed() < LOAD_TIME_MAX
            {
                let number = region
                    .transaction(|tx| {
                        let mut counter = [0u8; 8];
                        tx.read_at(0, &mut counter)?;
                        let number = u64::from_le_bytes(counter);
                        tx.write_at(0, &(number + 1).to_le_bytes())?;
                        let mut mark = [0u8; 16];
                        mark[..8].copy_from_slice(&thread.to_le_bytes());
                        mark[8..].copy_from_slice(&sequence.to_le_bytes());
                        tx.write_at(PAGE as u64 + number * 16, &mark)?;
                        Ok(number)
                    })
                    .unwrap();
                committed.push((number, thread, sequence));
                sequence += 1;
                if sequence.is_multiple_of(40) {
                    region.flush().unwrap();
                }
            }
            committed
        }));
    }
    assert_eq!(cuts.join().unwrap(), CUTS);
    let mut committed: Vec<(u64, u64, u64)> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    region.flush().unwrap();
    let stats = region.journal_stats();
    assert_eq!(stats.failure, None, "shipping stopped");
    assert_eq!(stats.lag_records, 0);
    assert!(
        client.reconnects() >= 5,
        "only {} reconnects",
        client.reconnects()
    );

    committed.sort();
    let total = committed.len() as u64;
    eprintln!(
        "{total} commits, {} reconnects for {CUTS} cuts",
        client.reconnects()
    );
    assert!(total >= THREADS * COMMITS_MIN);
    // Each number was handed to exactly one transaction.
    for (index, (number, ..)) in committed.iter().enumerate() {
        assert_eq!(*number, index as u64, "numbers handed out twice or skipped");
    }
    let checker = common::client(&node);
    let on_node = read_all(&checker, &info);
    assert_eq!(
        u64::from_le_bytes(on_node[..8].try_into().unwrap()),
        total,
        "the node's counter differs from the commits"
    );
    for (number, thread, sequence) in &committed {
        let at = PAGE + *number as usize * 16;
        let mark = &on_node[at..at + 16];
        assert_eq!(
            (
                u64::from_le_bytes(mark[..8].try_into().unwrap()),
                u64::from_le_bytes(mark[8..].try_into().unwrap())
            ),
            (*thread, *sequence),
            "slot {number} does not hold its transaction's mark"
        );
    }
}

// Guards reads in flight: a read whose reply the cut connection lost is
// sent again on the new connection and returns the right bytes, both a
// `Raw::read_pages` and a miss of a read-only `Region`.
#[test]
fn a_read_in_flight_during_a_cut_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), None);
    let proxy = Proxy::start(node.local_addr());
    let writer = common::client(&node);
    let info = writer.create_region("r", 1 << 20, PAGE as u32).unwrap();
    let data: Vec<u8> = (0..4 * PAGE).map(|i| (i % 253) as u8).collect();
    writer
        .raw()
        .write_pages(&info, &[1, 2, 3, 4], &data)
        .unwrap();

    let client = Client::connect(proxy.addr, options()).unwrap();
    let reader = client
        .open_region_read_only("r", RegionOptions::with_cache_bytes(16 * PAGE as u64))
        .unwrap();
    client.raw().ping(0).unwrap();
    proxy.set_mode(SWALLOW_REPLIES);
    let started = Barrier::new(3);
    std::thread::scope(|scope| {
        let raw = scope.spawn(|| {
            started.wait();
            let mut out = vec![0u8; 4 * PAGE];
            client
                .raw()
                .read_pages(&info, &[1, 2, 3, 4], &mut out)
                .map(|()| out)
        });
        let cached = scope.spawn(|| {
            started.wait();
            let mut out = vec![0u8; 2 * PAGE];
            reader.read_at(PAGE as u64, &mut out).map(|()| out)
        });
        started.wait();
        // Both requests reach the node; their replies vanish.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !raw.is_finished() && !cached.is_finished(),
            "a reply got through"
        );
        proxy.cut();
        assert_eq!(raw.join().unwrap().unwrap(), data);
        assert_eq!(cached.join().unwrap().unwrap(), data[..2 * PAGE]);
    });
    assert_eq!(client.reconnects(), 1);
}

// Guards what must not be repeated: a `CreateRegion` whose reply the cut
// lost is not sent again (which would fail, or create twice); the caller
// learns that its outcome is unknown, and the client works on.
#[test]
fn a_create_cut_mid_call_is_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), None);
    let proxy = Proxy::start(node.local_addr());
    let client = Client::connect(proxy.addr, options()).unwrap();
    let checker = common::client(&node);
    client.raw().ping(0).unwrap();
    proxy.set_mode(SWALLOW_REPLIES);
    std::thread::scope(|scope| {
        let create = scope.spawn(|| client.create_region("made", 1 << 20, PAGE as u32));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !checker
            .list_regions()
            .unwrap()
            .iter()
            .any(|region| region.name == "made")
        {
            assert!(
                Instant::now() < deadline,
                "the create never reached the node"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        proxy.cut();
        let error = create.join().unwrap().unwrap_err();
        assert!(
            matches!(&error, ClientError::OutcomeUnknown { request, .. } if request == "CreateRegion"),
            "{error}"
        );
        assert!(error.to_string().contains("outcome is unknown"), "{error}");
    });
    // The next call reconnects; the region was created once.
    let regions = client.list_regions().unwrap();
    assert_eq!(regions.iter().filter(|r| r.name == "made").count(), 1);
    assert_eq!(client.reconnects(), 1);
    let again = client
        .create_region("made", 1 << 20, PAGE as u32)
        .unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::RegionExists), "{again}");
}

// Guards fencing across a reconnect: a writer whose connection went silent
// (long enough for the node's writer lease to pass) while another client
// took the region over gets `StaleEpoch` when it reconnects, its handle
// stays fenced, and none of its writes from then on lands.
#[test]
fn a_writer_taken_over_while_cut_off_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), Some(Duration::from_millis(300)));
    let proxy = Proxy::start(node.local_addr());
    let first = Client::connect(
        proxy.addr,
        ClientOptions {
            timeout: Duration::from_secs(1),
            ..options()
        },
    )
    .unwrap();
    let info = first.create_region("f", 1 << 20, PAGE as u32).unwrap();
    let region = first
        .open_region("f", RegionOptions::with_cache_bytes(16 * PAGE as u64))
        .unwrap();
    region.write_at(0, b"first writer").unwrap();
    region.flush().unwrap();
    first.raw().write_pages(&info, &[9], &[1u8; PAGE]).unwrap();

    // The first writer's host goes silent; after the lease another client
    // takes the region over and writes.
    proxy.set_mode(STALL);
    let second = common::client(&node);
    let deadline = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        match second.open_region("f", RegionOptions::with_cache_bytes(16 * PAGE as u64)) {
            Ok(region) => break region,
            Err(error) if error.code() == Some(ErrorCode::WriterBusy) => {
                assert!(Instant::now() < deadline, "the lease never passed");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("{error}"),
        }
    };
    taken.write_at(0, b"second write").unwrap();
    taken.flush().unwrap();

    // The first writer's next write times out, reconnects, and is refused.
    region.write_at(PAGE as u64, b"lost").unwrap();
    let error = region.flush().unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::StaleEpoch), "{error}");
    assert!(region.is_fenced());
    assert!(first.reconnects() >= 1);
    let error = region.write_at(2 * PAGE as u64, b"lost too").unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::StaleEpoch), "{error}");
    let error = first
        .raw()
        .write_pages(&info, &[10], &[2u8; PAGE])
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::StaleEpoch), "{error}");
    // Reads still work through the fenced client.
    let mut out = vec![0u8; PAGE];
    first.raw().read_pages(&info, &[9], &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 1));
    drop(region);

    // None of the fenced writer's writes landed.
    let on_node = read_all(&common::client(&node), &info);
    assert_eq!(&on_node[..12], b"second write");
    assert!(
        on_node[PAGE..3 * PAGE].iter().all(|&b| b == 0),
        "a fenced write landed"
    );
    assert!(
        on_node[10 * PAGE..11 * PAGE].iter().all(|&b| b == 0),
        "a fenced write landed"
    );
    // The new writer is unaffected.
    taken.write_at(PAGE as u64, b"still writing").unwrap();
    taken.flush().unwrap();
}

// Guards the fallback addresses: when the node's address refuses
// connections, the client dials the next in `ClientOptions::fallback` and
// carries on with its open region there.
#[test]
fn the_client_moves_to_a_fallback_address() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), None);
    let mut primary = Proxy::start(node.local_addr());
    let fallback = Proxy::start(node.local_addr());
    let client = Client::connect(
        primary.addr,
        ClientOptions {
            fallback: vec![fallback.addr],
            ..options()
        },
    )
    .unwrap();
    let info = client.create_region("moved", 1 << 20, PAGE as u32).unwrap();
    let region = client
        .open_region("moved", RegionOptions::with_cache_bytes(16 * PAGE as u64))
        .unwrap();
    region.write_at(0, b"before").unwrap();
    region.flush().unwrap();
    primary.stop();
    region.write_at(PAGE as u64, b"after").unwrap();
    region.flush().unwrap();
    assert_eq!(client.peer(), fallback.addr);
    assert_eq!(client.reconnects(), 1);
    let on_node = read_all(&common::client(&node), &info);
    assert_eq!(&on_node[..6], b"before");
    assert_eq!(&on_node[PAGE..PAGE + 5], b"after");
}

// Guards the switch: with reconnecting off, a cut fails the call and every
// later one, as before reconnects existed.
#[test]
fn reconnecting_off_fails_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), None);
    let proxy = Proxy::start(node.local_addr());
    let client = Client::connect(
        proxy.addr,
        ClientOptions {
            reconnect_for: Duration::ZERO,
            ..options()
        },
    )
    .unwrap();
    client.raw().ping(0).unwrap();
    proxy.cut();
    let error = client.raw().ping(0).unwrap_err();
    assert!(error.is_connection_failure(), "{error}");
    assert!(client.list_regions().unwrap_err().is_connection_failure());
    assert_eq!(client.reconnects(), 0);
}

// Guards the move to a primary: a client connected to a node that holds the
// region as a replica is told `NotPrimary ... write to its primary
// HOST:PORT`; it moves there (where the region may have another id), opens
// the region again, and its writes land on the primary.
#[test]
fn a_write_to_a_replica_moves_the_client_to_the_primary() {
    let primary_dir = tempfile::tempdir().unwrap();
    let replica_dir = tempfile::tempdir().unwrap();
    let primary = node_with(primary_dir.path(), None);
    let replica = node_with(replica_dir.path(), None);
    // Another region first on the replica, so that ids differ between nodes.
    common::client(&replica)
        .create_region("other", 1 << 20, PAGE as u32)
        .unwrap();
    let created = common::client(&primary)
        .create_replicated_region(
            "r",
            1 << 20,
            PAGE as u32,
            &[replica.local_addr().to_string().as_str()],
            pagoda::ReplicationMode::Sync,
        )
        .unwrap();
    let client = Client::connect(replica.local_addr(), options()).unwrap();
    let region = client
        .open_region("r", RegionOptions::with_cache_bytes(16 * PAGE as u64))
        .unwrap();
    region.write_at(3 * PAGE as u64, b"to the primary").unwrap();
    region.flush().unwrap();
    assert_eq!(client.peer(), primary.local_addr());
    assert_eq!(client.reconnects(), 1);
    // Reads through the handle go to the primary too.
    let mut back = [0u8; 14];
    region.read_at(3 * PAGE as u64, &mut back).unwrap();
    assert_eq!(&back, b"to the primary");
    let on_primary = read_all(&common::client(&primary), &created);
    assert_eq!(&on_primary[3 * PAGE..3 * PAGE + 14], b"to the primary");
}
