//! Co-located access: a client on the node's host reads region pages from
//! shared memory instead of asking the node over the network.
//!
//! The client opens a second, local channel to the node: its Unix socket
//! (the path the node gives in answer to `LocalSocket`, or one the
//! application names), authenticated like any connection. For each region it
//! opens it sends `ShareRegion`; the node checks the read right and answers
//! with the region's data and metadata files (read-only memfds, passed as
//! `SCM_RIGHTS`). A cache miss is then served by copying the page out of the
//! data file, mapped in windows of [`WINDOW_BYTES`] on first use, under the
//! segment's seqlock version in the metadata file (see the node's
//! `region_memory` module for the layout and the writer's side). No socket
//! and no system call are on that path.
//!
//! **What stays on the socket.** Writes, flushes, transactions, journals and
//! checkpoints go over the region's usual connection exactly as before, so
//! the node's write numbering, copy-on-write checkpoints, journals and
//! replication see every write as before. A read from the mapping sees
//! every write the node has applied: a write's reply is sent after its bytes
//! are in the segment and its version is even again, so a miss after an
//! acknowledged write sees it.
//!
//! **When the mapping is not used.** A segment the node has paged out to
//! its bulk tier (version 1), or whose version stays odd (a write in
//! progress) for a few retries, or changes during the copy, is read over
//! the socket instead, and so is everything while the local channel is
//! down: a watcher thread notices the node closing it (a node that stops or
//! dies closes every connection) and marks every mapping from it stale at
//! once. A mapping is also dropped when the region's connection reconnects
//! (the node may be another one, or the same one restarted), and the region
//! is shared again on its next miss.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pagoda_wire::frame::{FrameHeader, HEADER_BYTES};
use pagoda_wire::limits::FRAME_PAYLOAD_BYTES_MAX;
use pagoda_wire::{Request, Response};
use parking_lot::Mutex;

use crate::error::ClientError;

/// Whether the client reads pages from shared memory when the node runs on
/// its host ([`crate::ClientOptions::colocated`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Colocated {
    /// When the node's address is a loopback one, ask the node for its local
    /// socket and use it; stay on TCP if anything fails (logged at debug).
    #[default]
    Auto,
    /// Never: every read goes over the connection.
    Off,
    /// Use the node's local socket at this path, whatever the node's address.
    Socket(PathBuf),
}

/// How a client reaches its node's pages ([`crate::Client::transport`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// Misses are served from shared memory on the node's host; writes and
    /// the rest go over the connection.
    Colocated,
}

