//! Server-Sent Events receivers (`--transport sse`, `--target ours` only): one plain HTTP/1.1
//! `GET {--sse-path}?user_id=<id>` per connection over a raw TCP stream, the response body
//! (chunked, with a length, or up to the end of the stream) decoded here, and its event blocks
//! parsed. Each block's `data` is the JSON text a WebSocket client gets as a text frame, so it goes
//! through the same [`FrameChecker`] as [`crate::ws::receive`].
//!
//! The server opens every stream with a block holding a `retry:` hint (and an `id:`). When it
//! turns a client away for now (server or user full, over the connect rate, shutting down) it
//! answers `200` too, with a `retry:` hint and a comment saying why, then ends the stream; so a
//! connection counts as open only once its opening block arrived without a comment. A stream the
//! server ends on purpose (slow consumer, replaced, token expired) ends with an `event: close`
//! block whose data carries the `reason`.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::http::REQUEST_TIMEOUT;
use crate::recv::{FrameChecker, RecvContext, RecvOutcome};
use crate::target::{Target, string_after};

/// The server's default `SSE_STREAM_PATH`.
pub const DEFAULT_STREAM_PATH: &str = "/sse/stream";
/// The event type of the block that ends a stream the server chose to end.
const CLOSE_EVENT: &str = "close";
/// Longest response head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_CHUNK_LINE_BYTES: usize = 1024;

/// Bytes read from the socket at a time: small when many mostly-idle connections are held (like
/// [`crate::ws::client_config`]).
pub fn read_buffer_size(many_connections: bool) -> usize {
    if many_connections { 4096 } else { 64 * 1024 }
}

/// Checks a `--sse-path` value: an absolute path without query, fragment or whitespace.
pub fn parse_stream_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    if let Some(bad) = path
        .chars()
        .find(|&c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{path:?} must not contain {bad:?}"));
    }
    Ok(path.to_owned())
}

/// `path?user_id=<user_id, percent-encoded>`.
pub fn stream_target(path: &str, user_id: &str) -> String {
    let mut target = format!("{path}?user_id=");
    for byte in user_id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            target.push(char::from(byte));
        } else {
            target.push_str(&format!("%{byte:02X}"));
        }
    }
    target
}

/// An open event stream: the socket, bytes read but not yet decoded, and the body and event
/// parsers' state.
#[derive(Debug)]
pub struct SseStream {
    tcp: TcpStream,
    raw: BytesMut,
    body: BodyDecoder,
    parser: SseParser,
    read_size: usize,
    /// A block with data read while opening (not expected from this server), handed out first.
    first: Option<Block>,
}

