//! A Server-Sent Events parser for `listen --sse`, following the WHATWG rules that matter to a
//! resuming client: `data:` lines joined with line feeds, `event:` naming the type, and `id:`
//! setting the last event id at the end of its block even when the block has no data (this
//! server opens a fresh stream with such a block, the position to resume from). The
//! `eventsource-stream` crate reports ids only with events, so it would lose that one.
//!
//! Lines end with LF or CRLF (this server writes LF; a lone CR is not treated as a line end).

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// `event:` (`message` when absent).
    pub event_type: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental parser state: feed it chunks as they arrive.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// Bytes of an incomplete line.
    partial: Vec<u8>,
    data: String,
    has_data: bool,
    event_type: String,
    id_buffer: Option<String>,
    last_event_id: Option<String>,
    last_comment: Option<String>,
    started: bool,
}

impl SseParser {
    /// Parses `chunk`, appending the events whose block it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let mut text: &[u8] = &line;
            if !self.started {
                self.started = true;
                text = text.strip_prefix("\u{feff}".as_bytes()).unwrap_or(text);
            }
            self.line(&String::from_utf8_lossy(text), out);
        }
        self.partial.extend_from_slice(rest);
    }

    /// The id of the last completed block that carried one: where to resume.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// The last comment line other than keepalives (a refusal's reason, for instance).
    pub fn last_comment(&self) -> Option<&str> {
        self.last_comment.as_deref()
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            let comment = comment.trim();
            if !comment.is_empty() && comment != "keepalive" {
                self.last_comment = Some(comment.to_owned());
            }
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => value.clone_into(&mut self.event_type),
            "id" if !value.contains('\0') => {
                self.id_buffer = (!value.is_empty()).then(|| value.to_owned());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        self.last_event_id.clone_from(&self.id_buffer);
        let event_type = std::mem::take(&mut self.event_type);
        if std::mem::take(&mut self.has_data) {
            out.push(SseEvent {
                event_type: if event_type.is_empty() {
                    "message".to_owned()
                } else {
                    event_type
                },
                data: std::mem::take(&mut self.data),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&str]) -> (SseParser, Vec<SseEvent>) {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(chunk.as_bytes(), &mut events);
        }
        (parser, events)
    }

    #[test]
    fn opening_block_sets_the_resume_point_without_an_event() {
        let (parser, events) = parse(&["retry: 3000\n\nid: E:0\n", "\n: keepalive\n\n"]);
        assert!(events.is_empty());
        assert_eq!(parser.last_event_id(), Some("E:0"));
        assert_eq!(parser.last_comment(), None);
    }

    #[test]
    fn events_split_across_chunks_are_joined() {
        let (parser, events) = parse(&[
            "id: 1\nevent: chat\ndata: {\"a\":\n",
            "data: 1}\r\n\r\nda",
            "ta: x\n\n: too many\n",
        ]);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event_type: "chat".into(),
                    data: "{\"a\":\n1}".into()
                },
                SseEvent {
                    event_type: "message".into(),
                    data: "x".into()
                },
            ]
        );
        // The id carries over to the next block, as in a browser.
        assert_eq!(parser.last_event_id(), Some("1"));
        assert_eq!(parser.last_comment(), Some("too many"));
    }

    #[test]
    fn an_event_without_id_keeps_the_previous_one_and_an_empty_id_clears_it() {
        let (parser, _) = parse(&["id: 7\ndata: a\n\nevent: close\ndata: {}\n\n"]);
        assert_eq!(parser.last_event_id(), Some("7"));
        let (parser, _) = parse(&["id: 7\ndata: a\n\nid\ndata: b\n\n"]);
        assert_eq!(parser.last_event_id(), None);
    }
}
