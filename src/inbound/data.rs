//! The DATA phase as a push parser, no I/O: bytes from the wire in,
//! message content out, the end of data found, limits counted.
//!
//! SMTP smuggling is closed here. The end of data is only `CRLF . CRLF`
//! (RFC 5321 section 4.1.1.4); `LF . LF`, `CR . CR`, `LF . CRLF` and every
//! other mix are content. Bare CR and bare LF in content are normalised to
//! CRLF, so once the message is dot-stuffed again on the way out, no
//! sequence we accepted as content can end the data at the next hop.

/// Why the content was refused (decided once the end of data is seen, so
/// the session stays in step with the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    TooBig,
    LineTooLong,
    HeaderTooBig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After CRLF: a protocol line starts.
    LineStart,
    /// Inside a line.
    Mid,
    /// Saw CR inside a line.
    Cr,
    /// Saw `.` at a line start.
    Dot,
    /// Saw `.` CR at a line start.
    DotCr,
}

/// Receives the DATA section of one transaction.
pub struct DataReceiver {
    state: State,
    max_size: u64,
    max_line: usize,
    max_header: usize,
    size: u64,
    line_len: usize,
    /// Content bytes since the last CRLF emitted; for finding the end of
    /// the header section.
    blank_line: bool,
    in_headers: bool,
    headers: Vec<u8>,
    problem: Option<DataProblem>,
    /// Bytes thrown away after a problem.
    discarded: u64,
}

impl DataReceiver {
    /// A receiver with the given limits.
    pub fn new(max_size: u64, max_line: usize, max_header: usize) -> DataReceiver {
        DataReceiver {
            state: State::LineStart,
            max_size,
            max_line,
            max_header,
            size: 0,
            line_len: 0,
            blank_line: true,
            in_headers: true,
            headers: Vec::new(),
            problem: None,
            discarded: 0,
        }
    }

    /// Feeds wire bytes; content goes to `out`. Returns `Some(n)` when the
    /// end of data was found after consuming `n` bytes of `input` (the rest
    /// belongs to the next command), `None` when all of `input` was taken.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            // Fast path: inside a line, copy everything up to the next CR or
            // LF in one go (most of a message is plain line content).
            if self.state == State::Mid {
                let rest = &input[i..];
                let run = rest
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(rest.len());
                if run > 0 {
                    self.span(&rest[..run], out);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            match self.state {
                State::LineStart => match b {
                    b'.' => self.state = State::Dot,
                    b'\r' => self.state = State::Cr,
                    // Bare LF: a content line break. Only CRLF starts a
                    // protocol line, so what follows is mid-line for us
                    // (a `.` here must not become a candidate end of data).
                    b'\n' => {
                        self.newline(out);
                        self.state = State::Mid;
                    }
                    _ => {
                        self.byte(b, out);
                        self.state = State::Mid;
                    }
                },
                State::Mid => match b {
                    b'\r' => self.state = State::Cr,
                    // Bare LF: content line break, not a protocol one.
                    b'\n' => self.newline(out),
                    _ => self.byte(b, out),
                },
                State::Cr => match b {
                    b'\n' => {
                        self.newline(out);
                        self.state = State::LineStart;
                    }
                    // Bare CR; CR CR stays in Cr.
                    b'\r' => self.bare_cr(out),
                    _ => {
                        self.bare_cr(out);
                        self.byte(b, out);
                        self.state = State::Mid;
                    }
                },
                State::Dot => match b {
                    b'\r' => self.state = State::DotCr,
                    // `.` LF is not the end of data; keep the dot as content.
                    b'\n' => {
                        self.byte(b'.', out);
                        self.newline(out);
                        self.state = State::Mid;
                    }
                    // Transparency (RFC 5321 section 4.5.2): drop the first dot.
                    _ => {
                        self.byte(b, out);
                        self.state = State::Mid;
                    }
                },
                State::DotCr => match b {
                    b'\n' => return Some(i),
                    // `.` CR followed by anything else: content.
                    b'\r' => {
                        self.byte(b'.', out);
                        self.bare_cr(out);
                        self.state = State::Cr;
                    }
                    _ => {
                        self.byte(b'.', out);
                        self.bare_cr(out);
                        self.byte(b, out);
                        self.state = State::Mid;
                    }
                },
            }
        }
        None
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.problem.is_some() {
            self.discarded += bytes.len() as u64;
            return;
        }
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            self.problem = Some(DataProblem::TooBig);
            return;
        }
        if self.in_headers {
            if self.headers.len() + bytes.len() > self.max_header {
                self.problem = Some(DataProblem::HeaderTooBig);
                return;
            }
            self.headers.extend_from_slice(bytes);
        }
        out.extend_from_slice(bytes);
    }

    /// A run of line content without CR or LF.
    fn span(&mut self, run: &[u8], out: &mut Vec<u8>) {
        let n = run.len();
        let limit_inside = self.problem.is_none()
            && (self.line_len.saturating_add(n) > self.max_line
                || self.size.saturating_add(n as u64) > self.max_size
                || (self.in_headers && self.headers.len().saturating_add(n) > self.max_header));
        if limit_inside {
            // Which limit fires first must not depend on how the reads cut
            // the line: byte by byte, exactly as a one-byte read would.
            for &b in run {
                self.byte(b, out);
            }
            return;
        }
        self.line_len += run.len();
        if self.line_len > self.max_line && self.problem.is_none() {
            self.problem = Some(DataProblem::LineTooLong);
        }
        self.blank_line = false;
        self.emit(run, out);
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        self.line_len += 1;
        if self.line_len > self.max_line && self.problem.is_none() {
            self.problem = Some(DataProblem::LineTooLong);
        }
        self.blank_line = false;
        self.emit(&[b], out);
    }

    /// A CR not followed by LF. In the body it is a line break (CRLF); in
    /// the header section a space, as Postfix and most readers take it, so
    /// that `CR CR LF` can never end the headers early and hide a Subject
    /// or any later field from the rules that read them.
    fn bare_cr(&mut self, out: &mut Vec<u8>) {
        if self.in_headers {
            self.byte(b' ', out);
        } else {
            self.newline(out);
        }
    }

    fn newline(&mut self, out: &mut Vec<u8>) {
        if self.blank_line && self.in_headers {
            self.in_headers = false;
            // The blank line itself is not part of the header section, but
            // it counts against the size limit like any content.
            if self.problem.is_some() {
                self.discarded += 2;
            } else if self.size + 2 > self.max_size {
                self.size += 2;
                self.problem = Some(DataProblem::TooBig);
            } else {
                self.size += 2;
                out.extend_from_slice(b"\r\n");
            }
        } else {
            self.emit(b"\r\n", out);
        }
        self.line_len = 0;
        self.blank_line = true;
    }

    /// The problem that will refuse this message, if any.
    pub fn problem(&self) -> Option<DataProblem> {
        self.problem
    }

    /// Content bytes accepted so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes thrown away after a problem (to stop a client that never ends).
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// The header section seen so far (bounded by the header limit).
    pub fn headers(&self) -> &[u8] {
        &self.headers
    }
}