/// Opens an event stream for `user_id` at `path` (TCP_NODELAY): sends the `GET`, checks for `200`
/// and `text/event-stream`, and waits for the opening block, all bounded by a timeout. Fails when
/// the server turned the client away (see the module docs).
pub async fn connect(
    target: &Target,
    path: &str,
    user_id: &str,
    read_size: usize,
) -> Result<SseStream> {
    if target.ws.tls.is_some() {
        bail!("--transport sse speaks cleartext HTTP/1.1 only; use WebSockets over wss://");
    }
    let open = async {
        let mut tcp = TcpStream::connect(target.ws.addr)
            .await
            .context("TCP connect")?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\
             Cache-Control: no-cache\r\n\r\n",
            stream_target(path, user_id),
            target.ws.authority
        );
        tcp.write_all(request.as_bytes())
            .await
            .context("sending the request")?;
        let mut raw = BytesMut::with_capacity(read_size.max(1024));
        let head = read_head(&mut tcp, &mut raw).await?;
        if head.status != 200 {
            bail!(
                "GET {path} answered {}: {}",
                head.status_line,
                String::from_utf8_lossy(&raw[..raw.len().min(300)]).trim()
            );
        }
        if !head.is_event_stream() {
            bail!(
                "GET {path} answered with content type {:?}, not text/event-stream",
                head.content_type.as_deref().unwrap_or("")
            );
        }
        let mut stream = SseStream {
            tcp,
            raw,
            body: BodyDecoder::for_head(&head),
            parser: SseParser::default(),
            read_size,
            first: None,
        };
        stream.decode_buffered()?;
        match stream.next_block().await? {
            None => bail!("the event stream ended before its opening block"),
            Some(block) if !block.comments.is_empty() => {
                bail!(
                    "the server turned the stream away: {}",
                    block.comments.join("; ")
                )
            }
            Some(block) => {
                if block.data.is_some() {
                    stream.first = Some(block);
                }
                Ok(stream)
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, open)
        .await
        .context("SSE connect timed out")?
}

impl SseStream {
    /// The next event block, `None` once the body has ended; fails when the connection does, or
    /// the body is malformed.
    pub async fn next_block(&mut self) -> Result<Option<Block>> {
        if let Some(block) = self.first.take() {
            return Ok(Some(block));
        }
        loop {
            if let Some(block) = self.parser.next_block() {
                return Ok(Some(block));
            }
            if self.body.is_done() {
                return Ok(None);
            }
            self.raw.reserve(self.read_size);
            let read = self
                .tcp
                .read_buf(&mut self.raw)
                .await
                .context("reading the event stream")?;
            if read == 0 {
                self.parser.end();
                if let Some(block) = self.parser.next_block() {
                    return Ok(Some(block));
                }
                if self.body.ends_at_eof() {
                    return Ok(None);
                }
                bail!("the server closed the connection in the middle of the response body");
            }
            self.decode_buffered()?;
        }
    }

    /// Decodes the body bytes read so far into the event parser.
    fn decode_buffered(&mut self) -> Result<()> {
        let parser = &mut self.parser;
        self.body
            .decode(&mut self.raw, |bytes| parser.feed(bytes))?;
        if self.body.is_done() {
            parser.end();
        }
        Ok(())
    }
}

/// Reads blocks until `cancel` fires or the stream ends, checking and timing each event's data
/// like a WebSocket text frame. The server ending the stream (a `close` event, the end of the body,
/// a failure) counts as `closed_early`.
pub async fn receive(
    mut stream: SseStream,
    user_id: String,
    user_index: u64,
    ctx: Arc<RecvContext>,
    cancel: CancellationToken,
) -> RecvOutcome {
    let mut checker = FrameChecker::new(user_id, user_index, ctx);
    // `None`: the run ended; `Some(why)`: the server ended the stream first.
    let ended = loop {
        let block = tokio::select! {
            biased;
            () = cancel.cancelled() => break None,
            block = stream.next_block() => block,
        };
        match block {
            Ok(Some(block)) if block.event.as_deref() == Some(CLOSE_EVENT) => {
                let reason = block
                    .data
                    .as_deref()
                    .and_then(|data| string_after(data, "\"reason\":\""))
                    .unwrap_or("close event");
                break Some(reason.to_owned());
            }
            Ok(Some(block)) => {
                if let Some(data) = &block.data {
                    // An event stream has no way back: an answer a frame asks for is dropped
                    // (this server's frames never ask for one).
                    let _ = checker.text(data);
                }
            }
            Ok(None) => break Some("stream ended".to_owned()),
            Err(error) => break Some(format!("{error:#}")),
        }
    };
    // Dropping the stream closes the connection; the server sees the client go away.
    checker.finish(ended)
}

/// The parts of a response head loadgen needs.
#[derive(Debug, PartialEq, Eq)]
struct ResponseHead {
    status: u16,
    /// The status line after the version, e.g. `200 OK`.
    status_line: String,
    content_type: Option<String>,
    chunked: bool,
    content_length: Option<u64>,
}

impl ResponseHead {
    fn is_event_stream(&self) -> bool {
        self.content_type.as_deref().is_some_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
        })
    }
}