impl Transport {
    /// A short name: `tcp`, `tls` or `colocated`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Colocated => "colocated",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes of the data file mapped at a time.
pub const WINDOW_BYTES: usize = 1 << 30;
/// The version of a segment whose pages the node has paged out to its bulk
/// tier (see the node's `region_memory`): read over the connection.
const PAGED_OUT: u64 = 1;

/// Times a read retries a segment whose version is odd or changed before it
/// asks the node instead.
const SEQLOCK_RETRIES: usize = 8;
/// How often the watcher looks whether its channel is still wanted.
const WATCH_POLL_MS: i32 = 200;
/// How long after a failed attempt to set up the local channel or share a
/// region the client tries again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Most files one reply may carry (the node sends two).
const FILES_MAX: usize = 4;

// The metadata layout (the node's `region_memory`): 64-bit words.
const METADATA_MAGIC: u64 = u64::from_le_bytes(*b"PGDSHM01");
const METADATA_LAYOUT: u64 = 1;
const METADATA_HEADER_WORDS: usize = 8;
const WORD_STATE: usize = 2;

/// An authenticated connection to the node's local socket, and the watcher
/// that marks it dead when the node closes it.
pub(crate) struct LocalChannel {
    stream: Mutex<UnixStream>,
    alive: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    next_id: AtomicU64,
}

impl LocalChannel {
    /// Connects to `path` and authenticates as `options` say.
    pub(crate) fn open(
        path: &Path,
        options: &crate::ClientOptions,
    ) -> Result<Arc<LocalChannel>, ClientError> {
        let io = |source| ClientError::Connect {
            addr: path.display().to_string(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(io)?;
        stream.set_read_timeout(Some(options.timeout)).map_err(io)?;
        stream
            .set_write_timeout(Some(options.timeout))
            .map_err(io)?;
        let watched = stream.try_clone().map_err(io)?;
        let channel = Arc::new(LocalChannel {
            stream: Mutex::new(stream),
            alive: Arc::new(AtomicBool::new(true)),
            closing: Arc::new(AtomicBool::new(false)),
            next_id: AtomicU64::new(1),
        });
        channel.handshake(options)?;
        let alive = channel.alive.clone();
        let closing = channel.closing.clone();
        std::thread::Builder::new()
            .name("pagoda-colocated".into())
            .spawn(move || watch(watched, &alive, &closing))
            .map_err(io)?;
        Ok(channel)
    }

    fn handshake(&self, options: &crate::ClientOptions) -> Result<(), ClientError> {
        let handshake = crate::link::client_handshake(options);
        let (opcode, payload, _) = self.call(&handshake.hello())?;
        let proof = match decode(opcode, &payload)? {
            Response::AuthChallenge { salt, node_nonce } => {
                Some(handshake.proof(salt, &node_nonce))
            }
            _ => None,
        };
        let (opcode, payload) = match proof {
            Some(proof) => {
                let (opcode, payload, _) = self.call(&proof)?;
                (opcode, payload)
            }
            None => (opcode, payload),
        };
        match decode(opcode, &payload)? {
            Response::HelloOk { .. } => Ok(()),
            other => Err(crate::unexpected(&other)),
        }
    }

    /// Whether the node still holds the channel open.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Sends one request and reads its reply, with any files attached.
    fn call(&self, request: &Request<'_>) -> Result<(u8, Vec<u8>, Vec<OwnedFd>), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        request.encode(&mut frame, id, 0);
        let mut stream = self.stream.lock();
        let failed = |error: std::io::Error| {
            self.alive.store(false, Ordering::Release);
            ClientError::Disconnected(format!("the node's local socket: {error}"))
        };
        stream.write_all(&frame).map_err(failed)?;
        let mut files = Vec::new();
        let mut bytes = vec![0u8; HEADER_BYTES];
        let mut filled = 0;
        let mut total = HEADER_BYTES;
        let mut header = None;
        // Bounded: each round reads at least one byte of a frame whose length
        // is checked against the protocol's limit.
        while filled < total {
            let read = receive(&stream, &mut bytes[filled..total], &mut files).map_err(failed)?;
            if read == 0 {
                return Err(failed(std::io::ErrorKind::UnexpectedEof.into()));
            }
            filled += read;
            if header.is_none() && filled == HEADER_BYTES {
                let parsed = FrameHeader::parse(bytes[..HEADER_BYTES].try_into().unwrap())?;
                let payload = parsed.payload_len as usize;
                debug_assert!(payload <= FRAME_PAYLOAD_BYTES_MAX);
                total = HEADER_BYTES + payload;
                bytes.resize(total, 0);
                header = Some(parsed);
            }
        }
        let header = header.expect("a whole frame was read");
        let (head, payload) = bytes.split_at(HEADER_BYTES);
        header.verify(head.try_into().unwrap(), payload)?;
        if header.request_id != id {
            return Err(ClientError::Protocol(format!(
                "local socket: reply to request {} while {id} was asked",
                header.request_id
            )));
        }
        Ok((header.opcode, payload.to_vec(), files))
    }

    /// Asks for region `id`'s memory and maps its metadata.
    pub(crate) fn share(
        &self,
        id: u64,
        page_size: usize,
        size: u64,
        generation: u64,
    ) -> Result<SharedRegion, ClientError> {
        let (opcode, payload, files) = self.call(&Request::ShareRegion { region: id })?;
        let (segment_bytes, data_bytes, metadata_bytes) = match decode(opcode, &payload)? {
            Response::RegionShared {
                segment_bytes,
                data_bytes,
                metadata_bytes,
            } => (segment_bytes, data_bytes, metadata_bytes),
            other => return Err(crate::unexpected(&other)),
        };
        let [data, metadata]: [OwnedFd; 2] = files.try_into().map_err(|files: Vec<_>| {
            ClientError::Protocol(format!(
                "RegionShared carried {} files, not the data and metadata files",
                files.len()
            ))
        })?;
        SharedRegion::map(
            Shape {
                id,
                page_size,
                size,
                segment_bytes,
                data_bytes,
                metadata_bytes,
            },
            data,
            metadata,
            self.alive.clone(),
            generation,
        )
    }
}

impl Drop for LocalChannel {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        let _ = self.stream.lock().shutdown(std::net::Shutdown::Both);
    }
}

fn decode(opcode: u8, payload: &[u8]) -> Result<Response<'_>, ClientError> {
    match Response::decode(opcode, payload)? {
        Response::Error { code, message } => Err(ClientError::Remote {
            code,
            message: message.to_owned(),
        }),
        response => Ok(response),
    }
}

/// Waits until the node closes the channel (or the channel is dropped) and
/// marks it dead.
fn watch(stream: UnixStream, alive: &AtomicBool, closing: &AtomicBool) {
    while !closing.load(Ordering::Acquire) {
        let mut poll = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, WATCH_POLL_MS) };
        if ready > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            break;
        }
    }
    if !closing.load(Ordering::Acquire) {
        tracing::debug!("the node closed its local socket; reads go over the connection");
    }
    alive.store(false, Ordering::Release);
}

