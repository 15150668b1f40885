//! Server-sent events framing for the client commands and the load generator: one reader, so
//! the CLI and `intentd bench` cut a stream into events the same way.

/// One event of a stream: its `event:` name, `id:` and the joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub name: String,
    pub id: Option<u64>,
    pub data: String,
}

/// Cuts a byte stream into [`Frame`]s; chunks may split lines and events anywhere.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: String,
    name: String,
    id: Option<u64>,
    data: String,
}

impl FrameReader {
    /// Takes the next chunk and returns the events it completed, in order. Comment lines
    /// (`:` keep-alives) and unknown fields are skipped.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Frame> {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
        let mut frames = Vec::new();
        while let Some(pos) = self.buf.find('\n') {
            let line = self.buf[..pos].trim_end_matches('\r').to_string();
            self.buf.drain(..=pos);
            if line.is_empty() {
                frames.push(Frame {
                    name: std::mem::take(&mut self.name),
                    id: self.id.take(),
                    data: std::mem::take(&mut self.data),
                });
            } else if let Some(v) = line.strip_prefix("event:") {
                self.name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                self.id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("data:") {
                self.data.push_str(v.trim_start());
            }
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_crlf_lines_come_out_whole() {
        let mut r = FrameReader::default();
        assert!(r
            .feed(b": keep-alive\n\nevent: intent.deliv")
            .iter()
            .all(|f| f.data.is_empty()));
        assert!(r.feed(b"ered\r\nid: 7\ndata: {\"a\":").is_empty());
        let frames = r.feed(b"1}\n\nevent: stream.timeout\ndata: {}\n\n");
        assert_eq!(
            frames,
            vec![
                Frame {
                    name: "intent.delivered".into(),
                    id: Some(7),
                    data: "{\"a\":1}".into()
                },
                Frame {
                    name: "stream.timeout".into(),
                    id: None,
                    data: "{}".into()
                },
            ]
        );
    }
}
