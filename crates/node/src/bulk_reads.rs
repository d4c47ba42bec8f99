//! Reads of bulk-tier pages off the connection's thread.
//!
//! A read request naming pages in the bulk tier is answered in two steps.
//! The connection's thread copies the resident pages into the reply and
//! takes a reference on each paged-out page's blocks
//! ([`Region::read_pages_deferred`](crate::region::Region::read_pages_deferred)),
//! hands the reply to this pool, and goes on with the connection's next
//! request. A pool thread reads the blocks into their places (checking
//! every block's checksum), seals the frame, and hands it back to the
//! connection ([`Completions`]), whose thread sends it as soon as it is
//! between requests, or wakes for it while it waits for the next one. So a
//! disk read holds up neither the requests after it on its connection, nor
//! other connections, nor any lock.
//!
//! The reply still shows the pages as they were when the request was
//! served: blocks are never written in place (a write stores new blocks),
//! and the references keep these from being freed and reused until read.
//! Replies carry their request's id; a client matches them by it, so this
//! one may overtake or be overtaken by others on the connection.
//!
//! Bounds: [`READ_THREADS`] threads and a queue of [`QUEUE_MAX`] replies
//! for the node; [`IN_FLIGHT_MAX`] replies per connection, whose bytes are
//! borrowed from the connections' memory budget. A reply that finds the
//! queue full or no memory to borrow is read on the connection's thread, as
//! before.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex as StdMutex};

use pagoda_wire::HEADER_BYTES;
use parking_lot::Mutex;

use crate::error::NodeError;
use crate::region::BulkFetch;

/// Threads reading the bulk tier for the node's connections, by default.
pub const READ_THREADS: usize = 8;

/// The most reading threads a node starts.
pub const READ_THREADS_MAX: usize = 256;

/// Replies queued for the threads, node-wide.
pub(crate) const QUEUE_MAX: usize = 1024;

/// Replies a connection may have in the pool at once; one more waits for
/// the first to come back.
pub(crate) const IN_FLIGHT_MAX: usize = 32;

/// A reply whose bulk-tier pages are still to be read.
pub(crate) struct PendingRead {
    pub(crate) request_id: u64,
    /// The whole reply frame, its bulk-tier pages still zeros.
    pub(crate) frame: Vec<u8>,
    pub(crate) fetch: BulkFetch,
}

impl PendingRead {
    /// Reads the pages in and seals the frame.
    pub(crate) fn complete(mut self) -> Done {
        #[cfg(test)]
        std::thread::sleep(std::time::Duration::from_millis(
            tests::DELAY_MS.load(std::sync::atomic::Ordering::Relaxed),
        ));
        let bytes = self.frame.len();
        let result = self.fetch.run(&mut self.frame[HEADER_BYTES..]).map(|()| {
            pagoda_wire::frame::reseal(&mut self.frame);
            std::mem::take(&mut self.frame)
        });
        Done {
            request_id: self.request_id,
            bytes,
            result,
        }
    }
}

/// A reply read in: the sealed frame, or why the read failed (the
/// connection answers the request with the error).
pub(crate) struct Done {
    pub(crate) request_id: u64,
    /// The frame's size when it was handed over.
    pub(crate) bytes: usize,
    pub(crate) result: Result<Vec<u8>, NodeError>,
}

struct Job {
    read: PendingRead,
    done: Arc<Completions>,
}

/// The node's pool of reading threads.
pub(crate) struct ReadPool {
    sender: SyncSender<Job>,
}

impl ReadPool {
    /// Starts `threads` threads (at most [`READ_THREADS_MAX`]); `None` if
    /// there are none (replies are then read on the connections' threads).
    pub(crate) fn start(threads: usize) -> Option<ReadPool> {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Job>(QUEUE_MAX);
        let receiver = Arc::new(StdMutex::new(receiver));
        let mut started = 0;
        for number in 0..threads.min(READ_THREADS_MAX) {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pagoda-bulk-read-{number}"))
                .spawn(move || serve(&receiver));
            match spawned {
                Ok(_) => started += 1,
                Err(error) => tracing::warn!(%error, "could not start a bulk-tier reading thread"),
            }
        }
        (started > 0).then_some(ReadPool { sender })
    }

