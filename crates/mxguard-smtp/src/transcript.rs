//! A transcript of one SMTP conversation, kept as evidence.

use std::time::Instant;

use serde::Serialize;

/// Who said a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// We sent it (`C:` in the text form).
    Client,
    /// The server sent it (`S:`).
    Server,
    /// Something that happened without words: connect, TLS, timeout (`*`).
    Event,
}

/// One line of a transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// Milliseconds since the conversation began.
    pub at_ms: u64,
    pub dir: Direction,
    pub text: String,
}

/// Everything said in one conversation, in order.
#[derive(Debug, Clone, Serialize)]
pub struct Transcript {
    #[serde(skip)]
    started: Instant,
    pub lines: Vec<Line>,
}

impl Default for Transcript {
    fn default() -> Self {
        Transcript {
            started: Instant::now(),
            lines: Vec::new(),
        }
    }
}

impl Transcript {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, dir: Direction, text: impl Into<String>) {
        let at_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.lines.push(Line {
            at_ms,
            dir,
            text: text.into(),
        });
    }

    /// The conversation as text: `C: EHLO x`, `S: 250 ok`, `* connected`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            let tag = match line.dir {
                Direction::Client => "C:",
                Direction::Server => "S:",
                Direction::Event => "*",
            };
            out.push_str(tag);
            out.push(' ');
            out.push_str(&line.text);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_in_order() {
        let mut t = Transcript::new();
        t.push(Direction::Event, "connected to 127.0.0.1:25");
        t.push(Direction::Server, "220 hi");
        t.push(Direction::Client, "EHLO probe.example");
        assert_eq!(
            t.render(),
            "* connected to 127.0.0.1:25\nS: 220 hi\nC: EHLO probe.example\n"
        );
        assert!(t.lines.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }
}
