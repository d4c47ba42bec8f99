//! Reading frames from a byte stream.
//!
//! A [`FrameReader`] buffers what the stream delivers, so that several
//! pipelined frames cost one read, and hands out one validated frame at a time.
//! Before it blocks in a read it spins on non-blocking reads, for a budget
//! that adapts below a configured ceiling ([`crate::spin`]): on this class of
//! machine a blocking loopback round trip costs about eight times a polling
//! one, because waking a sleeping thread is the dominant cost (see BRIEF.md).

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::error::WireError;
use crate::frame::{CHECKSUM_OFFSET, FrameHeader, HEADER_BYTES};
use crate::limits::FRAME_PAYLOAD_BYTES_MAX;
use crate::spin::Spin;

/// A stream that can also be read without blocking.
pub trait SpinRead: Read {
    /// Reads what is available now: `Ok(None)` if nothing is.
    fn read_nonblocking(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;

    /// Bounds how long a blocking read may wait (`None`: forever). A read
    /// that times out fails with `WouldBlock` or `TimedOut`. Streams that
    /// cannot time out (in-memory ones in tests) ignore it.
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = timeout;
        Ok(())
    }

    /// The file descriptor that becomes readable when more data may be
    /// read, for a caller that waits on it together with other events
    /// (`None`: the stream has none, and such a caller polls).
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

pub(crate) fn recv_dontwait(fd: i32, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for the
    // duration of the call, and recv writes at most that many bytes.
    let result = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if result >= 0 {
        return Ok(Some(result as usize));
    }
    let error = io::Error::last_os_error();
    match error.kind() {
        io::ErrorKind::WouldBlock => Ok(None),
        io::ErrorKind::Interrupted => Ok(None),
        _ => Err(error),
    }
}

impl SpinRead for TcpStream {
    fn read_nonblocking(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        recv_dontwait(self.as_raw_fd(), buf)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }

    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.as_raw_fd())
    }
}

impl SpinRead for std::os::unix::net::UnixStream {
    fn read_nonblocking(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        recv_dontwait(self.as_raw_fd(), buf)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }

    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.as_raw_fd())
    }
}

/// Wraps any reader as a [`SpinRead`] that never has data without blocking
/// (for tests over in-memory streams).
#[derive(Debug)]
pub struct NoSpin<R>(pub R);

impl<R: Read> Read for NoSpin<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> SpinRead for NoSpin<R> {
    fn read_nonblocking(&mut self, _buf: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(None)
    }
}

/// A validated frame borrowed from a [`FrameReader`]'s buffer.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The frame's header.
    pub header: FrameHeader,
    /// The frame's payload; its checksum has been verified.
    pub payload: &'a [u8],
}

/// The initial buffer size: large enough for a typical batch of pages.
const BUFFER_BYTES_INITIAL: usize = 256 * 1024;

/// Reads frames from a stream; see the module documentation.
///
/// By default the buffer grows to whatever frame the limits allow and stays
/// that size. A server that accounts for its memory instead reads the next
/// header with [`FrameReader::next_header`], makes room with
/// [`FrameReader::reserve_frame`] (or drops the frame with
/// [`FrameReader::skip_frame`]), and gives memory back with
/// [`FrameReader::shrink_to`]. Deadlines ([`FrameReader::set_deadline`],
/// [`FrameReader::set_frame_timeout`]) bound how long a read may wait.
#[derive(Debug)]
pub struct FrameReader<R> {
    stream: R,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    consumed_on_next: usize,
    spin: Spin,
    payload_limit: usize,
    /// No read waits past this instant; what it bounds and its length, for
    /// the error.
    deadline: Option<(Instant, &'static str, Duration)>,
    /// A frame must complete within this of when it was first seen partial.
    frame_timeout: Option<Duration>,
    /// When the current frame was first seen incomplete.
    frame_began: Option<Instant>,
    /// Whether a read timeout is set on the stream (and must be cleared
    /// before a read that may wait forever).
    timeout_set: bool,
    /// Waiting for a frame to begin (after the spin) longer than this
    /// returns [`WireError::Idle`].
    idle_timeout: Option<Duration>,
}

/// What an idle wait is called in its deadline.
const IDLE_WAIT: &str = "the wait for a frame";

impl<R: SpinRead> FrameReader<R> {
    /// A reader over `stream` that spins (for at most `spin`, adapting below
    /// it) before each blocking read.
    pub fn new(stream: R, spin: Duration) -> Self {
        FrameReader::with_capacity(stream, spin, BUFFER_BYTES_INITIAL)
    }