/// Reads up to the blank line ending the response head and parses it; the bytes after it stay in
/// `raw`.
async fn read_head(tcp: &mut TcpStream, raw: &mut BytesMut) -> Result<ResponseHead> {
    loop {
        if let Some(end) = raw.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = parse_head(&raw[..end])?;
            raw.advance(end + 4);
            return Ok(head);
        }
        if raw.len() > MAX_HEAD_BYTES {
            bail!("the response head is over {MAX_HEAD_BYTES} bytes");
        }
        raw.reserve(1024);
        if tcp
            .read_buf(raw)
            .await
            .context("reading the response head")?
            == 0
        {
            bail!("the server closed the connection before answering");
        }
    }
}

/// Parses a response head (without its final blank line).
fn parse_head(head: &[u8]) -> Result<ResponseHead> {
    let head = std::str::from_utf8(head).context("the response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let (version, rest) = status_line.split_once(' ').unwrap_or((status_line, ""));
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {status_line:?}");
    }
    let status = rest
        .get(..3)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut parsed = ResponseHead {
        status,
        status_line: rest.to_owned(),
        content_type: None,
        chunked: false,
        content_length: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line {line:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            parsed.content_type = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            parsed.chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            parsed.content_length = Some(
                value
                    .parse()
                    .with_context(|| format!("bad Content-Length {value:?}"))?,
            );
        }
    }
    Ok(parsed)
}

/// How the response body is delimited, and how far decoding got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyDecoder {
    /// `Transfer-Encoding: chunked`: expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk: this many data bytes left.
    ChunkData(u64),
    /// After a chunk's data: expecting its CRLF.
    ChunkEnd,
    /// After the last (empty) chunk: trailer lines up to a blank line.
    Trailer,
    /// `Content-Length`: this many bytes left.
    Length(u64),
    /// Neither: the body runs to the end of the connection.
    UntilEof,
    /// The body is complete.
    Done,
}

impl BodyDecoder {
    fn for_head(head: &ResponseHead) -> Self {
        match (head.chunked, head.content_length) {
            (true, _) => Self::ChunkSize,
            (false, Some(0)) => Self::Done,
            (false, Some(length)) => Self::Length(length),
            (false, None) => Self::UntilEof,
        }
    }

    fn is_done(self) -> bool {
        self == Self::Done
    }

    /// True when the connection ending now ends the body normally.
    fn ends_at_eof(self) -> bool {
        matches!(self, Self::UntilEof | Self::Done)
    }

    /// Decodes what it can of `raw` (consuming it), handing body bytes to `sink`; bytes of an
    /// incomplete chunk-size line stay in `raw` for the next call.
    fn decode(&mut self, raw: &mut BytesMut, mut sink: impl FnMut(&[u8])) -> Result<()> {
        loop {
            match *self {
                Self::Done => {
                    raw.clear();
                    return Ok(());
                }
                Self::UntilEof => {
                    if !raw.is_empty() {
                        sink(raw);
                        raw.clear();
                    }
                    return Ok(());
                }
                Self::Length(left) | Self::ChunkData(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(raw.len());
                    if take > 0 {
                        sink(&raw[..take]);
                        raw.advance(take);
                    }
                    let left = left - take as u64;
                    *self = match (*self, left) {
                        (Self::Length(_), 0) => Self::Done,
                        (Self::Length(_), left) => Self::Length(left),
                        (_, 0) => Self::ChunkEnd,
                        (_, left) => Self::ChunkData(left),
                    };
                    if left > 0 {
                        return Ok(());
                    }
                }
                Self::ChunkSize => {
                    let Some(line) = take_line(raw)? else {
                        return Ok(());
                    };
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let size = u64::from_str_radix(size, 16)
                        .with_context(|| format!("bad chunk size line {line:?}"))?;
                    *self = if size == 0 {
                        Self::Trailer
                    } else {
                        Self::ChunkData(size)
                    };
                }
                Self::ChunkEnd => {
                    let Some(line) = take_line(raw)? else {
                        return Ok(());
                    };
                    if !line.is_empty() {
                        bail!("chunk data not followed by CRLF (got {line:?})");
                    }
                    *self = Self::ChunkSize;
                }
                Self::Trailer => {
                    let Some(line) = take_line(raw)? else {
                        return Ok(());
                    };
                    if line.is_empty() {
                        *self = Self::Done;
                    }
                }
            }
        }
    }
}