/// Reads into `buffer` with `recvmsg`, keeping any files attached.
fn receive(
    stream: &UnixStream,
    buffer: &mut [u8],
    files: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the fields set point at live buffers
    // for the duration of the call.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control) as _;
    let read = loop {
        // SAFETY: a valid socket and the message above.
        let read =
            unsafe { libc::recvmsg(stream.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC) };
        if read >= 0 {
            break read as usize;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    };
    // SAFETY: walking the control messages the kernel filled in, within
    // `msg_controllen`, as CMSG_FIRSTHDR/CMSG_NXTHDR allow.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header);
                let bytes = (*header).cmsg_len as usize - (data as usize - header as usize);
                for index in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(index));
                    // Owned at once, so that every file is closed, also
                    // those beyond what is expected.
                    let owned = OwnedFd::from_raw_fd(fd);
                    if files.len() < FILES_MAX {
                        files.push(owned);
                    }
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    Ok(read)
}

/// What the client knows of a region and what the node says of its files.
struct Shape {
    id: u64,
    page_size: usize,
    size: u64,
    segment_bytes: u64,
    data_bytes: u64,
    metadata_bytes: u64,
}

/// A region's memory, mapped read-only; see the module documentation.
pub(crate) struct SharedRegion {
    id: u64,
    page_size: usize,
    pages_per_segment: u64,
    segment_count: usize,
    data: OwnedFd,
    data_bytes: usize,
    windows: Box<[OnceLock<usize>]>,
    metadata: *const AtomicU64,
    metadata_bytes: usize,
    alive: Arc<AtomicBool>,
    /// The link's reconnect count when the region was shared.
    generation: u64,
}

// SAFETY: the mappings are read-only address ranges read with atomic loads;
// the windows are set once.
unsafe impl Send for SharedRegion {}
// SAFETY: see `Send`.
unsafe impl Sync for SharedRegion {}

fn file_bytes(fd: &OwnedFd) -> std::io::Result<u64> {
    // SAFETY: a zeroed stat is valid and fstat fills it.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.st_size as u64)
}

fn map_read_only(fd: &OwnedFd, offset: usize, bytes: usize) -> std::io::Result<usize> {
    // SAFETY: a read-only shared mapping of a file we hold; checked.
    let pointer = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if pointer == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pointer as usize)
}

