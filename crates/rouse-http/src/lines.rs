//! Writing a head for the next hop out of the one received: the lines that pass unchanged are
//! copied as they stand in the received bytes, consecutive ones in a single copy, instead of
//! a name, a separator, a value and a line end apiece. What comes out is the same bytes as
//! writing each line anew.

use std::ops::Range;

/// Writes a head into `out`, taking lines from the received head `buf` where it can.
pub(crate) struct LineCopy<'b, 'o> {
    buf: &'b [u8],
    out: &'o mut Vec<u8>,
    /// Bytes of `buf` taken and not yet written (empty: none).
    run: Range<usize>,
}

impl<'b, 'o> LineCopy<'b, 'o> {
    /// Lines of `buf` (whose parsed parts are slices of it) written into `out`.
    pub(crate) fn new(buf: &'b [u8], out: &'o mut Vec<u8>) -> Self {
        LineCopy {
            buf,
            out,
            run: 0..0,
        }
    }

    /// The received head.
    pub(crate) fn bytes(&self) -> &'b [u8] {
        self.buf
    }

    /// Where `part`, a slice of `buf`, starts in it (`None` for a slice of anything else).
    pub(crate) fn offset(&self, part: &[u8]) -> Option<usize> {
        let at = (part.as_ptr() as usize).wrapping_sub(self.buf.as_ptr() as usize);
        (at <= self.buf.len() && part.len() <= self.buf.len() - at).then_some(at)
    }

    /// Takes `buf[span]` as it stands, after whatever was taken or written before.
    pub(crate) fn take(&mut self, span: Range<usize>) {
        if self.run.is_empty() || span.start != self.run.end {
            self.flush();
            self.run.start = span.start;
        }
        self.run.end = span.end;
    }

    /// Writes the line `name: value\r\n`: taken from `buf` when it stands there exactly so.
    pub(crate) fn header(&mut self, name: &[u8], value: &[u8]) {
        match self.header_span(name, value) {
            Some(span) => self.take(span),
            None => {
                let out = self.out();
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Where the line `name: value\r\n` stands in `buf`, if it does (one space after the
    /// colon, nothing after the value, CRLF).
    fn header_span(&self, name: &[u8], value: &[u8]) -> Option<Range<usize>> {
        let start = self.offset(name)?;
        let colon = start + name.len();
        let value_at = (name.as_ptr() as usize).wrapping_add(name.len() + 2);
        if value.as_ptr() as usize != value_at {
            return None;
        }
        let end = colon + 2 + value.len() + 2;
        let line = self.buf.get(colon..end)?;
        (line.starts_with(b": ") && line.ends_with(b"\r\n")).then_some(start..end)
    }

    /// The output, for bytes of the writer's own: what was taken is written first.
    pub(crate) fn out(&mut self) -> &mut Vec<u8> {
        self.flush();
        self.out
    }

    fn flush(&mut self) {
        if !self.run.is_empty() {
            self.out.extend_from_slice(&self.buf[self.run.clone()]);
            self.run = 0..0;
        }
    }

    /// Writes what is still taken; the head is complete.
    pub(crate) fn finish(mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_standing_as_written_are_copied_in_runs_and_others_written_anew() {
        let buf = b"A: 1\r\nB:2\r\nC: 3  \r\nD: 4\r\nE: 5\r\n";
        let mut out = Vec::new();
        let mut lines = LineCopy::new(buf, &mut out);
        // As httparse gives them: values without surrounding blanks.
        let parts: [(&[u8], &[u8]); 5] = [
            (&buf[0..1], &buf[3..4]),
            (&buf[6..7], &buf[8..9]),
            (&buf[11..12], &buf[14..15]),
            (&buf[19..20], &buf[22..23]),
            (&buf[25..26], &buf[28..29]),
        ];
        for (i, (name, value)) in parts.into_iter().enumerate() {
            if i == 3 {
                continue;
            }
            lines.header(name, value);
        }
        assert_eq!(lines.header_span(parts[0].0, parts[0].1), Some(0..6));
        assert_eq!(lines.header_span(parts[1].0, parts[1].1), None);
        assert_eq!(lines.header_span(parts[2].0, parts[2].1), None);
        assert_eq!(lines.header_span(b"A", b"1"), None);
        lines.out().extend_from_slice(b"x\r\n");
        lines.finish();
        assert_eq!(out, b"A: 1\r\nB: 2\r\nC: 3\r\nE: 5\r\nx\r\n");
    }
}
