//! A Server-Sent Events parser (WHATWG HTML, "event stream interpretation"),
//! fed bytes as they arrive. Pure: no I/O; bounded: an event larger than
//! the limit is an error, not an allocation.

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (`message` when absent).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen on the stream (it persists across events).
    pub id: Option<String>,
}

/// Why the stream was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// A line or event is over the limit.
    #[error("server-sent event over the {0}-byte limit")]
    TooLarge(usize),
    /// The stream is not UTF-8.
    #[error("server-sent event is not UTF-8")]
    NotUtf8,
}

/// An incremental parser.
#[derive(Debug)]
pub struct SseParser {
    buf: Vec<u8>,
    scanned: usize,
    max: usize,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    skip_lf: bool,
}

impl SseParser {
    /// A parser that refuses events over `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            max: max_event_bytes,
            event: String::new(),
            data: String::new(),
            has_data: false,
            last_id: None,
            skip_lf: false,
        }
    }

    /// The last event id seen (for `Last-Event-ID` on reconnect).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        let mut chunk = chunk;
        if self.skip_lf && !chunk.is_empty() {
            // A `\r` ended the previous chunk: a `\n` right after it belongs to it.
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
            self.skip_lf = false;
        }
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        loop {
            let from = self.scanned.max(start);
            let Some(pos) = self.buf[from..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
            else {
                self.scanned = self.buf.len();
                break;
            };
            let end = from + pos;
            let line = self.buf[start..end].to_vec();
            let mut next = end + 1;
            if self.buf[end] == b'\r' {
                match self.buf.get(next) {
                    Some(b'\n') => next += 1,
                    None => self.skip_lf = true,
                    _ => {}
                }
            }
            start = next;
            self.scanned = next;
            self.line(&line, &mut out)?;
        }
        self.buf.drain(..start);
        self.scanned -= start.min(self.scanned);
        if self.buf.len() + self.data.len() > self.max {
            return Err(SseError::TooLarge(self.max));
        }
        Ok(out)
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        // The same bound `feed` applies to a partial line, checked before
        // anything else, so the outcome never depends on how the stream
        // was split into chunks (found by fuzzing: a long line was refused
        // when it arrived in pieces but accepted, or refused as not UTF-8,
        // when it arrived whole).
        if self.data.len() + line.len() > self.max {
            return Err(SseError::TooLarge(self.max));
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: if self.event.is_empty() {
                        "message".into()
                    } else {
                        std::mem::take(&mut self.event)
                    },
                    data: std::mem::take(&mut self.data),
                    id: self.last_id.clone(),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.data.len() + value.len() + 1 > self.max {
                    return Err(SseError::TooLarge(self.max));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], step: usize) -> Vec<SseEvent> {
        let mut p = SseParser::new(1 << 20);
        input
            .chunks(step.max(1))
            .flat_map(|c| p.feed(c).unwrap())
            .collect()
    }

    #[test]
    fn parses_events_whatever_the_chunking() {
        let input = b": hi\r\nevent: delta\r\nid: 7\r\ndata: a\r\ndata: b\r\n\r\nevent: checkpoint\nid: 8\ndata: c\n\ndata\n\n";
        let want = vec![
            SseEvent {
                event: "delta".into(),
                data: "a\nb".into(),
                id: Some("7".into()),
            },
            SseEvent {
                event: "checkpoint".into(),
                data: "c".into(),
                id: Some("8".into()),
            },
            SseEvent {
                event: "message".into(),
                data: "".into(),
                id: Some("8".into()),
            },
        ];
        for step in 1..input.len() {
            assert_eq!(all(input, step), want, "chunk size {step}");
        }
    }

    /// Fuzzing regressions: the outcome, error included, is the same
    /// whatever the chunking, for lines over the limit that are comments,
    /// other fields, or not UTF-8.
    #[test]
    fn oversize_lines_fail_the_same_whatever_the_chunking() {
        let run = |input: &[u8], step: usize| -> Result<Vec<SseEvent>, SseError> {
            let mut p = SseParser::new(16);
            let mut out = Vec::new();
            for c in input.chunks(step) {
                out.extend(p.feed(c)?);
            }
            Ok(out)
        };
        let cases: [&[u8]; 4] = [
            b"data: 01234\xb56789abcdef\n\n",
            b": a comment longer than the limit\n",
            b"event: a-name-longer-than-the-limit\ndata: x\n\n",
            b"data: 0123456\nevent: 01234\n\n",
        ];
        for input in cases {
            let whole = run(input, input.len());
            assert_eq!(whole, Err(SseError::TooLarge(16)), "{input:?}");
            for step in 1..input.len() {
                assert_eq!(run(input, step), whole, "{input:?} in chunks of {step}");
            }
        }
    }

    #[test]
    fn oversize_is_an_error() {
        let mut p = SseParser::new(16);
        assert_eq!(
            p.feed(b"data: 0123456789abcdefgh\n"),
            Err(SseError::TooLarge(16))
        );
        let mut p = SseParser::new(16);
        assert_eq!(p.feed(&[b'x'; 40]), Err(SseError::TooLarge(16)));
    }

    /// A line that is not UTF-8 but within the limit is `NotUtf8`, however
    /// it is chunked; the same bytes over the limit are `TooLarge`.
    #[test]
    fn non_utf8_within_the_limit_is_not_utf8() {
        let input: &[u8] = b"data: ab\xff\xfecd\n\n";
        for step in 1..input.len() {
            let mut p = SseParser::new(64);
            let got: Result<Vec<SseEvent>, SseError> =
                input.chunks(step).try_fold(Vec::new(), |mut out, c| {
                    out.extend(p.feed(c)?);
                    Ok(out)
                });
            assert_eq!(got, Err(SseError::NotUtf8), "chunks of {step}");
        }
        let mut p = SseParser::new(64);
        assert_eq!(p.feed(b"event: \xc3\n"), Err(SseError::NotUtf8));
    }

    /// An `id` holding NUL is ignored (WHATWG: the last event id is not
    /// set); the previous id stays.
    #[test]
    fn an_id_with_nul_is_ignored() {
        let events = all(b"id: 7\ndata: a\n\nid: 8\0x\ndata: b\n\n", 3);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id.as_deref(), Some("7"));
        assert_eq!(events[1].id.as_deref(), Some("7"), "the NUL id was ignored");
        let mut p = SseParser::new(64);
        p.feed(b"id: 9\ndata: c\n\nid: \0\n").unwrap();
        assert_eq!(p.last_id(), Some("9"));
    }
}