impl SharedRegion {
    fn map(
        shape: Shape,
        data: OwnedFd,
        metadata: OwnedFd,
        alive: Arc<AtomicBool>,
        generation: u64,
    ) -> Result<SharedRegion, ClientError> {
        let invalid = |what: String| ClientError::Protocol(format!("RegionShared: {what}"));
        let segment_bytes = shape.segment_bytes;
        if !segment_bytes.is_power_of_two()
            || segment_bytes < shape.page_size as u64
            || segment_bytes > WINDOW_BYTES as u64
        {
            return Err(invalid(format!("segment size {segment_bytes}")));
        }
        let segment_count = shape.size.div_ceil(segment_bytes);
        if shape.data_bytes != segment_count * segment_bytes
            || shape.metadata_bytes != (METADATA_HEADER_WORDS as u64 + segment_count) * 8
        {
            return Err(invalid(format!(
                "files of {} and {} bytes for a region of {} bytes",
                shape.data_bytes, shape.metadata_bytes, shape.size
            )));
        }
        // Files shorter than announced would fault (SIGBUS) when read.
        let io = |error: std::io::Error| invalid(format!("the shared files: {error}"));
        if file_bytes(&data).map_err(io)? < shape.data_bytes
            || file_bytes(&metadata).map_err(io)? < shape.metadata_bytes
        {
            return Err(invalid("the files are shorter than announced".into()));
        }
        let metadata_bytes = shape.metadata_bytes as usize;
        let pointer = map_read_only(&metadata, 0, metadata_bytes).map_err(io)?;
        let windows = (0..(shape.data_bytes as usize).div_ceil(WINDOW_BYTES))
            .map(|_| OnceLock::new())
            .collect();
        let region = SharedRegion {
            id: shape.id,
            page_size: shape.page_size,
            pages_per_segment: segment_bytes / shape.page_size as u64,
            segment_count: segment_count as usize,
            data,
            data_bytes: shape.data_bytes as usize,
            windows,
            metadata: pointer as *const AtomicU64,
            metadata_bytes,
            alive,
            generation,
        };
        let header: Vec<u64> = (0..METADATA_HEADER_WORDS)
            .map(|word| region.word(word).load(Ordering::Acquire))
            .collect();
        let expected = [
            METADATA_MAGIC,
            METADATA_LAYOUT,
            0,
            segment_bytes,
            shape.page_size as u64,
            shape.size,
            segment_count,
        ];
        if header[..expected.len()] != expected {
            return Err(invalid(format!(
                "the metadata file's header {header:x?} does not describe the region"
            )));
        }
        Ok(region)
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        assert!(index < self.metadata_bytes / 8);
        // SAFETY: inside the mapping, which lives as long as `self`.
        unsafe { &*self.metadata.add(index) }
    }

    /// The region id it was shared for.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether it can still be read: the channel is up, the link has not
    /// reconnected since (`generation`), and the node has not closed it.
    pub(crate) fn is_current(&self, generation: u64) -> bool {
        self.generation == generation
            && self.alive.load(Ordering::Acquire)
            && self.word(WORD_STATE).load(Ordering::Acquire) == 0
    }

    fn window(&self, index: usize) -> Option<usize> {
        if let Some(&base) = self.windows[index].get() {
            return Some(base);
        }
        let offset = index * WINDOW_BYTES;
        let bytes = (self.data_bytes - offset).min(WINDOW_BYTES);
        let base = match map_read_only(&self.data, offset, bytes) {
            Ok(base) => base,
            Err(error) => {
                tracing::debug!(%error, "mapping a window of a shared region failed");
                return None;
            }
        };
        if let Err(ours) = self.windows[index].set(base) {
            // Another reader mapped it first.
            // SAFETY: our own mapping, never handed out.
            unsafe { libc::munmap(ours as *mut libc::c_void, bytes) };
        }
        self.windows[index].get().copied()
    }