    /// Queues `read`; its reply goes to `done`. Gives it back when the
    /// queue is full.
    pub(crate) fn submit(
        &self,
        read: PendingRead,
        done: &Arc<Completions>,
    ) -> Result<(), PendingRead> {
        let job = Job {
            read,
            done: done.clone(),
        };
        match self.sender.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Err(job.read),
        }
    }
}

/// A reading thread: serves jobs until the pool is dropped (with the arena).
fn serve(receiver: &StdMutex<Receiver<Job>>) {
    loop {
        let job = {
            let Ok(receiver) = receiver.lock() else {
                return;
            };
            match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let (request_id, bytes) = (job.read.request_id, job.read.frame.len());
        // A reply must come back whatever happens: its connection counts it.
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.read.complete()))
            .unwrap_or_else(|_| Done {
                request_id,
                bytes,
                result: Err(NodeError::io(
                    "reading pages from the bulk tier",
                    std::io::Error::other("the reading thread failed unexpectedly"),
                )),
            });
        job.done.push(done);
    }
}

/// Replies read in for one connection, and the event that wakes its thread.
pub(crate) struct Completions {
    ready: Mutex<Vec<Done>>,
    event: OwnedFd,
}

impl Completions {
    pub(crate) fn new() -> std::io::Result<Arc<Completions>> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new
        // descriptor that only this value owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(Completions {
            ready: Mutex::new(Vec::new()),
            // SAFETY: `fd` was just created and is owned by nothing else.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    fn push(&self, done: Done) {
        self.ready.lock().push(done);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our descriptor. A
        // full counter (never, at one per reply) would only fail the write:
        // the waiter still finds the reply when it next looks.
        unsafe { libc::write(self.event.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Whether a reply was read in since the last [`Completions::take`].
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.lock().is_empty()
    }

    /// The replies read in since the last call.
    pub(crate) fn take(&self) -> Vec<Done> {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer (resets the
        // counter; `EAGAIN` when it is zero, which is fine).
        unsafe {
            libc::read(
                self.event.as_raw_fd(),
                count.as_mut_ptr().cast(),
                count.len(),
            )
        };
        std::mem::take(&mut *self.ready.lock())
    }

    /// Sleeps until a reply is read in, or `stream` (if any) is readable, or
    /// `timeout_ms` passed.
    pub(crate) fn wait(&self, stream: Option<RawFd>, timeout_ms: i32) {
        let mut fds = [
            libc::pollfd {
                fd: self.event.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stream.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two pollfd; a negative fd is
        // ignored by poll. An error (EINTR) just ends the wait early.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use pagoda::{Client, ClientOptions};

    use crate::bulk::BulkConfig;
    use crate::{Node, NodeConfig};

    /// How long each reading thread sleeps before a job (a slow disk).
    pub(super) static DELAY_MS: AtomicU64 = AtomicU64::new(0);

    const PAGE: usize = 4096;
    const SEGMENT_PAGES: u64 = 512;
    const SEGMENTS: u64 = 8;

    fn page(number: u64, version: u8) -> Vec<u8> {
        let mut bytes = vec![version; PAGE];
        bytes[..8].copy_from_slice(&number.to_le_bytes());
        bytes
    }

    /// A node with two segments of RAM and a bulk tier in `dir`, and a
    /// client that wrote a region of eight segments with version-1 pages:
    /// most of them are in the bulk tier.
    fn tiered_region(dir: &std::path::Path) -> (Node, Arc<Client>, pagoda::RegionInfo) {
        let mut config = NodeConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            2 * SEGMENT_PAGES * PAGE as u64,
            dir.join("data"),
        );
        config.bulk = Some(BulkConfig {
            dir: dir.join("bulk"),
            capacity_bytes: 64 << 20,
        });
        let node = Node::start(config).unwrap();
        let options = ClientOptions {
            timeout: Duration::from_secs(60),
            ..ClientOptions::default()
        };
        let client = Arc::new(Client::connect(node.local_addr(), options).unwrap());
        let info = client
            .create_region("r", SEGMENTS * SEGMENT_PAGES * PAGE as u64, PAGE as u32)
            .unwrap();
        for segment in 0..SEGMENTS {
            let pages: Vec<u64> =
                (segment * SEGMENT_PAGES..(segment + 1) * SEGMENT_PAGES).collect();
            let data: Vec<u8> = pages.iter().flat_map(|&p| page(p, 1)).collect();
            client.raw().write_pages(&info, &pages, &data).unwrap();
        }
        (node, client, info)
    }

    // Guards the promise that a read of the bulk tier holds up nothing after
    // it on its connection: with every disk read slowed to 400 ms, pings and
    // a write sent on the same connection after such a read are answered
    // before it; the read still returns the pages as they were when it
    // arrived (not the write that overtook it), and the next read the new.
    #[test]
    fn a_slow_bulk_read_holds_up_nothing_behind_it_on_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (node, client, info) = tiered_region(dir.path());
        let stat = client.stat_region("r").unwrap();
        assert!(stat.segments_paged_out >= SEGMENTS - 2, "{stat:?}");
        // The first page of every segment: at least six are on disk.
        let firsts: Vec<u64> = (0..SEGMENTS).map(|s| s * SEGMENT_PAGES).collect();

        DELAY_MS.store(400, Ordering::Relaxed);
        let reader = {
            let (client, info, firsts) = (client.clone(), info.clone(), firsts.clone());
            std::thread::spawn(move || {
                let mut out = vec![0u8; firsts.len() * PAGE];
                client.raw().read_pages(&info, &firsts, &mut out).unwrap();
                (out, Instant::now())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let began = Instant::now();
        for _ in 0..20 {
            client.raw().ping(0).unwrap();
        }
        let new: Vec<u8> = firsts.iter().flat_map(|&p| page(p, 2)).collect();
        client.raw().write_pages(&info, &firsts, &new).unwrap();
        let overtaken = Instant::now();
        let (old, answered) = reader.join().unwrap();
        DELAY_MS.store(0, Ordering::Relaxed);
        assert!(
            overtaken < answered,
            "the pings and the write waited {:?} for the bulk read before them",
            overtaken - began
        );
        let expected: Vec<u8> = firsts.iter().flat_map(|&p| page(p, 1)).collect();
        assert!(
            old == expected,
            "the read saw pages other than at its arrival"
        );
        let mut now = vec![0u8; firsts.len() * PAGE];
        client.raw().read_pages(&info, &firsts, &mut now).unwrap();
        assert!(now == new, "the write after the read was lost");
        drop(node);
    }

    // Guards the error path of a read finished off the connection's thread:
    // with the bulk file damaged behind the node's back, a read of a page
    // there is answered with `Corrupt` (never the damaged bytes), and the
    // same connection goes on serving reads of resident pages.
    #[test]
    fn a_damaged_block_answers_its_read_with_an_error_and_the_connection_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (_node, client, info) = tiered_region(dir.path());
        // Every block on disk overwritten (the node reads with direct I/O,
        // so it sees this).
        let file = dir.path().join("bulk").join(crate::bulk::FILE_NAME);
        let length = std::fs::metadata(&file).unwrap().len();
        std::fs::write(&file, vec![0x5a; length as usize]).unwrap();
        let (mut damaged, mut intact) = (0, 0);
        let mut out = vec![0u8; PAGE];
        for segment in 0..SEGMENTS {
            let number = segment * SEGMENT_PAGES + 3;
            match client.raw().read_pages(&info, &[number], &mut out) {
                Ok(()) => {
                    assert!(out == page(number, 1), "page {number} read back wrong");
                    intact += 1;
                }
                Err(error) => {
                    assert_eq!(error.code(), Some(pagoda::ErrorCode::Corrupt), "{error}");
                    damaged += 1;
                }
            }
            client.raw().ping(0).unwrap();
        }
        assert!(damaged >= SEGMENTS - 2, "{damaged} reads failed");
        assert!(intact >= 1, "the resident segments read back");
    }
}
