//! Reading frames from a byte stream.
//!
//! A [`FrameReader`] buffers what the stream delivers, so that several
//! pipelined frames cost one read, and hands out one validated frame at a time.
//! Before it blocks in a read it spins for a configurable budget on
//! non-blocking reads: on this class of machine a blocking loopback round trip
//! costs about eight times a polling one, because waking a sleeping thread is
//! the dominant cost (see BRIEF.md).

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::error::WireError;
use crate::frame::{FrameHeader, HEADER_BYTES};
use crate::limits::FRAME_PAYLOAD_BYTES_MAX;

/// A stream that can also be read without blocking.
pub trait SpinRead: Read {
    /// Reads what is available now: `Ok(None)` if nothing is.
    fn read_nonblocking(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
}

fn recv_dontwait(fd: i32, buf: &mut [u8]) -> io::Result<Option<usize>> {
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
}

impl SpinRead for std::os::unix::net::UnixStream {
    fn read_nonblocking(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        recv_dontwait(self.as_raw_fd(), buf)
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
#[derive(Debug)]
pub struct FrameReader<R> {
    stream: R,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    consumed_on_next: usize,
    spin: Duration,
    payload_limit: usize,
}

impl<R: SpinRead> FrameReader<R> {
    /// A reader over `stream` that spins for `spin` before each blocking read.
    pub fn new(stream: R, spin: Duration) -> Self {
        FrameReader {
            stream,
            buffer: vec![0; BUFFER_BYTES_INITIAL],
            start: 0,
            end: 0,
            consumed_on_next: 0,
            spin,
            payload_limit: FRAME_PAYLOAD_BYTES_MAX,
        }
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

    /// Reads the next frame. Framing errors (bad magic, version, length,
    /// checksum, a stream closed mid-frame) leave the stream unusable: the
    /// caller reports them and closes the connection.
    pub fn read_frame(&mut self) -> Result<Frame<'_>, WireError> {
        self.start += self.consumed_on_next;
        self.consumed_on_next = 0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        self.fill_to(HEADER_BYTES)?;
        let header_bytes: [u8; HEADER_BYTES] = self.buffer[self.start..self.start + HEADER_BYTES]
            .try_into()
            .unwrap();
        let header = FrameHeader::parse(&header_bytes)?;
        if header.payload_len as usize > self.payload_limit {
            return Err(WireError::FrameTooLarge {
                length: header.payload_len as usize,
                limit: self.payload_limit,
            });
        }
        let total = HEADER_BYTES + header.payload_len as usize;
        debug_assert!(total <= HEADER_BYTES + FRAME_PAYLOAD_BYTES_MAX);
        self.fill_to(total)?;
        let payload = &self.buffer[self.start + HEADER_BYTES..self.start + total];
        header.verify(&header_bytes, payload)?;
        self.consumed_on_next = total;
        Ok(Frame { header, payload })
    }

    /// Makes sure `needed` bytes from `start` are buffered, reading as needed.
    /// `needed` is bounded by the frame limit, checked from the header first.
    fn fill_to(&mut self, needed: usize) -> Result<(), WireError> {
        while self.end - self.start < needed {
            if self.buffer.len() - self.start < needed {
                // Move the partial frame to the front, and grow if the frame
                // is larger than the buffer.
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buffer.len() < needed {
                    self.buffer
                        .resize(needed.next_power_of_two().max(needed), 0);
                }
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

    fn read_some(&mut self) -> Result<usize, WireError> {
        let end = self.end;
        if !self.spin.is_zero() {
            let began = Instant::now();
            loop {
                if let Some(count) = self.stream.read_nonblocking(&mut self.buffer[end..])? {
                    return Ok(count);
                }
                if began.elapsed() >= self.spin {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        loop {
            match self.stream.read(&mut self.buffer[end..]) {
                Ok(count) => return Ok(count),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
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
