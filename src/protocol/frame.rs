//! The JSON text a client receives for one event or reply, held so that a payload is stored once
//! however many recipients, queues and history entries share it.
//!
//! A [`Frame`] is a small *head* that may differ per recipient (the envelope up to `"data":`,
//! which names the user) followed by a shared [`Payload`] (the `data` and the closing brace).
//! Frames built for one recipient keep the whole JSON in the payload and an empty head. The text
//! is the concatenation; writers send the two parts without joining them (vectored writes), so no
//! per-recipient copy of a payload is made.
//!
//! A payload also counts its holders per [`Ledger`], so that the byte totals of the history and
//! of the send queues count a shared payload once, while any entry holds it.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};

/// One event's or reply's JSON text: a per-recipient head and a shared payload. Cloning is two
/// reference-count increments.
#[derive(Clone)]
pub struct Frame {
    head: Bytes,
    payload: Arc<Payload>,
}

/// The shared part of frames: JSON text (valid UTF-8, ending a frame), its `data:`-line form for
/// Server-Sent Events when one is needed, and its holders per ledger.
pub struct Payload {
    json: Bytes,
    /// `json` with every run of line breaks replaced by `\ndata: `; made on first use.
    sse: OnceLock<Bytes>,
    holders: [AtomicUsize; 4],
}

/// A byte total that counts each shared payload once, however many of its entries hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ledger {
    /// The events stored in history.
    History = 0,
    /// The items in connections' send queues.
    Queues = 1,
    /// The events waiting for a client's acknowledgement.
    Acks = 2,
    /// The webhooks queued for the backend.
    Webhooks = 3,
}

impl Payload {
    /// A payload of this JSON text.
    pub fn new(json: String) -> Arc<Self> {
        Arc::new(Self {
            json: Bytes::from(json),
            sse: OnceLock::new(),
            holders: Default::default(),
        })
    }

    /// A payload of received bytes (from the cluster's broker), checked to be UTF-8.
    pub fn from_utf8(json: Bytes) -> Result<Arc<Self>, std::str::Utf8Error> {
        std::str::from_utf8(&json)?;
        Ok(Arc::new(Self {
            json,
            sse: OnceLock::new(),
            holders: Default::default(),
        }))
    }

    /// The JSON text.
    pub fn as_bytes(&self) -> &Bytes {
        &self.json
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.json.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.json.is_empty()
    }

    /// The text as Server-Sent Events `data:` lines need it: every run of `\r`/`\n` (JSON
    /// whitespace an upstream's raw `data` may hold) becomes one line break followed by `data: `.
    /// The payload itself when it has none; otherwise made once and shared.
    pub fn sse_text(&self) -> &Bytes {
        if !self.json.iter().any(|&b| b == b'\r' || b == b'\n') {
            return &self.json;
        }
        self.sse.get_or_init(|| {
            let mut out = BytesMut::with_capacity(self.json.len() + 16);
            let mut lines = self
                .json
                .split(|&b| b == b'\r' || b == b'\n')
                .filter(|line| !line.is_empty());
            if let Some(first) = lines.next() {
                out.put_slice(first);
            }
            for line in lines {
                out.put_slice(b"\ndata: ");
                out.put_slice(line);
            }
            out.freeze()
        })
    }

    /// Records one more holder in `ledger`; returns the bytes the ledger's total grows by: the
    /// payload's size for its first holder there, 0 for the others.
    pub fn hold(&self, ledger: Ledger) -> usize {
        match self.holders[ledger as usize].fetch_add(1, Ordering::AcqRel) {
            0 => self.len(),
            _ => 0,
        }
    }

    /// Records that a holder in `ledger` let go; returns the bytes the ledger's total shrinks by:
    /// the payload's size when that was its last holder there, 0 otherwise.
    pub fn release(&self, ledger: Ledger) -> usize {
        match self.holders[ledger as usize].fetch_sub(1, Ordering::AcqRel) {
            1 => self.len(),
            _ => 0,
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("len", &self.json.len())
            .finish_non_exhaustive()
    }
}

impl Frame {
    /// A frame for one recipient: all of `json` is the payload.
    pub fn whole(json: String) -> Self {
        Self {
            head: Bytes::new(),
            payload: Payload::new(json),
        }
    }

    /// A frame whose text is `head` followed by the shared `payload`. Both must be UTF-8 and
    /// `head` must not hold a line break (it is JSON up to a value, where the encoder puts none).
    pub fn split(head: impl Into<Bytes>, payload: Arc<Payload>) -> Self {
        Self {
            head: head.into(),
            payload,
        }
    }

    /// The per-recipient part (empty for a frame built for one recipient).
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// The shared part.
    pub fn payload(&self) -> &Arc<Payload> {
        &self.payload
    }

    /// The text's length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.payload.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the text to `out` (for small frames, and for tests).
    pub fn write_to(&self, out: &mut impl BufMut) {
        out.put_slice(&self.head);
        out.put_slice(&self.payload.json);
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Both parts are UTF-8 by construction.
        for part in [&self.head, &self.payload.json] {
            f.write_str(std::str::from_utf8(part).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("head", &self.head.len())
            .field("payload", &self.payload.len())
            .finish()
    }
}

impl From<String> for Frame {
    fn from(json: String) -> Self {
        Self::whole(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_head_then_payload() {
        let payload = Payload::new("{\"a\":1}}".to_owned());
        let frame = Frame::split("{\"user_id\":\"u\",\"data\":".to_owned(), payload);
        assert_eq!(frame.to_string(), "{\"user_id\":\"u\",\"data\":{\"a\":1}}");
        assert_eq!(frame.len(), frame.to_string().len());
        let mut joined = Vec::new();
        frame.write_to(&mut joined);
        assert_eq!(joined, frame.to_string().as_bytes());
    }

    #[test]
    fn sse_text_turns_line_break_runs_into_data_lines() {
        let plain = Payload::new("{\"a\":1}".to_owned());
        assert_eq!(&plain.sse_text()[..], b"{\"a\":1}");
        let broken = Payload::new("{\"a\":\r\n1,\r\"b\":\n2}".to_owned());
        assert_eq!(
            &broken.sse_text()[..],
            b"{\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}"
        );
    }

    #[test]
    fn a_ledger_counts_a_payload_once_while_held() {
        let payload = Payload::new("x".repeat(10));
        assert_eq!(payload.hold(Ledger::History), 10);
        assert_eq!(payload.hold(Ledger::History), 0);
        assert_eq!(payload.hold(Ledger::Queues), 10, "ledgers are separate");
        assert_eq!(payload.release(Ledger::History), 0);
        assert_eq!(payload.release(Ledger::History), 10);
        assert_eq!(payload.release(Ledger::Queues), 10);
    }
}
