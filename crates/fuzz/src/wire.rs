//! The `wire` target: the frame header, every message decoder, and the
//! `FrameReader` over an arbitrary byte stream.
//!
//! Input layout: byte 0 picks the opcode the payload decoders are tried with,
//! byte 1 picks the reader's read sizes and payload limit, and the rest is the
//! payload for the decoders and, at the same time, the byte stream the reader
//! is fed. Oracles: nothing panics; a decoded message re-encodes into a frame
//! whose header parses and verifies and whose payload decodes to the same
//! message; where the encoding is canonical the re-encoded payload is the
//! input's payload byte for byte; the reader hands out exactly the frames the
//! stream holds, back to back, and ends with a framing error or `Closed`.

use std::io::{self, Read};
use std::time::Duration;

use pagoda_wire::frame::{FrameHeader, HEADER_BYTES};
use pagoda_wire::io::{FrameReader, NoSpin};
use pagoda_wire::limits::HELLO_PAYLOAD_BYTES_MAX;
use pagoda_wire::{ErrorCode, Opcode, Request, Response, WireError};

/// Runs one input through the target.
pub fn run(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let opcode = data[0];
    let control = data[1];
    let rest = &data[2..];

    header(rest);
    request(opcode, rest);
    response(opcode, rest);
    reader(control, rest);
}

/// The header parser on the first 32 bytes: a parsed header's fields are the
/// bytes where the layout puts them.
fn header(bytes: &[u8]) {
    let Some(head) = bytes.get(..HEADER_BYTES) else {
        return;
    };
    let head: [u8; HEADER_BYTES] = head.try_into().unwrap();
    if let Ok(header) = FrameHeader::parse(&head) {
        assert_eq!(header.opcode, head[5]);
        assert_eq!(
            header.payload_len,
            u32::from_le_bytes(head[8..12].try_into().unwrap())
        );
        assert_eq!(
            header.request_id,
            u64::from_le_bytes(head[12..20].try_into().unwrap())
        );
        let _ = header.verify(&head, &bytes[HEADER_BYTES..]);
    }
}

/// Splits a whole frame into its verified header and payload.
fn split(frame: &[u8]) -> (FrameHeader, &[u8]) {
    let head: [u8; HEADER_BYTES] = frame[..HEADER_BYTES].try_into().unwrap();
    let header = FrameHeader::parse(&head).expect("an encoded frame's header parses");
    let payload = &frame[HEADER_BYTES..];
    assert_eq!(header.payload_len as usize, payload.len());
    header
        .verify(&head, payload)
        .expect("an encoded frame's checksum verifies");
    (header, payload)
}

fn request(opcode: u8, payload: &[u8]) {
    let Ok(decoded) = Request::decode(opcode, payload) else {
        return;
    };
    assert_eq!(decoded.opcode() as u8, opcode);
    let mut frame = Vec::new();
    decoded.encode(&mut frame, 7, 9);
    let (header, again) = split(&frame);
    assert_eq!(
        (header.opcode, header.request_id, header.epoch),
        (opcode, 7, 9)
    );
    let redecoded = Request::decode(header.opcode, again).expect("a re-encoded request decodes");
    assert_eq!(redecoded, decoded);
    if opcode == Opcode::Ping as u8 {
        // A ping's padding is not kept: only its reply size is canonical.
        assert!(payload.starts_with(again));
    } else {
        assert_eq!(again, payload, "request encoding is not canonical");
    }
}

fn response(opcode: u8, payload: &[u8]) {
    let Ok(decoded) = Response::decode(opcode, payload) else {
        return;
    };
    assert_eq!(decoded.opcode() as u8, opcode);
    let mut frame = Vec::new();
    decoded.encode(&mut frame, 7, 9);
    let (header, again) = split(&frame);
    assert_eq!(header.opcode, opcode);
    let redecoded = Response::decode(header.opcode, again).expect("a re-encoded response decodes");
    assert_eq!(redecoded, decoded);
    // An unknown error code is read as `Unknown`, which is written as 0xffff.
    let unknown_code = matches!(
        decoded,
        Response::Error {
            code: ErrorCode::Unknown,
            ..
        }
    );
    if !unknown_code {
        assert_eq!(again, payload, "response encoding is not canonical");
    }
}

/// A stream that delivers its bytes in reads of the given sizes, in turn.
struct Chunked<'a> {
    bytes: &'a [u8],
    sizes: [usize; 4],
    turn: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes[self.turn % self.sizes.len()];
        self.turn += 1;
        let count = size.min(buf.len()).min(self.bytes.len());
        buf[..count].copy_from_slice(&self.bytes[..count]);
        self.bytes = &self.bytes[count..];
        Ok(count)
    }
}

fn reader(control: u8, stream: &[u8]) {
    // Small read sizes exercise partial headers and payloads; the payload
    // limit stays small so that a header announcing a huge frame costs the
    // fuzzer little (the limit itself is the protocol's, checked above).
    let sizes = match control & 3 {
        0 => [usize::MAX; 4],
        1 => [1, 7, 32, 100],
        2 => [33, 5, 4096, 2],
        _ => [3, 3, 3, 3],
    };
    let limit = match (control >> 2) & 3 {
        0 => HELLO_PAYLOAD_BYTES_MAX,
        1 => 64 * 1024,
        2 => 300 * 1024,
        _ => 0,
    };
    let mut reader = FrameReader::new(
        NoSpin(Chunked {
            bytes: stream,
            sizes,
            turn: 0,
        }),
        Duration::ZERO,
    );
    reader.set_payload_limit(limit);
    let mut offset = 0usize;
    loop {
        match reader.read_frame() {
            Ok(frame) => {
                let total = HEADER_BYTES + frame.payload.len();
                assert!(frame.payload.len() <= limit);
                assert_eq!(frame.header.payload_len as usize, frame.payload.len());
                assert_eq!(
                    &stream[offset + HEADER_BYTES..offset + total],
                    frame.payload,
                    "the reader's frame is not the stream's next frame"
                );
                request(frame.header.opcode, frame.payload);
                response(frame.header.opcode, frame.payload);
                offset += total;
            }
            Err(WireError::Closed) => {
                assert_eq!(offset, stream.len(), "Closed before the stream ended");
                return;
            }
            Err(WireError::Truncated { received, .. }) => {
                assert_eq!(offset + received, stream.len());
                return;
            }
            // Reading from memory cannot fail, and payloads are the message
            // layer's business: the reader's own errors are framing errors.
            Err(
                error @ (WireError::Io(_)
                | WireError::Malformed { .. }
                | WireError::UnknownOpcode(_)),
            ) => {
                panic!("unexpected reader error {error:?} at offset {offset}")
            }
            // Bad magic, version, flags, length or checksum: the stream is
            // unusable from here.
            Err(_) => return,
        }
    }
}
