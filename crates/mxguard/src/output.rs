//! Writing results to standard output, with the exit-code contract:
//! a closed pipe is not an error (`mxguard check … | head` exits 0).

use std::io::{self, Write};

/// Write `text` (which may hold ANSI styles) to standard output, stripping
/// styles when stdout is not a terminal or `NO_COLOR` is set.
pub fn write_styled(text: &str) -> io::Result<()> {
    let mut out = anstream::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Write plain text (JSON) to standard output.
pub fn write_plain(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Whether a write error means the reader went away.
pub fn is_broken_pipe(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::BrokenPipe
}