    /// Copies page `page` into `out` (one page) if the mapping can serve it
    /// consistently; `false` when it must be read over the connection.
    pub(crate) fn read_page(&self, page: u64, out: &mut [u8]) -> bool {
        debug_assert_eq!(out.len(), self.page_size);
        let segment = (page / self.pages_per_segment) as usize;
        if segment >= self.segment_count {
            return false;
        }
        let version = self.word(METADATA_HEADER_WORDS + segment);
        let offset = page as usize * self.page_size;
        for _ in 0..SEQLOCK_RETRIES {
            let before = version.load(Ordering::Acquire);
            if before == 0 {
                // Not held by the node: zeros, without touching the file
                // (reading a hole would allocate memory into it).
                out.fill(0);
                return true;
            }
            if before == PAGED_OUT {
                // In the node's bulk tier, not in the file: ask the node.
                return false;
            }
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let Some(base) = self.window(offset / WINDOW_BYTES) else {
                return false;
            };
            let source = (base + offset % WINDOW_BYTES) as *const AtomicU64;
            // The seqlock read: relaxed atomic loads of the racy bytes (never
            // a plain read of memory another process may be writing), then an
            // acquire fence so the second version load is not satisfied
            // before them.
            for (index, chunk) in out.chunks_exact_mut(8).enumerate() {
                // SAFETY: the page lies inside the window (whole segments, a
                // segment holds whole pages), which stays mapped while `self`
                // lives; the address is 8-byte aligned.
                let word = unsafe { (*source.add(index)).load(Ordering::Relaxed) };
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            fence(Ordering::Acquire);
            if version.load(Ordering::Relaxed) == before {
                return true;
            }
        }
        false
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        for (index, window) in self.windows.iter().enumerate() {
            if let Some(&base) = window.get() {
                let bytes = (self.data_bytes - index * WINDOW_BYTES).min(WINDOW_BYTES);
                // SAFETY: mapped with this length, unmapped once.
                unsafe { libc::munmap(base as *mut libc::c_void, bytes) };
            }
        }
        // SAFETY: as above.
        unsafe { libc::munmap(self.metadata as *mut libc::c_void, self.metadata_bytes) };
    }
}

/// A link's local channel, set up on first need; see the module
/// documentation.
pub(crate) struct Colocation {
    setting: Colocated,
    state: Mutex<ChannelState>,
}

struct ChannelState {
    channel: Option<Arc<LocalChannel>>,
    /// No new attempt before this.
    retry_at: Option<Instant>,
}

impl Colocation {
    pub(crate) fn new(setting: Colocated) -> Colocation {
        Colocation {
            setting,
            state: Mutex::new(ChannelState {
                channel: None,
                retry_at: None,
            }),
        }
    }

    /// Whether a live local channel is up.
    pub(crate) fn is_active(&self) -> bool {
        self.state
            .lock()
            .channel
            .as_ref()
            .is_some_and(|channel| channel.is_alive())
    }

    /// The live local channel, set up if needed and allowed: `ask_path`
    /// asks the node for its local socket (over the link).
    pub(crate) fn channel(
        &self,
        peer_is_loopback: bool,
        options: &crate::ClientOptions,
        ask_path: impl FnOnce() -> Result<String, ClientError>,
    ) -> Option<Arc<LocalChannel>> {
        let mut state = self.state.lock();
        if let Some(channel) = &state.channel {
            if channel.is_alive() {
                return Some(channel.clone());
            }
            state.channel = None;
        }
        if state.retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        let path = match &self.setting {
            Colocated::Off => return None,
            Colocated::Auto if !peer_is_loopback => return None,
            Colocated::Auto => match ask_path() {
                Ok(path) if !path.is_empty() => PathBuf::from(path),
                Ok(_) => {
                    tracing::debug!("the node has no local socket; reads stay on the connection");
                    state.retry_at = Some(Instant::now() + RETRY_AFTER);
                    return None;
                }
                Err(error) => {
                    tracing::debug!(%error, "could not ask the node for its local socket");
                    state.retry_at = Some(Instant::now() + RETRY_AFTER);
                    return None;
                }
            },
            Colocated::Socket(path) => path.clone(),
        };
        match LocalChannel::open(&path, options) {
            Ok(channel) => {
                tracing::debug!(path = %path.display(), "co-located: reading pages from shared memory");
                state.channel = Some(channel.clone());
                state.retry_at = None;
                Some(channel)
            }
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "co-located access unavailable; reads stay on the connection");
                state.retry_at = Some(Instant::now() + RETRY_AFTER);
                None
            }
        }
    }
}