    /// Like [`FrameReader::new`] with a buffer of `capacity` bytes (at least
    /// one header).
    pub fn with_capacity(stream: R, spin: Duration, capacity: usize) -> Self {
        FrameReader {
            stream,
            buffer: vec![0; capacity.max(HEADER_BYTES)],
            start: 0,
            end: 0,
            consumed_on_next: 0,
            spin: Spin::new(spin),
            payload_limit: FRAME_PAYLOAD_BYTES_MAX,
            deadline: None,
            frame_timeout: None,
            frame_began: None,
            timeout_set: false,
            idle_timeout: None,
        }
    }

    /// A wait for the next frame to begin that lasts longer than `timeout`
    /// (after the spin) ends with [`WireError::Idle`], and the stream stays
    /// usable (`None`: wait forever). A server that holds memory for a
    /// connection gives it back when the connection goes idle this way,
    /// without a system call on the path of a busy connection.
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.idle_timeout = timeout;
    }

    /// No read waits past `deadline` (`None`: no deadline); one that would
    /// fails with [`WireError::TimedOut`] naming `what` and `after`, the time
    /// it was given. A server bounds its whole handshake this way.
    pub fn set_deadline(&mut self, deadline: Option<Instant>, what: &'static str, after: Duration) {
        self.deadline = deadline.map(|at| (at, what, after));
    }

    /// A frame whose first bytes have arrived must be complete within
    /// `timeout` (`None`: no bound), or the read fails with
    /// [`WireError::TimedOut`]. Waiting for a frame to begin is not bounded.
    pub fn set_frame_timeout(&mut self, timeout: Option<Duration>) {
        self.frame_timeout = timeout;
    }

    /// How long the next read spins before it blocks (the budget learnt,
    /// cut on a busy machine).
    pub fn spin_budget(&self) -> Duration {
        self.spin.current()
    }

    /// The buffer's size in bytes.
    pub fn capacity(&self) -> usize {
        self.buffer.len()
    }