/// Takes one line (up to LF, without its CRLF or LF) off the front of `raw`; `None` until a whole
/// line is there.
fn take_line(raw: &mut BytesMut) -> Result<Option<String>> {
    let Some(end) = raw.iter().position(|&byte| byte == b'\n') else {
        if raw.len() > MAX_CHUNK_LINE_BYTES {
            bail!("a chunk-size or trailer line is over {MAX_CHUNK_LINE_BYTES} bytes");
        }
        return Ok(None);
    };
    let line = raw.split_to(end + 1);
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(Some(String::from_utf8_lossy(line).into_owned()))
}

/// One event-stream block: the fields of the lines up to a blank line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Block {
    /// The last `id:` value (one holding NUL is ignored, as EventSource does).
    pub id: Option<String>,
    /// The last `event:` value.
    pub event: Option<String>,
    /// The `data:` values joined with `\n`; `None` without a `data:` line.
    pub data: Option<String>,
    /// The last valid `retry:` value (milliseconds).
    pub retry: Option<u64>,
    /// Comment lines (`:` and one optional space stripped).
    pub comments: Vec<String>,
}

/// An incremental event-stream parser (the WHATWG rules: lines end with CRLF, LF or CR; a line
/// starting with `:` is a comment; `field: value` with one optional space after the colon; a line
/// without a colon is a field with an empty value; a blank line ends a block). Blocks are handed
/// out whole, with or without data; blank lines outside a block are skipped. A block the stream
/// ends in the middle of is dropped, as EventSource does.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Decoded body bytes; those before `start` are consumed.
    buf: Vec<u8>,
    start: usize,
    /// The body has ended: a CR at the very end is a line end, not possibly half of a CRLF.
    eof: bool,
    /// The fields of the block being read.
    block: Block,
    /// The block being read has at least one line.
    open: bool,
}

impl SseParser {
    /// Appends body bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Marks the end of the body.
    pub fn end(&mut self) {
        self.eof = true;
    }

    /// The next complete block, if the bytes fed so far hold one.
    pub fn next_block(&mut self) -> Option<Block> {
        while let Some((line_end, next)) = self.line_end() {
            let line = &self.buf[self.start..line_end];
            if line.is_empty() {
                self.start = next;
                if std::mem::replace(&mut self.open, false) {
                    return Some(std::mem::take(&mut self.block));
                }
                continue;
            }
            apply_line(&mut self.block, line);
            self.open = true;
            self.start = next;
        }
        None
    }

    /// Where the first unconsumed line ends and the next begins, once it is complete.
    fn line_end(&self) -> Option<(usize, usize)> {
        let rest = &self.buf[self.start..];
        let at = rest
            .iter()
            .position(|&byte| byte == b'\n' || byte == b'\r')?;
        let end = self.start + at;
        if rest[at] == b'\n' {
            return Some((end, end + 1));
        }
        match rest.get(at + 1) {
            Some(b'\n') => Some((end, end + 2)),
            Some(_) => Some((end, end + 1)),
            None if self.eof => Some((end, end + 1)),
            // A CR last: wait to see whether an LF follows.
            None => None,
        }
    }
}

