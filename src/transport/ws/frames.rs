//! Server-to-client WebSocket text frames (RFC 6455 §5.2: unmasked, one frame per message),
//! written straight from shared [`Frame`]s with vectored writes.
//!
//! A batch becomes one list of slices: each frame's header and head, and its payload, which is
//! copied into the batch's buffer when small and referenced in place when large. So a large
//! payload shared by thousands of connections is never copied per connection: the kernel reads
//! it from the one shared allocation. The batch's buffer lives only for the write.

use std::io::{self, IoSlice};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::super::SHARE_FROM_BYTES;
use crate::protocol::Frame;

/// FIN + text opcode.
const FIN_TEXT: u8 = 0x81;

/// Bytes on the wire of `frame` as an unmasked text frame: header and text.
pub(super) fn wire_len(frame: &Frame) -> usize {
    text_wire_len(frame.len())
}

/// Bytes on the wire of an unmasked text frame of `len` bytes of text.
pub(super) fn text_wire_len(len: usize) -> usize {
    header_len(len) + len
}

fn header_len(payload: usize) -> usize {
    match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

/// Appends the header of an unmasked text frame of `len` bytes.
fn put_header(out: &mut Vec<u8>, len: usize) {
    out.push(FIN_TEXT);
    match u16::try_from(len) {
        Ok(short) if short <= 125 => out.push(short as u8),
        Ok(medium) => {
            out.push(126);
            out.extend_from_slice(&medium.to_be_bytes());
        }
        Err(_) => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// One part of a batch on the wire.
enum Part {
    /// A range of the batch's buffer.
    Copied(std::ops::Range<usize>),
    /// A shared payload, written in place.
    Shared(Bytes),
}

/// Writes `frames` as text frames to `io`, in order, and flushes. Not cancel-safe: a write
/// dropped before it completes may leave a frame cut short on the wire, after which nothing else
/// may be written to the connection.
pub(super) async fn write_text_frames<'a, W>(
    io: &mut W,
    frames: impl Iterator<Item = &'a Frame>,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut buffer = Vec::new();
    let mut parts = Vec::new();
    let mut copied_from = 0;
    for frame in frames {
        put_header(&mut buffer, frame.len());
        buffer.extend_from_slice(frame.head());
        let payload = frame.payload().as_bytes();
        if payload.len() < SHARE_FROM_BYTES {
            buffer.extend_from_slice(payload);
        } else {
            parts.push(Part::Copied(copied_from..buffer.len()));
            copied_from = buffer.len();
            parts.push(Part::Shared(payload.clone()));
        }
    }
    parts.push(Part::Copied(copied_from..buffer.len()));
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .map(|part| match part {
            Part::Copied(range) => IoSlice::new(&buffer[range.clone()]),
            Part::Shared(bytes) => IoSlice::new(bytes),
        })
        .filter(|slice| !slice.is_empty())
        .collect();
    let mut remaining = &mut slices[..];
    while !remaining.is_empty() {
        let written = io.write_vectored(remaining).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut remaining, written);
    }
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Payload;

    /// Reads the frames back with tungstenite, as a client would.
    fn read_back(wire: Vec<u8>) -> Vec<String> {
        use tungstenite::protocol::{Role, WebSocket};
        let mut socket = WebSocket::from_raw_socket(io::Cursor::new(wire), Role::Client, None);
        let mut texts = Vec::new();
        while let Ok(message) = socket.read() {
            texts.push(message.into_text().unwrap().to_string());
        }
        texts
    }

    #[tokio::test]
    async fn frames_of_every_size_class_read_back_exactly() {
        let big = Payload::new(format!("\"{}\"}}", "x".repeat(70_000)));
        let frames = [
            Frame::whole("{}".to_owned()),
            Frame::whole(format!("\"{}\"", "m".repeat(300))),
            Frame::split("{\"data\":".to_owned(), big.clone()),
            Frame::split("{\"user\":\"b\",\"data\":".to_owned(), big),
            Frame::whole("{\"last\":true}".to_owned()),
        ];
        let mut wire = Vec::new();
        write_text_frames(&mut wire, frames.iter()).await.unwrap();
        let expected: usize = frames.iter().map(wire_len).sum();
        assert_eq!(wire.len(), expected);
        let texts = read_back(wire);
        let originals: Vec<String> = frames.iter().map(Frame::to_string).collect();
        assert_eq!(texts, originals);
    }
}