/// Header facts the listener needs: loop count, Message-ID, and the
/// tenant headers a cloud connector is checked against.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeaderFacts {
    pub received: usize,
    pub message_id: Option<String>,
    /// `X-MS-Exchange-CrossTenant-Id` (the sending Microsoft 365 tenant).
    pub cross_tenant_id: SingleHeader,
    /// `X-OriginatorOrg` (the sending Microsoft 365 organisation's domain).
    pub originator_org: SingleHeader,
}

/// A header that counts only with one value: a second, different value
/// (someone added their own) makes it `Conflicting`, never either value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum SingleHeader {
    #[default]
    Absent,
    One(String),
    Conflicting,
}

impl SingleHeader {
    /// Adds one occurrence; values compare case-insensitively. An empty
    /// value says nothing and is ignored.
    fn add(&mut self, value: &str) {
        // Longer than any domain or tenant id: kept short, still unequal.
        let v: String = value.trim().chars().take(255).collect();
        if v.is_empty() {
            return;
        }
        *self = match std::mem::take(self) {
            SingleHeader::Absent => SingleHeader::One(v),
            SingleHeader::One(x) if x.eq_ignore_ascii_case(&v) => SingleHeader::One(x),
            _ => SingleHeader::Conflicting,
        };
    }
}

/// Scans a header section (CRLF lines, folded lines joined).
pub fn header_facts(headers: &[u8]) -> HeaderFacts {
    let mut facts = HeaderFacts::default();
    let text = String::from_utf8_lossy(headers);
    let mut current: Option<String> = None;
    let finish = |h: Option<String>, facts: &mut HeaderFacts| {
        let Some(h) = h else { return };
        let Some((name, value)) = h.split_once(':') else {
            return;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("received") {
            facts.received += 1;
        } else if name.eq_ignore_ascii_case("x-ms-exchange-crosstenant-id") {
            facts.cross_tenant_id.add(value);
        } else if name.eq_ignore_ascii_case("x-originatororg") {
            facts.originator_org.add(value);
        } else if name.eq_ignore_ascii_case("message-id") && facts.message_id.is_none() {
            let v = value.trim();
            if !v.is_empty() {
                facts.message_id = Some(v.chars().take(998).collect());
            }
        }
    };
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(c) = current.as_mut() {
                c.push_str(line);
            }
        } else {
            finish(current.take(), &mut facts);
            if !line.is_empty() {
                current = Some(line.to_string());
            }
        }
    }
    finish(current, &mut facts);
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut r = DataReceiver::new(1 << 20, 1000, 1 << 16);
        let mut out = Vec::new();
        let end = r.feed(input, &mut out);
        (out, end)
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        let (out, end) = run(b"Subject: a\r\n\r\nhello\r\n.\r\nMAIL FROM:<x@y>\r\n");
        assert_eq!(out, b"Subject: a\r\n\r\nhello\r\n");
        assert_eq!(end, Some(b"Subject: a\r\n\r\nhello\r\n.\r\n".len()));
    }

    #[test]
    fn smuggling_sequences_are_content() {
        // Every non-standard end-of-data variant from the SMTP smuggling
        // research stays inside the message.
        let variants: [&[u8]; 6] = [
            b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r",
        ];
        for v in variants {
            let mut input = b"Subject: a\r\n\r\nbody".to_vec();
            input.extend_from_slice(v);
            input.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\n");
            let (out, end) = run(&input);
            assert_eq!(end, None, "{v:?} must not end the data");
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("MAIL FROM:<evil@x.test>"), "{v:?}");
            // Normalised: no bare CR or LF remains, so dot-stuffing on the
            // way out protects the next hop.
            let bytes = text.as_bytes();
            for (i, &b) in bytes.iter().enumerate() {
                if b == b'\n' {
                    assert_eq!(bytes[i - 1], b'\r', "{v:?}: bare LF at {i}");
                }
                if b == b'\r' {
                    assert_eq!(bytes.get(i + 1), Some(&b'\n'), "{v:?}: bare CR at {i}");
                }
            }
        }
    }

    /// The reference the receiver must agree with: the end of data is the
    /// first `CRLF . CRLF` in the stream, counting the CRLF that ended the
    /// DATA command line. Returns the bytes of `input` it spans.
    fn reference_end(input: &[u8]) -> Option<usize> {
        let mut s = b"\r\n".to_vec();
        s.extend_from_slice(input);
        s.windows(5)
            .position(|w| w == b"\r\n.\r\n")
            .map(|p| p + 5 - 2)
    }

    /// Feeds `input` cut at `cuts` (ascending), as separate reads.
    fn feed_cut(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<usize>) {
        let mut r = DataReceiver::new(1 << 20, 1000, 1 << 16);
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&input.len())) {
            if let Some(n) = r.feed(&input[start..end], &mut out) {
                return (out, Some(start + n));
            }
            start = end;
        }
        (out, None)
    }

    fn assert_normalised(out: &[u8], what: &str) {
        for (i, &b) in out.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r', "{what}: bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'), "{what}: bare CR at {i}");
            }
        }
    }

    /// Every string of CR, LF, `.` and one letter up to 8 bytes long (every
    /// sequence at every position), whole and cut at every byte: the end of
    /// data is exactly where the reference says, and the content is
    /// CRLF-normalised.
    #[test]
    fn end_of_data_agrees_with_the_reference_everywhere() {
        let alphabet = [b'\r', b'\n', b'.', b'a'];
        for len in 0..=8u32 {
            for code in 0..4usize.pow(len) {
                let mut c = code;
                let input: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = alphabet[c % 4];
                        c /= 4;
                        b
                    })
                    .collect();
                let want = reference_end(&input);
                let (whole, got) = feed_cut(&input, &[]);
                assert_eq!(got, want, "{input:?}");
                assert_normalised(&whole, &format!("{input:?}"));
                for cut in 1..input.len() {
                    let (out, got) = feed_cut(&input, &[cut]);
                    assert_eq!((got, &out), (want, &whole), "{input:?} cut at {cut}");
                }
            }
        }
    }

    /// The sequences of the SMTP smuggling research, each at every place
    /// a parser could treat differently, followed by a smuggled command;
    /// fed whole, byte by byte, and cut at every boundary.
    #[test]
    fn smuggling_sequences_at_every_position_are_content() {
        let sequences: [&[u8]; 12] = [
            b"\n.\n",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r",
            b"\r\n.\r",
            b"\r.\r\n",
            b"\n.\r",
            b"\r.\n",
            b"\r\n\n.\r\n",
            b"\r\n\r.\r\n",
            b"\n\n.\n\n",
            b"\r\r.\r\r",
        ];
        let positions: [(&str, &[u8]); 6] = [
            ("start of data", b""),
            ("mid-line", b"Subject: a\r\n\r\nbody"),
            ("line start", b"Subject: a\r\n\r\nbody\r\n"),
            ("after the header block", b"Subject: a\r\n\r\n"),
            ("after a bare CR", b"Subject: a\r\n\r\nbody\r"),
            ("after a bare LF", b"Subject: a\r\n\r\nbody\n"),
        ];
        let smuggled: &[u8] = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\n";
        for seq in sequences {
            for (where_, prefix) in positions {
                let mut input = prefix.to_vec();
                input.extend_from_slice(seq);
                input.extend_from_slice(smuggled);
                let body_len = input.len();
                input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
                let what = format!("{seq:?} at {where_}");
                let real_end = body_len + 5;
                let (whole, end) = feed_cut(&input, &[]);
                assert_eq!(end, reference_end(&input), "{what}");
                if end != Some(real_end) {
                    // Only a bare CR that the sequence's LF completes into
                    // a real CRLF makes a genuine end of data earlier.
                    assert!(prefix.ends_with(b"\r") && seq.starts_with(b"\n"), "{what}");
                    continue;
                }
                let text = String::from_utf8_lossy(&whole);
                assert!(text.contains("MAIL FROM:<evil@x.test>"), "{what}: {text:?}");
                assert_normalised(&whole, &what);
                let bytewise: Vec<usize> = (1..input.len()).collect();
                assert_eq!(feed_cut(&input, &bytewise), (whole.clone(), end), "{what}");
                for cut in 1..input.len() {
                    assert_eq!(
                        feed_cut(&input, &[cut]),
                        (whole.clone(), end),
                        "{what}, cut at {cut}"
                    );
                }
            }
        }
    }

    /// Found by the fuzz target: the blank line after the headers went
    /// past the size limit unchecked.
    #[test]
    fn the_blank_line_after_the_headers_counts_against_the_limit() {
        let mut r = DataReceiver::new(6, 1000, 1000);
        let mut out = Vec::new();
        assert!(r.feed(b"a: b\r\n\r\n.\r\n", &mut out).is_some());
        assert_eq!(r.problem(), Some(DataProblem::TooBig));
        assert!(out.len() <= 6);
        let mut r = DataReceiver::new(8, 1000, 1000);
        assert!(r.feed(b"a: b\r\n\r\n.\r\n", &mut Vec::new()).is_some());
        assert_eq!(r.problem(), None, "exactly at the limit is fine");
    }

    #[test]
    fn a_bare_cr_never_ends_the_header_section() {
        let (out, end) =
            run(b"To: y\r\r\nSubject: [secure] lab\r\nX: 1\r\n\r\nbody\rmore\r\n.\r\n");
        assert!(end.is_some());
        assert_eq!(
            out,
            b"To: y \r\nSubject: [secure] lab\r\nX: 1\r\n\r\nbody\r\nmore\r\n"
        );
        let mut r = DataReceiver::new(1 << 20, 1000, 1 << 16);
        r.feed(b"To: y\r\rSubject: s\r\n\r\nb\r\n.\r\n", &mut Vec::new());
        // One header line with two spaces, as a reader that keeps bare CR
        // inside the line sees it: never a line break.
        assert_eq!(r.headers(), b"To: y  Subject: s\r\n");
    }

    #[test]
    fn dot_unstuffing() {
        let (out, end) = run(b"\r\n..leading dot\r\n...\r\n.\r\n");
        assert_eq!(out, b"\r\n.leading dot\r\n..\r\n");
        assert!(end.is_some());
    }

    #[test]
    fn end_split_across_reads() {
        let mut r = DataReceiver::new(1 << 20, 1000, 1 << 16);
        let mut out = Vec::new();
        let input = b"a: b\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        for (i, b) in input.iter().enumerate() {
            if let Some(n) = r.feed(std::slice::from_ref(b), &mut out) {
                assert_eq!(n, 1);
                assert_eq!(i, b"a: b\r\n\r\nbody\r\n.\r\n".len() - 1);
                break;
            }
        }
        assert_eq!(out, b"a: b\r\n\r\nbody\r\n");
    }

    #[test]
    fn limits() {
        let mut r = DataReceiver::new(10, 1000, 1000);
        let mut out = Vec::new();
        assert!(r.feed(b"a: 0123456789abcdef\r\n.\r\n", &mut out).is_some());
        assert_eq!(r.problem(), Some(DataProblem::TooBig));
        assert!(out.len() <= 10);

        let mut r = DataReceiver::new(1 << 20, 5, 1000);
        assert!(
            r.feed(b"a: b\r\n\r\n0123456789\r\n.\r\n", &mut Vec::new())
                .is_some()
        );
        assert_eq!(r.problem(), Some(DataProblem::LineTooLong));

        let mut r = DataReceiver::new(1 << 20, 1000, 8);
        assert!(
            r.feed(b"a: 0123456789\r\n\r\nbody\r\n.\r\n", &mut Vec::new())
                .is_some()
        );
        assert_eq!(r.problem(), Some(DataProblem::HeaderTooBig));
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let input: &[u8] = b"Subject: a\r\n\r\n.x\r\n\n.\nbare\rcr\r\n..\r\n.\r.\r\n.\r\nNEXT";
        let (whole, end) = run(input);
        let end = end.unwrap();
        for cut in 0..input.len() {
            let mut r = DataReceiver::new(1 << 20, 1000, 1 << 16);
            let mut out = Vec::new();
            let got = match r.feed(&input[..cut], &mut out) {
                Some(n) => n,
                None => cut + r.feed(&input[cut..], &mut out).unwrap(),
            };
            assert_eq!(
                (out.as_slice(), got),
                (whole.as_slice(), end),
                "split at {cut}"
            );
        }
    }

    /// From the `data` fuzz target: a line that passes the size and the
    /// line limit reported `LineTooLong` read whole and `TooBig` read in
    /// pieces. Whichever limit a byte-by-byte reading hits first is the
    /// answer, however the reads cut the line, in the headers and the body.
    #[test]
    fn the_first_limit_hit_does_not_depend_on_the_reads() {
        let cases: [(&[u8], u64, usize, usize); 4] = [
            (b"aaaaaaaaaaaaaaaaaaaa\r\n.\r\n", 12, 15, 1000),
            (b"aaaaaaaaaaaaaaaaaaaa\r\n.\r\n", 15, 12, 1000),
            (b"aaaaaaaaaaaaaaaaaaaa\r\n.\r\n", 1000, 15, 12),
            (b"a: b\r\n\r\nbbbbbbbbbbbbbbbbbbbbb\r\n.\r\n", 20, 15, 1000),
        ];
        for (input, size, line, header) in cases {
            let mut whole = DataReceiver::new(size, line, header);
            assert!(whole.feed(input, &mut Vec::new()).is_some());
            let mut byte = DataReceiver::new(size, line, header);
            for (i, b) in input.iter().enumerate() {
                if byte
                    .feed(std::slice::from_ref(b), &mut Vec::new())
                    .is_some()
                {
                    assert_eq!(i, input.len() - 1);
                }
            }
            assert!(whole.problem().is_some());
            assert_eq!(whole.problem(), byte.problem(), "{size} {line} {header}");
            for cut in 1..input.len() {
                let mut r = DataReceiver::new(size, line, header);
                let mut out = Vec::new();
                if r.feed(&input[..cut], &mut out).is_none() {
                    r.feed(&input[cut..], &mut out).unwrap();
                }
                assert_eq!(r.problem(), whole.problem(), "cut at {cut}");
            }
        }
        // The fuzz target's input itself.
        let wire = b"\r\r\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\r\r\x0c\r\rj\r\x97\xff\xffla~\n\r(\r\r\r";
        let mut a = DataReceiver::new(13, 14, 0xab * 16);
        a.feed(wire, &mut Vec::new());
        let mut b = DataReceiver::new(13, 14, 0xab * 16);
        for chunk in wire.chunks(3) {
            b.feed(chunk, &mut Vec::new());
        }
        assert_eq!(a.problem(), b.problem());
    }

    #[test]
    fn random_bytes_never_panic_and_stay_bounded() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..300);
            let input: Vec<u8> = (0..len)
                .map(|_| *rng.choice(b"\r\n.ab \t\xff".iter()).unwrap())
                .collect();
            let mut r = DataReceiver::new(100, 50, 60);
            let mut out = Vec::new();
            let _ = r.feed(&input, &mut out);
            assert!(out.len() <= 102, "output bounded by the size limit");
            let _ = header_facts(r.headers());
            let _ = crate::inbound::command::parse(&input);
        }
    }

    #[test]
    fn facts() {
        let h = b"Received: from a\r\n\tby b\r\nreceived: x\r\nMessage-ID:\r\n <id@x.test>\r\nSubject: s\r\n";
        let f = header_facts(h);
        assert_eq!(f.received, 2);
        assert_eq!(f.message_id.as_deref(), Some("<id@x.test>"));
    }
}