/// Applies one non-blank line to the block being read.
fn apply_line(block: &mut Block, line: &[u8]) {
    let line = String::from_utf8_lossy(line);
    if let Some(comment) = line.strip_prefix(':') {
        let comment = comment.strip_prefix(' ').unwrap_or(comment);
        block.comments.push(comment.to_owned());
        return;
    }
    let (field, value) = match line.split_once(':') {
        Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
        None => (&*line, ""),
    };
    match field {
        "data" => match &mut block.data {
            Some(data) => {
                data.push('\n');
                data.push_str(value);
            }
            None => block.data = Some(value.to_owned()),
        },
        "event" => block.event = Some(value.to_owned()),
        "id" if !value.contains('\0') => block.id = Some(value.to_owned()),
        "retry" if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) => {
            block.retry = value.parse().ok();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and collects every block.
    fn parse_in_steps(input: &[u8], step: usize) -> Vec<Block> {
        let mut parser = SseParser::default();
        let mut blocks = Vec::new();
        for piece in input.chunks(step.max(1)) {
            parser.feed(piece);
            blocks.extend(std::iter::from_fn(|| parser.next_block()));
        }
        parser.end();
        blocks.extend(std::iter::from_fn(|| parser.next_block()));
        blocks
    }

    fn data(text: &str) -> Block {
        Block {
            data: Some(text.to_owned()),
            ..Block::default()
        }
    }

    #[test]
    fn parses_the_servers_blocks() {
        let input = b"retry: 3000\nid: 1:0\n\n\
            id: 1:1\nevent: message\ndata: {\"user_id\":\"u\",\"data\":{\"seq\":1}}\n\n\
            : keepalive\n\n\
            event: close\ndata: {\"event_type\":\"close\",\"reason\":\"slow_consumer\"}\n\n";
        let blocks = parse_in_steps(input, input.len());
        assert_eq!(
            blocks,
            vec![
                Block {
                    id: Some("1:0".to_owned()),
                    retry: Some(3000),
                    ..Block::default()
                },
                Block {
                    id: Some("1:1".to_owned()),
                    event: Some("message".to_owned()),
                    ..data(r#"{"user_id":"u","data":{"seq":1}}"#)
                },
                Block {
                    comments: vec!["keepalive".to_owned()],
                    ..Block::default()
                },
                Block {
                    event: Some("close".to_owned()),
                    ..data(r#"{"event_type":"close","reason":"slow_consumer"}"#)
                },
            ]
        );
    }

    #[test]
    fn joins_data_lines_with_newlines() {
        let blocks = parse_in_steps(b"data: {\"a\":\ndata: 1,\ndata:\"b\":2}\ndata\n\n", 64);
        assert_eq!(blocks, vec![data("{\"a\":\n1,\n\"b\":2}\n")]);
        // Only one space after the colon is dropped; an empty `data:` still makes an event.
        let blocks = parse_in_steps(b"data:  two spaces\n\ndata:\n\n", 64);
        assert_eq!(blocks, vec![data(" two spaces"), data("")]);
    }

    #[test]
    fn comments_and_unknown_fields() {
        let blocks = parse_in_steps(
            b":no space\n: one space\nfoo: bar\nretry: 12x\nid: a\0b\ndata: x\n\n",
            64,
        );
        assert_eq!(
            blocks,
            vec![Block {
                comments: vec!["no space".to_owned(), "one space".to_owned()],
                ..data("x")
            }]
        );
    }

    #[test]
    fn crlf_cr_and_lf_line_endings() {
        let input = b"data: a\r\ndata: b\r\n\r\ndata: c\rdata: d\r\rdata: e\n\n";
        let expected = vec![data("a\nb"), data("c\nd"), data("e")];
        for step in 1..=input.len() {
            assert_eq!(parse_in_steps(input, step), expected, "step {step}");
        }
        // A CR at the very end of the stream ends the line (and the block).
        assert_eq!(parse_in_steps(b"data: z\r\r", 3), vec![data("z")]);
    }

    #[test]
    fn blocks_split_across_reads() {
        let input =
            b"id: 7\nevent: message\ndata: {\"seq\":1,\ndata: \"pad\":\"xxxx\"}\n\n: keepalive\n\n";
        let whole = parse_in_steps(input, input.len());
        assert_eq!(whole.len(), 2);
        for step in 1..input.len() {
            assert_eq!(parse_in_steps(input, step), whole, "step {step}");
        }
        // Nothing comes out before the blank line, and an unfinished block at the end is dropped.
        let mut parser = SseParser::default();
        parser.feed(b"data: half");
        assert_eq!(parser.next_block(), None);
        parser.feed(b"\n");
        assert_eq!(parser.next_block(), None);
        parser.feed(b"\ndata: never ended\n");
        assert_eq!(parser.next_block(), Some(data("half")));
        parser.end();
        assert_eq!(parser.next_block(), None);
    }

    #[test]
    fn decodes_chunked_bodies_across_reads() {
        let body = b"b\r\nretry: 3000\r\n1B;ext=1\r\ndata: {\"x\":1}\ndata: {\"y\":2}\r\n0\r\nX-T: 1\r\n\r\nignored";
        for step in 1..=body.len() {
            let mut decoder = BodyDecoder::ChunkSize;
            let mut raw = BytesMut::new();
            let mut out = Vec::new();
            for piece in body.chunks(step) {
                raw.extend_from_slice(piece);
                decoder
                    .decode(&mut raw, |bytes| out.extend_from_slice(bytes))
                    .expect("valid chunked body");
            }
            assert_eq!(
                out, b"retry: 3000data: {\"x\":1}\ndata: {\"y\":2}",
                "step {step}"
            );
            assert!(decoder.is_done(), "step {step}");
        }
        let mut decoder = BodyDecoder::ChunkSize;
        assert!(
            decoder
                .decode(&mut BytesMut::from(&b"zz\r\n"[..]), |_| {})
                .is_err()
        );
        let mut decoder = BodyDecoder::ChunkSize;
        assert!(
            decoder
                .decode(&mut BytesMut::from(&b"1\r\nab\r\n"[..]), |_| {})
                .is_err(),
            "a chunk longer than its size"
        );
    }

    #[test]
    fn decodes_length_and_eof_bodies() {
        let mut decoder = BodyDecoder::Length(5);
        let mut out = Vec::new();
        let mut raw = BytesMut::from(&b"abc"[..]);
        decoder
            .decode(&mut raw, |bytes| out.extend_from_slice(bytes))
            .expect("length body");
        assert_eq!(decoder, BodyDecoder::Length(2));
        raw.extend_from_slice(b"deXYZ");
        decoder
            .decode(&mut raw, |bytes| out.extend_from_slice(bytes))
            .expect("length body");
        assert_eq!(out, b"abcde");
        assert!(decoder.is_done() && decoder.ends_at_eof());
        assert!(!BodyDecoder::ChunkData(3).ends_at_eof());
        assert!(BodyDecoder::UntilEof.ends_at_eof());
    }

    #[test]
    fn parses_response_heads() {
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
              Transfer-Encoding: chunked\r\ncache-control: no-cache",
        )
        .expect("valid head");
        assert_eq!(head.status, 200);
        assert_eq!(head.status_line, "200 OK");
        assert!(head.chunked && head.is_event_stream());
        assert_eq!(BodyDecoder::for_head(&head), BodyDecoder::ChunkSize);
        let head = parse_head(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 17",
        )
        .expect("valid head");
        assert_eq!((head.status, head.content_length), (400, Some(17)));
        assert!(!head.is_event_stream());
        assert_eq!(BodyDecoder::for_head(&head), BodyDecoder::Length(17));
        assert!(parse_head(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon").is_err());
    }

    #[test]
    fn builds_stream_targets() {
        assert_eq!(
            stream_target("/sse/stream", "bench-u7"),
            "/sse/stream?user_id=bench-u7"
        );
        assert_eq!(
            stream_target("/s", "a b&c=d/é"),
            "/s?user_id=a%20b%26c%3Dd%2F%C3%A9"
        );
        assert!(parse_stream_path("/sse/stream").is_ok());
        assert!(parse_stream_path("sse").is_err());
        assert!(parse_stream_path("/sse?x=1").is_err());
        assert!(parse_stream_path("/s s").is_err());
    }
}