    /// The underlying stream, mutably (to write to a stream that is read and
    /// written as one).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.stream
    }

    /// Caps the payload of frames read from now on (at most the protocol's
    /// limit). A server sets a small cap until the peer has authenticated, so
    /// that an unauthenticated peer cannot make it buffer a large frame.
    pub fn set_payload_limit(&mut self, limit: usize) {
        self.payload_limit = limit.min(FRAME_PAYLOAD_BYTES_MAX);
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.stream
    }

    /// Bytes received but not yet handed out as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start - self.consumed_on_next
    }

    /// Drops the frame handed out last, and rewinds an empty buffer.
    fn drop_consumed(&mut self) {
        if self.consumed_on_next > 0 {
            self.start += self.consumed_on_next;
            self.consumed_on_next = 0;
            self.frame_began = None;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads the next frame's header (waiting for it as needed) and checks
    /// it, without consuming the frame: the next [`FrameReader::read_frame`]
    /// or [`FrameReader::skip_frame`] returns or drops this frame.
    pub fn next_header(&mut self) -> Result<FrameHeader, WireError> {
        self.drop_consumed();
        self.fill_to(HEADER_BYTES)?;
        self.buffered_header()
    }

    /// The header at the front of the buffer (which holds one), checked.
    fn buffered_header(&self) -> Result<FrameHeader, WireError> {
        let header = FrameHeader::parse(&self.header_bytes())?;
        if header.payload_len as usize > self.payload_limit {
            return Err(WireError::FrameTooLarge {
                length: header.payload_len as usize,
                limit: self.payload_limit,
            });
        }
        Ok(header)
    }

    fn header_bytes(&self) -> [u8; HEADER_BYTES] {
        self.buffer[self.start..self.start + HEADER_BYTES]
            .try_into()
            .unwrap()
    }

    /// Makes the buffer hold at least `total` bytes from the current frame's
    /// start: a frame of that size (header included) is then read without
    /// growing it. Returns the buffer's new size.
    pub fn reserve_frame(&mut self, total: usize) -> usize {
        if self.buffer.len() - self.start < total {
            self.compact();
            if self.buffer.len() < total {
                self.buffer.resize(total, 0);
            }
        }
        self.buffer.len()
    }

    /// Shrinks the buffer towards `capacity` bytes, but never below what it
    /// holds unread. Returns the buffer's new size.
    pub fn shrink_to(&mut self, capacity: usize) -> usize {
        let capacity = capacity.max(HEADER_BYTES);
        if self.buffer.len() <= capacity {
            return self.buffer.len();
        }
        self.start += self.consumed_on_next;
        self.consumed_on_next = 0;
        self.compact();
        let keep = capacity.max(self.end);
        if keep < self.buffer.len() {
            self.buffer.truncate(keep);
            self.buffer.shrink_to_fit();
        }
        self.buffer.len()
    }

    /// Moves the unread bytes to the front of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Drops the frame whose header [`FrameReader::next_header`] returned,
    /// reading its payload through the buffer as it is now (without growing
    /// it) and checking its checksum, so that the stream stays usable and the
    /// frame can be answered. Returns its header.
    pub fn skip_frame(&mut self) -> Result<FrameHeader, WireError> {
        let header_bytes = self.header_bytes();
        let header = FrameHeader::parse(&header_bytes)?;
        let mut crc = crc32c::crc32c(&header_bytes[..CHECKSUM_OFFSET]);
        let mut remaining = header.payload_len as usize;
        self.start += HEADER_BYTES;
        loop {
            let have = (self.end - self.start).min(remaining);
            crc = crc32c::crc32c_append(crc, &self.buffer[self.start..self.start + have]);
            self.start += have;
            remaining -= have;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            if remaining == 0 {
                break;
            }
            self.begin_partial();
            let received = self.read_some()?;
            if received == 0 {
                return Err(WireError::Truncated {
                    received: HEADER_BYTES + header.payload_len as usize - remaining,
                    expected: HEADER_BYTES + header.payload_len as usize,
                });
            }
            self.end += received;
        }
        self.frame_began = None;
        if crc != header.checksum {
            return Err(WireError::BadChecksum {
                expected: header.checksum,
                actual: crc,
            });
        }
        Ok(header)
    }

    /// Reads the next frame. Framing errors (bad magic, version, length,
    /// checksum, a stream closed mid-frame) leave the stream unusable: the
    /// caller reports them and closes the connection.
    pub fn read_frame(&mut self) -> Result<Frame<'_>, WireError> {
        let header = self.next_header()?;
        let header_bytes = self.header_bytes();
        let total = HEADER_BYTES + header.payload_len as usize;
        debug_assert!(total <= HEADER_BYTES + FRAME_PAYLOAD_BYTES_MAX);
        self.fill_to(total)?;
        self.frame_began = None;
        let payload = &self.buffer[self.start + HEADER_BYTES..self.start + total];
        header.verify(&header_bytes, payload)?;
        self.consumed_on_next = total;
        Ok(Frame { header, payload })
    }

    /// Reads the next frame if it is whole in the buffer or completes with
    /// reads that need not wait; `Ok(None)` otherwise, keeping any part of
    /// it that arrived for the next call. Never blocks: a client collects
    /// replies it does not want to wait for (prefetches) this way. Errors are
    /// those of [`FrameReader::read_frame`].
    pub fn poll_frame(&mut self) -> Result<Option<Frame<'_>>, WireError> {
        self.drop_consumed();
        loop {
            let have = self.end - self.start;
            let needed = if have >= HEADER_BYTES {
                HEADER_BYTES + self.buffered_header()?.payload_len as usize
            } else {
                HEADER_BYTES
            };
            if have >= HEADER_BYTES && have >= needed {
                // Whole: read_frame returns it without reading.
                return self.read_frame().map(Some);
            }
            if self.buffer.len() - self.start < needed {
                self.compact();
                if self.buffer.len() < needed {
                    self.buffer
                        .resize(needed.next_power_of_two().max(needed), 0);
                }
            }
            let end = self.end;
            match self.stream.read_nonblocking(&mut self.buffer[end..])? {
                None => return Ok(None),
                Some(0) => {
                    if self.end == self.start {
                        return Err(WireError::Closed);
                    }
                    return Err(WireError::Truncated {
                        received: self.end - self.start,
                        expected: needed,
                    });
                }
                Some(count) => self.end += count,
            }
        }
    }

    /// Reads what the stream has now, without waiting: `true` if bytes
    /// arrived or the stream ended (the next read reports the end), `false`
    /// if nothing was there. A server waiting for both the next request and
    /// other work calls it before it sleeps on [`SpinRead::readiness_fd`].
    pub fn try_fill(&mut self) -> Result<bool, WireError> {
        self.drop_consumed();
        if self.end == self.buffer.len() {
            self.compact();
            if self.end == self.buffer.len() {
                // A whole buffer is waiting: no need to read more now.
                return Ok(true);
            }
        }
        let end = self.end;
        match self.stream.read_nonblocking(&mut self.buffer[end..])? {
            None => Ok(false),
            Some(0) => Ok(true),
            Some(count) => {
                self.end += count;
                Ok(true)
            }
        }
    }

    /// Makes sure `needed` bytes from `start` are buffered, reading as needed.
    /// `needed` is bounded by the frame limit, checked from the header first.
    fn fill_to(&mut self, needed: usize) -> Result<(), WireError> {
        while self.end - self.start < needed {
            if self.buffer.len() - self.start < needed {
                // Move the partial frame to the front, and grow if the frame
                // is larger than the buffer.
                self.compact();
                if self.buffer.len() < needed {
                    self.buffer
                        .resize(needed.next_power_of_two().max(needed), 0);
                }
            }
            if self.end > self.start {
                self.begin_partial();
            }
            let received = self.read_some()?;
            if received == 0 {
                let have = self.end - self.start;
                if have == 0 {
                    return Err(WireError::Closed);
                }
                return Err(WireError::Truncated {
                    received: have,
                    expected: needed,
                });
            }
            self.end += received;
        }
        Ok(())
    }

    /// Notes that a frame has begun to arrive and is incomplete.
    fn begin_partial(&mut self) {
        if self.frame_timeout.is_some() && self.frame_began.is_none() {
            self.frame_began = Some(Instant::now());
        }
    }

    /// The instant the next read must end by, and what it bounds.
    fn read_deadline(&self) -> Option<(Instant, &'static str, Duration)> {
        let frame = match (self.frame_began, self.frame_timeout) {
            (Some(began), Some(timeout)) => Some((began + timeout, "a frame", timeout)),
            _ => None,
        };
        match (self.deadline, frame) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    fn read_some(&mut self) -> Result<usize, WireError> {
        let deadline = self.read_deadline();
        let end = self.end;
        if !self.spin.ceiling().is_zero() {
            let stream = &mut self.stream;
            let buffer = &mut self.buffer[end..];
            if let Some(count) = self.spin.spin(|| stream.read_nonblocking(buffer))? {
                return Ok(count);
            }
        }
        // An idle bound applies only between frames.
        let idle = match self.idle_timeout {
            Some(timeout) if self.end == self.start && self.frame_began.is_none() => {
                Some((Instant::now() + timeout, IDLE_WAIT, timeout))
            }
            _ => None,
        };
        let deadline = match (deadline, idle) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        loop {
            // The common case, a reader with no deadline waiting at a frame
            // boundary, makes no system call here.
            match deadline {
                Some((at, what, after)) => {
                    let now = Instant::now();
                    if now >= at && what == IDLE_WAIT {
                        return Err(WireError::Idle { after });
                    }
                    if now >= at {
                        return Err(WireError::TimedOut { what, after });
                    }
                    // Whole milliseconds, at least one: a zero timeout would
                    // mean "forever".
                    let left = (at - now).max(Duration::from_millis(1));
                    self.stream.set_read_timeout(Some(left))?;
                    self.timeout_set = true;
                }
                None if self.timeout_set => {
                    self.stream.set_read_timeout(None)?;
                    self.timeout_set = false;
                }
                None => {}
            }
            match self.stream.read(&mut self.buffer[end..]) {
                Ok(count) => {
                    self.spin.woke();
                    return Ok(count);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error)
                    if deadline.is_some()
                        && matches!(
                            error.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    continue;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameBuilder, Opcode};
    use std::io::Cursor;

    fn frame(request_id: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut builder = FrameBuilder::begin(&mut out, Opcode::Ping, request_id, 0);
        builder.payload().extend_from_slice(payload);
        builder.finish();
        out
    }

    // Guards pipelining: several frames delivered in one read come out one by
    // one, in order, with their payloads intact.
    #[test]
    fn reads_back_to_back_frames() {
        let mut bytes = frame(1, b"one");
        bytes.extend(frame(2, &[5u8; 300_000]));
        bytes.extend(frame(3, b""));
        let mut reader = FrameReader::new(NoSpin(Cursor::new(bytes)), Duration::ZERO);
        let first = reader.read_frame().unwrap();
        assert_eq!((first.header.request_id, first.payload), (1, &b"one"[..]));
        let second = reader.read_frame().unwrap();
        assert_eq!(second.header.request_id, 2);
        assert_eq!(second.payload.len(), 300_000);
        assert!(second.payload.iter().all(|&b| b == 5));
        assert_eq!(reader.read_frame().unwrap().header.request_id, 3);
        assert!(matches!(reader.read_frame(), Err(WireError::Closed)));
    }

    // Guards the idle timeout: a wait for a frame that does not begin ends
    // with Idle, the stream stays usable, and a frame that has begun is not
    // cut short by it.
    #[test]
    fn idle_timeout_ends_a_wait_and_keeps_the_stream() {
        use std::io::Write;
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut reader = FrameReader::new(theirs, Duration::from_micros(10));
        reader.set_idle_timeout(Some(Duration::from_millis(20)));
        let began = Instant::now();
        assert!(matches!(reader.read_frame(), Err(WireError::Idle { .. })));
        assert!(began.elapsed() >= Duration::from_millis(20));
        let bytes = frame(4, b"after idle");
        ours.write_all(&bytes[..10]).unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            ours.write_all(&bytes[10..]).unwrap();
            ours
        });
        let frame = reader
            .read_frame()
            .expect("a frame that began is waited for");
        assert_eq!(frame.header.request_id, 4);
        drop(writer.join().unwrap());
    }

    // Guards the non-blocking read: nothing there gives None at once, a
    // frame arriving in pieces is kept across calls and returned whole, two
    // frames in one read come out one per call, and the stream's end is an
    // error.
    #[test]
    fn poll_frame_never_waits_and_keeps_partial_frames() {
        use std::io::Write;
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut reader = FrameReader::new(theirs, Duration::ZERO);
        let began = Instant::now();
        assert!(reader.poll_frame().unwrap().is_none());
        assert!(began.elapsed() < Duration::from_millis(100));
        let bytes = frame(7, &[9u8; 70_000]);
        ours.write_all(&bytes[..5]).unwrap();
        assert!(reader.poll_frame().unwrap().is_none());
        ours.write_all(&bytes[5..40_000]).unwrap();
        assert!(reader.poll_frame().unwrap().is_none());
        let mut rest = bytes[40_000..].to_vec();
        rest.extend(frame(8, b"next"));
        ours.write_all(&rest).unwrap();
        let whole = reader.poll_frame().unwrap().expect("complete now");
        assert_eq!(whole.header.request_id, 7);
        assert!(whole.payload.iter().all(|&b| b == 9) && whole.payload.len() == 70_000);
        let next = reader.poll_frame().unwrap().expect("buffered");
        assert_eq!((next.header.request_id, next.payload), (8, &b"next"[..]));
        assert!(reader.poll_frame().unwrap().is_none());
        drop(ours);
        assert!(matches!(reader.poll_frame(), Err(WireError::Closed)));
    }

    // Guards truncation: a stream that ends mid-frame is reported as such.
    #[test]
    fn truncated_stream_is_reported() {
        let bytes = frame(1, b"payload");
        for cut in 1..bytes.len() {
            let mut reader =
                FrameReader::new(NoSpin(Cursor::new(bytes[..cut].to_vec())), Duration::ZERO);
            assert!(
                matches!(reader.read_frame(), Err(WireError::Truncated { .. })),
                "cut at {cut}"
            );
        }
    }
}
