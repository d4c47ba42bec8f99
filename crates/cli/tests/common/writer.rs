//! A thread writing versioned pages to a region under failover, and the
//! record of what it did (acknowledged batches, failures, the model).
#![allow(dead_code)] // not every test binary runs a writer

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pagoda::{Client, ClientError, ErrorCode, RegionInfo};
use rand::{Rng, SeedableRng};

use super::model::{Model, PAGE, page_bytes};

/// Most pages in one write batch.
const BATCH_PAGES_MAX: u64 = 4;
/// Most write batches one writer sends: far more than any test waits for
/// (a quiet loopback node takes about 2,000 a second, and the etcd restart
/// test writes for about 10 s); the writer's time bound ends it first.
const WRITER_BATCHES_MAX: u64 = 500_000;
/// How long a writer pauses after a failed write before it tries again.
const WRITER_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// An acknowledged batch: when its write returned and which node the
/// client was connected to then.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub at: Instant,
    pub peer: SocketAddr,
}

/// A write (or a new client) that failed.
#[derive(Clone, Debug)]
pub struct Failure {
    pub at: Instant,
    pub code: Option<ErrorCode>,
    pub message: String,
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure {
            at: Instant::now(),
            code: error.code(),
            message: error.to_string(),
        }
    }
}

/// What a writer did.
pub struct Log {
    pub model: Model,
    pub acks: Vec<Ack>,
    pub failures: Vec<Failure>,
}

/// A writer's client and region.
pub enum Handle {
    /// `Client::connect`, each batch sent with `write_pages`.
    Plain { client: Client, info: RegionInfo },
    /// `Client::connect_cluster`: the region opened through the
    /// coordinator, each batch written into its cache and flushed.
    Cluster {
        region: pagoda::Region,
        _client: Client,
    },
}

impl Handle {
    /// Writes `data` to the consecutive `pages`; once it returns Ok, the
    /// node it names has acknowledged them.
    fn write(&self, pages: &[u64], data: &[u8]) -> Result<SocketAddr, ClientError> {
        match self {
            Handle::Plain { client, info } => {
                client.raw().write_pages(info, pages, data)?;
                Ok(client.peer())
            }
            Handle::Cluster { region, .. } => {
                region.write_at(pages[0] * PAGE as u64, data)?;
                region.flush()?;
                Ok(region.peer())
            }
        }
    }
}

/// A thread writing batches of versioned pages to `pages` of a region of
/// `region_pages` pages. It first runs `setup`; it makes a handle with
/// `open`, and a new one after a failed write, after a pause; it stops at
/// `finish`, after `WRITER_BATCHES_MAX` batches or after `time_max`.
pub struct Writer {
    pub log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Writer {
    pub fn start(
        region_pages: u64,
        pages: Range<u64>,
        seed: u64,
        time_max: Duration,
        setup: impl FnOnce() + Send + 'static,
        mut open: impl FnMut() -> Result<Handle, Failure> + Send + 'static,
    ) -> Writer {
        let log = Arc::new(Mutex::new(Log {
            model: Model::new(region_pages),
            acks: Vec::new(),
            failures: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopped) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            setup();
            let began = Instant::now();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut handle: Option<Handle> = None;
            for _ in 0..WRITER_BATCHES_MAX {
                if stopped.load(Ordering::SeqCst) || began.elapsed() > time_max {
                    return;
                }
                if handle.is_none() {
                    match open() {
                        Ok(opened) => handle = Some(opened),
                        Err(failure) => {
                            shared.lock().unwrap().failures.push(failure);
                            std::thread::sleep(WRITER_ERROR_PAUSE);
                            continue;
                        }
                    }
                }
                let count = rng.gen_range(1..=BATCH_PAGES_MAX);
                let start = rng.gen_range(pages.start..pages.end - count + 1);
                let batch: Vec<u64> = (start..start + count).collect();
                let versions: Vec<u64> = {
                    let mut log = shared.lock().unwrap();
                    batch
                        .iter()
                        .map(|&page| {
                            log.model.sent[page as usize] += 1;
                            log.model.sent[page as usize]
                        })
                        .collect()
                };
                let data: Vec<u8> = batch
                    .iter()
                    .zip(&versions)
                    .flat_map(|(&page, &version)| page_bytes(page, version))
                    .collect();
                match handle.as_ref().unwrap().write(&batch, &data) {
                    Ok(peer) => {
                        let ack = Ack {
                            at: Instant::now(),
                            peer,
                        };
                        let mut log = shared.lock().unwrap();
                        for (&page, &version) in batch.iter().zip(&versions) {
                            let acked = &mut log.model.acknowledged[page as usize];
                            *acked = (*acked).max(version);
                        }
                        log.acks.push(ack);
                    }
                    Err(error) => {
                        shared.lock().unwrap().failures.push(error.into());
                        // The handle's write log may be latched, or its
                        // writer lease lost: a new client starts afresh.
                        handle = None;
                        std::thread::sleep(WRITER_ERROR_PAUSE);
                    }
                }
            }
        });
        Writer { log, stop, thread }
    }

    /// Acknowledged batches so far.
    pub fn acks(&self) -> usize {
        self.log.lock().unwrap().acks.len()
    }

    /// Waits, at most `limit`, until `count` batches are acknowledged.
    pub fn wait_for_acks(&self, count: usize, limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        while self.acks() < count {
            assert!(
                !self.thread.is_finished(),
                "{what}: the writer stopped after {} acknowledged batches",
                self.acks()
            );
            assert!(
                Instant::now() < deadline,
                "{what}: only {} batches acknowledged within {limit:?} (failures: {:?})",
                self.acks(),
                self.log.lock().unwrap().failures
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits, at most `limit`, until `check` holds of the log.
    pub fn wait_until(&self, what: &str, limit: Duration, check: impl Fn(&Log) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            {
                let log = self.log.lock().unwrap();
                if check(&log) {
                    return;
                }
                assert!(
                    Instant::now() < deadline && !self.thread.is_finished(),
                    "timed out waiting until {what}; {} batches acknowledged, failures: {:?}",
                    log.acks.len(),
                    log.failures
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The first batch acknowledged after `since` by a node other than
    /// `not` (any node if `None`), waiting for it at most `limit`.
    pub fn first_ack_after(
        &self,
        since: Instant,
        not: Option<&str>,
        limit: Duration,
    ) -> Option<Ack> {
        let not: Option<SocketAddr> = not.map(|addr| addr.parse().unwrap());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(ack) = self
                .log
                .lock()
                .unwrap()
                .acks
                .iter()
                .find(|ack| ack.at > since && Some(ack.peer) != not)
            {
                return Some(*ack);
            }
            if Instant::now() >= deadline || self.thread.is_finished() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the thread and returns what it did.
    pub fn finish(self) -> Log {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the writer does not panic");
        Arc::try_unwrap(self.log)
            .ok()
            .expect("the thread has ended")
            .into_inner()
            .unwrap()
    }
}
