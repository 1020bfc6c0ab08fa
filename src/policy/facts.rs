//! What the rules can look at in a message: envelope, client, headers,
//! subject, text of the bodies and of the attachments that can be read
//! (text, PDF, Office and OpenDocument files, zip and gzip archives,
//! attached messages), the headers a person writes (display names, file
//! names, descriptions), attachment types and sizes, and what could not
//! be read. Built once per delivery attempt, never logged.
//!
//! "Could not read it" is not "clean": a part the scan could not read (cut
//! at `max_scan_size`, an encrypted or broken document, an image, a
//! message nested too deep, a damaged or unknown transfer encoding, more
//! text than the message's budget, the deadline) is listed in
//! [`MessageFacts::unscannable`], and the policy counts it as PHI.
//!
//! Parts are read by what their bytes are, not by their labels (see
//! [`super::sniff`]): a PDF sent as `text/plain`, a zip named `notes.txt`
//! or a text file declared a signature is read as what it is.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::parsers::MessageStream;
use mail_parser::{
    Encoding, HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};
use tokio::sync::Semaphore;

use super::detectors::{Detector, Detectors};
use super::extract::{Kind, Limits, MAX_CONTAINER_DEPTH};
use super::html::{self, normalize};
use super::sniff;

/// An attachment as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `type/subtype`, lowercased.
    pub content_type: String,
    /// File name, if any.
    pub name: Option<String>,
    pub size: usize,
    /// The type its bytes show (`application/pdf` for a PDF labelled
    /// `text/plain`), if known: `attachment_type` rules match it too.
    pub detected_type: Option<&'static str>,
}

/// The message facts rules match on.
#[derive(Debug, Clone, Default)]
pub struct MessageFacts {
    pub sender: String,
    pub client_ip: Option<IpAddr>,
    pub auth_user: Option<String>,
    pub size: u64,
    pub subject: String,
    /// Every Subject the message carries (a reader may show the first,
    /// the rules see the last), decoded and normalised, for the detectors.
    pub subject_text: String,
    /// Header name (lowercased) to every value (unfolded, decoded).
    pub headers: HashMap<String, Vec<String>>,
    /// Text of the text/plain and text/html bodies.
    pub body_text: String,
    /// Text of the attachments that could be read: text parts, documents,
    /// archives and attached messages (their subject, bodies and
    /// attachments), at any depth up to [`ScanLimits::max_depth`].
    pub attachment_text: String,
    /// Decoded text of the headers a person writes or names, of the
    /// message and of every part at any depth: display names, custom
    /// `X-` headers, Content-Description, file names (RFC 2231 and 2047
    /// decoded). Not the Subject (its own field), nor the trace and
    /// identifier headers machines write (see [`is_machine_header`]).
    pub header_text: String,
    /// Attachments at every depth (inside attached messages too).
    pub attachments: Vec<Attachment>,
    /// Whether the content was cut at the scan limit.
    pub truncated: bool,
    /// What the detectors could not read, and why, one entry each
    /// (`attachment 2 (application/pdf): encrypted`). Names positions and
    /// types only, never content or file names (a file name can name the
    /// patient). The policy counts a message with any entry as PHI unless
    /// `[defaults] unscannable_is_phi = false`.
    pub unscannable: Vec<String>,
    /// Findings of every detector, counted by the scan itself (so the
    /// detectors run inside its time bound and on its blocking thread);
    /// `None` for facts that were not scanned (then [`Self::detect`]
    /// counts them when asked).
    pub findings: Option<Vec<(Detector, usize)>>,
}

/// The detectors the scan counts with (compiled once).
fn detectors() -> &'static Detectors {
    static DETECTORS: std::sync::OnceLock<Detectors> = std::sync::OnceLock::new();
    DETECTORS.get_or_init(Detectors::new)
}

/// Bounds of one message's content scan.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// How deep attached messages (`message/rfc822` inside `message/rfc822`
    /// ...) are opened; a deeper one is unscannable.
    pub max_depth: usize,
    /// Time for the whole content scan, extraction included; what is not
    /// read by then is unscannable.
    pub timeout: Duration,
    /// Decompressed bytes one PDF stream or one archive may produce.
    pub max_inflated: usize,
    /// Characters of text one document may yield.
    pub max_text: usize,
    /// Bytes of text the whole message may yield, all parts and headers
    /// together: what the detectors read (and the memory the scan holds)
    /// is bounded by this, however many parts there are. Text past it is
    /// unscannable.
    pub max_message_text: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_depth: 5,
            timeout: Duration::from_secs(10),
            max_inflated: 32 << 20,
            max_text: 16 << 20,
            max_message_text: 32 << 20,
        }
    }
}

/// Content scans running at once. Extraction is CPU-bound and a scan that
/// overran its timeout keeps its thread until it ends: this bounds how
/// many such threads (and their memory) there can be.
static SCAN_SLOTS: Semaphore = Semaphore::const_new(2);

/// Types whose bytes are text, though mail-parser does not decode them as
/// text: structured text (JSON, XML) and the report formats (RFC 3464
/// delivery status, RFC 8098 dispositions, RFC 5965 feedback, returned
/// headers).
fn is_text_like(ct: &str) -> bool {
    ct.starts_with("text/")
        || ct.starts_with("message/")
        || matches!(
            ct,
            "application/json" | "application/xml" | "application/ics" | "application/x-vcard"
        )
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
}

/// Types whose text is markup: read as a reader sees it (see [`html`]),
/// so markup inside a number does not split it.
fn is_markup(ct: &str) -> bool {
    matches!(ct, "text/html" | "text/xml" | "application/xml") || ct.ends_with("+xml")
}

/// Types with folded lines (RFC 5545 iCalendar, RFC 6350 vCard): a line
/// break followed by a space continues the line, even inside a number.
fn is_folded(ct: &str) -> bool {
    matches!(
        ct,
        "text/calendar" | "text/vcard" | "text/x-vcard" | "text/directory" | "application/ics"
    ) || ct == "application/x-vcard"
}

/// Transfer encodings mail-parser decodes (base64, quoted-printable) or
/// that need no decoding. Any other value leaves the bytes encoded in a
/// way the detectors cannot read.
const KNOWN_TRANSFER_ENCODINGS: &[&str] = &["7bit", "8bit", "binary", "base64", "quoted-printable"];

/// Headers machines write: trace, authentication, identifiers, dates,
/// MIME structure, and the diagnostics big providers add (long opaque
/// tokens in which ten digits in a row are common). Every other header
/// is scanned; the Subject has its own field.
pub fn is_machine_header(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "received",
        "x-received",
        "return-path",
        "delivered-to",
        "dkim-signature",
        "domainkey-signature",
        "authentication-results",
        "received-spf",
        "message-id",
        "resent-message-id",
        "references",
        "in-reply-to",
        "content-id",
        "date",
        "resent-date",
        "mime-version",
        "content-transfer-encoding",
        "autocrypt",
        "autocrypt-gossip",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "thread-index",
        "feedback-id",
        "x-feedback-id",
        "subject",
    ];
    const PREFIXES: &[&str] = &[
        "arc-",
        "x-ms-",
        "x-microsoft-",
        "x-forefront-",
        "x-google-",
        "x-gm-",
    ];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Content-Type and Content-Disposition parameters that describe the MIME
/// structure; every other parameter (`name`, `filename`, unknown ones) is
/// scanned.
const STRUCTURAL_PARAMETERS: &[&str] = &[
    "boundary",
    "charset",
    "format",
    "delsp",
    "micalg",
    "protocol",
    "report-type",
    "type",
    "start",
    "start-info",
    "smime-type",
    "method",
    "component",
    "id",
    "number",
    "total",
    "access-type",
    "size",
    "creation-date",
    "modification-date",
    "read-date",
    "reply-type",
    "differences",
];

impl MessageFacts {
    /// Parses `content` (at most the scan limit of the stored message) on
    /// this thread, with the default limits.
    pub fn parse(content: &[u8], truncated: bool) -> MessageFacts {
        let limits = ScanLimits::default();
        MessageFacts::parse_with(content, truncated, &limits, Instant::now() + limits.timeout)
    }

    /// Parses `content` on a blocking thread, bounded by `limits`: at
    /// most a few scans run at once, and a scan that does not end within
    /// the timeout (plus a grace second) is abandoned; the message then
    /// has its headers only and counts as unscannable.
    pub async fn scan(content: Vec<u8>, truncated: bool, limits: ScanLimits) -> MessageFacts {
        let content = Arc::new(content);
        // The time starts once a slot is ours: waiting behind other scans
        // must not eat this message's time. The wait itself is bounded (a
        // scan's thread may outlive its deadline).
        let wait = limits.timeout.saturating_mul(3);
        let Ok(Ok(permit)) = tokio::time::timeout(wait, SCAN_SLOTS.acquire()).await else {
            tracing::warn!(
                "no content scan slot became free in time; the message counts as unscannable"
            );
            return MessageFacts::headers_only(
                &content,
                truncated,
                "no content scan slot became free in time",
            );
        };
        let deadline = Instant::now() + limits.timeout;
        let work = {
            let content = content.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    MessageFacts::parse_with(&content, truncated, &limits, deadline)
                })
                .await
                .ok()
            }
        };
        let backstop = tokio::time::Instant::from_std(deadline + Duration::from_secs(1));
        match tokio::time::timeout_at(backstop, work).await {
            Ok(Some(facts)) => facts,
            Ok(None) => {
                tracing::warn!("the content scan failed; the message counts as unscannable");
                MessageFacts::headers_only(&content, truncated, "the content scan failed")
            }
            Err(_) => {
                tracing::warn!(timeout = ?limits.timeout, "the content scan did not finish in time; the message counts as unscannable");
                MessageFacts::headers_only(
                    &content,
                    truncated,
                    "the content scan did not finish in time",
                )
            }
        }
    }

    /// The headers of `content` and one unscannable entry: for a scan that
    /// did not complete.
    fn headers_only(content: &[u8], truncated: bool, why: &str) -> MessageFacts {
        let mut f = MessageFacts {
            truncated,
            ..Default::default()
        };
        if let Some(msg) = MessageParser::default().parse_headers(content) {
            f.read_headers(&msg);
        }
        f.unscannable.push(format!("message: {why}"));
        f
    }

    fn read_headers(&mut self, msg: &Message<'_>) {
        self.subject = msg.subject().unwrap_or("").to_string();
        for (name, value) in msg.headers_raw() {
            let v = value
                .replace("\r\n", "")
                .replace('\n', "")
                .trim()
                .to_string();
            self.headers
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(v);
        }
        // Decoded subject replaces the raw (RFC 2047) one.
        if let Some(s) = msg.subject() {
            self.headers.insert("subject".into(), vec![s.to_string()]);
        }
        let subjects: Vec<&str> = msg
            .header_values(mail_parser::HeaderName::Subject)
            .filter_map(|v| v.as_text())
            .collect();
        self.subject_text = crate::policy::html::normalize(&subjects.join("\n"));
    }

    /// Parses `content` on this thread, bounded by `limits` and `deadline`.
    pub fn parse_with(
        content: &[u8],
        truncated: bool,
        limits: &ScanLimits,
        deadline: Instant,
    ) -> MessageFacts {
        let mut f = MessageFacts {
            truncated,
            ..Default::default()
        };
        if truncated {
            f.unscannable
                .push("message: longer than max_scan_size, only its start was scanned".to_string());
        }
        let Some(msg) = MessageParser::default().parse(content) else {
            // Not MIME at all: scan it as text so detectors still see it.
            let text = sniff::decode_text(&content[..content.len().min(limits.max_message_text)]);
            if content.len() > limits.max_message_text {
                f.unscannable.push(message_text_limit(limits));
            }
            f.body_text = normalize(&text);
            f.findings = Some(f.count(detectors(), &Detector::ALL));
            return f;
        };
        f.read_headers(&msg);
        let mut scan = Scan {
            facts: &mut f,
            limits,
            deadline,
            text_left: limits.max_message_text,
            over_budget: false,
        };
        let (mut body, mut att_text, mut header_text) =
            (String::new(), String::new(), String::new());
        scan.part_headers(&msg, "message", &mut header_text);
        scan.outside_parts(&msg, 0..content.len(), "message", &mut body);
        scan.bodies(&msg, "message", &mut body);
        scan.attachments(&msg, "", 0, &mut att_text, &mut header_text);
        f.body_text = body;
        f.attachment_text = att_text;
        f.header_text = header_text;
        // The detectors read at most `max_message_text` bytes (and the
        // subject): their time is bounded by the scan's, and counted in it.
        f.findings = Some(f.count(detectors(), &Detector::ALL));
        f
    }

    /// Findings of `which` detectors over the subject, the headers a
    /// person writes, the bodies and the attachments.
    pub fn detect(&self, detectors: &Detectors, which: &[Detector]) -> Vec<(Detector, usize)> {
        match &self.findings {
            Some(all) => all
                .iter()
                .filter(|(d, _)| which.contains(d))
                .copied()
                .collect(),
            None => self.count(detectors, which),
        }
    }

    fn count(&self, detectors: &Detectors, which: &[Detector]) -> Vec<(Detector, usize)> {
        let mut found: HashMap<Detector, usize> = HashMap::new();
        for text in [
            &self.subject_text,
            &self.header_text,
            &self.body_text,
            &self.attachment_text,
        ] {
            if text.is_empty() {
                continue;
            }
            for (d, n) in detectors.scan(text, which) {
                *found.entry(d).or_default() += n;
            }
        }
        let mut v: Vec<_> = found.into_iter().filter(|(_, n)| *n > 0).collect();
        v.sort();
        v
    }
}

fn message_text_limit(limits: &ScanLimits) -> String {
    format!(
        "message: holds more text than the scan limit of {} bytes",
        limits.max_message_text
    )
}

/// `type/subtype` of a part, lowercased (`text/plain` when it has none,
/// as RFC 2045 says).
fn content_type_of(part: &MessagePart<'_>) -> String {
    part.content_type()
        .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")).to_ascii_lowercase())
        .unwrap_or_else(|| "text/plain".into())
}

/// The transfer-decoded bytes of a text part, before any charset
/// conversion (mail-parser keeps only the converted text): to recognise
/// a document sent as text. `None` if they cannot be decoded.
fn raw_bytes(msg: &Message<'_>, part: &MessagePart<'_>) -> Option<Vec<u8>> {
    let raw = msg
        .raw_message
        .get(part.raw_body_offset() as usize..part.raw_end_offset() as usize)?;
    match part.encoding {
        Encoding::Base64 => base64_decode(raw),
        Encoding::QuotedPrintable => quoted_printable_decode(raw),
        Encoding::None => Some(raw.to_vec()),
    }
}

/// Whether mail-parser decodes text in `charset` (UTF-8 is its default).
fn charset_known(charset: &str) -> bool {
    let c = charset.trim().to_ascii_lowercase();
    matches!(c.as_str(), "utf-8" | "utf8" | "us-ascii" | "ascii")
        || mail_parser::decoders::charsets::map::charset_decoder(c.as_bytes()).is_some()
}

/// RFC 3676 `format=flowed` text unwrapped: a line ending in a space
/// continues on the next (with `delsp=yes` that space is deleted, so a
/// number wrapped there is one number again).
fn unflow(text: &str, delsp: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.strip_prefix(' ').unwrap_or(line);
        if line.ends_with(' ') && line != "-- " {
            out.push_str(if delsp { &line[..line.len() - 1] } else { line });
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Folded iCalendar and vCard lines unfolded, and their escapes undone.
fn unfold(text: &str) -> String {
    text.replace("\r\n ", "")
        .replace("\r\n\t", "")
        .replace("\n ", "")
        .replace("\n\t", "")
        .replace("\\n", "\n")
        .replace("\\N", "\n")
        .replace("\\,", ",")
        .replace("\\;", ";")
}

/// The fields of a raw header section: (name, value with its folds) for
/// each field, (`None`, the line) for a line that is not a field.
fn header_fields(block: &[u8]) -> Vec<(Option<&str>, &[u8])> {
    let mut fields: Vec<(Option<&str>, &[u8])> = Vec::new();
    let mut start = 0;
    // Field boundaries: a line that does not start with white space.
    let mut lines = Vec::new();
    for (i, &b) in block.iter().enumerate() {
        if b == b'\n' {
            let next = block.get(i + 1).copied();
            if !matches!(next, Some(b' ' | b'\t')) {
                lines.push(&block[start..=i]);
                start = i + 1;
            }
        }
    }
    if start < block.len() {
        lines.push(&block[start..]);
    }
    for line in lines {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let field = line.iter().position(|&b| b == b':').and_then(|colon| {
            let name = std::str::from_utf8(&line[..colon]).ok()?.trim_end();
            (!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()))
                .then(|| (name, &line[colon + 1..]))
        });
        match field {
            Some((name, value)) => fields.push((Some(name), value)),
            None => fields.push((None, line)),
        }
    }
    fields
}

/// One content scan in progress.
struct Scan<'a> {
    facts: &'a mut MessageFacts,
    limits: &'a ScanLimits,
    deadline: Instant,
    /// Bytes of text the message may still yield.
    text_left: usize,
    /// The message's text budget ran out (listed once).
    over_budget: bool,
}

impl Scan<'_> {
    fn unscannable(&mut self, what: &str, why: impl std::fmt::Display) {
        self.facts.unscannable.push(format!("{what}: {why}"));
    }

    /// Appends `text` and a line break to `out` within the message's text
    /// budget; text past it is not kept, and the message is unscannable.
    fn push(&mut self, out: &mut String, text: &str) {
        if self.over_budget || text.is_empty() {
            return;
        }
        match self.text_left.checked_sub(text.len().saturating_add(1)) {
            Some(left) => {
                self.text_left = left;
                out.push_str(text);
                out.push('\n');
            }
            None => {
                self.over_budget = true;
                self.facts.unscannable.push(message_text_limit(self.limits));
            }
        }
    }

    /// The headers a person writes, of every part of `msg` (its own
    /// headers are those of its first part), into `out`. The header
    /// section is read as written, not only as mail-parser understood it:
    /// a line that is not a header field (no colon, a space in the name)
    /// is dropped by the parser, but not by every reader, so it is text.
    ///
    /// A part that declares its type or transfer encoding twice, with
    /// different values, is unscannable: a reader may take the other one.
    fn part_headers(&mut self, msg: &Message<'_>, what: &str, out: &mut String) {
        for (i, part) in msg.parts.iter().enumerate() {
            for (header, label) in [
                (HeaderName::ContentType, "content type"),
                (HeaderName::ContentTransferEncoding, "transfer encoding"),
            ] {
                let mut values: Vec<String> = part
                    .headers
                    .iter()
                    .filter(|h| h.name == header)
                    .filter_map(|h| {
                        msg.raw_message
                            .get(h.offset_start as usize..h.offset_end as usize)
                            .map(|v| {
                                String::from_utf8_lossy(v)
                                    .split_whitespace()
                                    .collect::<String>()
                                    .to_ascii_lowercase()
                            })
                    })
                    .collect();
                values.sort();
                values.dedup();
                if values.len() > 1 {
                    let at = if i == 0 {
                        what.to_string()
                    } else {
                        format!("{what} part {i}")
                    };
                    self.unscannable(&at, format_args!("it declares more than one {label}"));
                }
            }
            // File names and other parameters, RFC 2231 decoded and
            // continuations joined by mail-parser.
            for h in &part.headers {
                if let HeaderValue::ContentType(ct) = &h.value {
                    for a in ct.attributes().unwrap_or(&[]) {
                        let param = a.name.to_ascii_lowercase();
                        if !STRUCTURAL_PARAMETERS.contains(&param.as_str()) {
                            self.push(out, &normalize(&a.value));
                        }
                    }
                }
            }
            let block = msg
                .raw_message
                .get(part.raw_header_offset() as usize..part.raw_body_offset() as usize)
                .unwrap_or_default();
            for (name, value) in header_fields(block) {
                let text = match name {
                    None => sniff::decode_text(value),
                    Some(name) => {
                        let name = name.to_ascii_lowercase();
                        if is_machine_header(&name)
                            || name == "content-type"
                            || name == "content-disposition"
                        {
                            continue;
                        }
                        // RFC 2047 encoded words decoded, as in an
                        // unstructured header (display names, X- headers).
                        match MessageStream::new(value).parse_unstructured() {
                            HeaderValue::Text(t) => t.into_owned(),
                            _ => continue,
                        }
                    }
                };
                self.push(out, &normalize(text.trim()));
            }
        }
    }

    /// The bytes of `msg` within `range` that belong to no part: the
    /// preamble and epilogue of each multipart (and anything mail-parser
    /// skipped). Readers do not show them, but they travel in the clear
    /// like the rest, so they are text too (boundary lines aside).
    fn outside_parts(
        &mut self,
        msg: &Message<'_>,
        range: std::ops::Range<usize>,
        what: &str,
        out: &mut String,
    ) {
        let raw = &msg.raw_message;
        let hi = range.end.min(raw.len());
        let lo = range.start.min(hi);
        let mut covered: Vec<(usize, usize)> = Vec::new();
        let mut boundaries: Vec<String> = Vec::new();
        for p in &msg.parts {
            let header = p.raw_header_offset() as usize;
            let body = p.raw_body_offset() as usize;
            covered.push((header, body.max(header)));
            if let PartType::Multipart(_) = p.body {
                if let Some(b) = p.content_type().and_then(|c| c.attribute("boundary")) {
                    boundaries.push(b.to_string());
                }
            } else {
                covered.push((body, (p.raw_end_offset() as usize).max(body)));
            }
        }
        if let Some(slice) = raw.get(lo..hi) {
            if let Some(why) = misplaced_delimiter(slice, &boundaries) {
                // Our parser may have cut a part where a reader does not
                // (RFC 2046: a delimiter starts a line): what it would
                // show might never have been scanned.
                self.unscannable(what, why);
            }
        }
        covered.sort_unstable();
        let mut gaps = Vec::new();
        let mut at = lo;
        for (start, end) in covered {
            let (start, end) = (start.clamp(lo, hi), end.clamp(lo, hi));
            if start > at {
                gaps.push((at, start));
            }
            at = at.max(end);
        }
        if at < hi {
            gaps.push((at, hi));
        }
        let mut text = String::new();
        for (start, end) in gaps {
            let Some(bytes) = raw.get(start..end) else {
                continue;
            };
            for line in String::from_utf8_lossy(bytes).lines() {
                let trimmed = line.trim();
                let delimiter = trimmed
                    .strip_prefix("--")
                    .is_some_and(|rest| boundaries.iter().any(|b| rest.starts_with(b.as_str())));
                if !trimmed.is_empty() && !delimiter {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        if text.is_empty() {
            return;
        }
        if sniff::looks_binary(&text) {
            self.unscannable(what, "holds binary bytes outside its parts");
        } else {
            self.push(out, &normalize(&text));
        }
    }

    /// The text and HTML bodies of `msg` into `out`; `what` names the
    /// message in unscannable entries.
    fn bodies(&mut self, msg: &Message<'_>, what: &str, out: &mut String) {
        // mail-parser lists a text/plain part among the HTML bodies too (and
        // the other way round) when there is no alternative: scan each part once.
        let mut ids: Vec<u32> = msg
            .text_body
            .iter()
            .chain(msg.html_body.iter())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let Some(part) = msg.part(id) else { continue };
            // Inline images are listed among the bodies and the
            // attachments: they are read as attachments.
            if !matches!(part.body, PartType::Text(_) | PartType::Html(_)) {
                continue;
            }
            let ct = content_type_of(part);
            self.leaf(msg, part, &ct, None, &format!("{what} body"), out);
        }
    }

    /// The attachments of `msg` into `out` (and the headers of attached
    /// messages into `headers`), attached messages opened up to the depth
    /// limit. `path` is the position of `msg` ("" for the message itself,
    /// "2/" for its second attachment, ...).
    fn attachments(
        &mut self,
        msg: &Message<'_>,
        path: &str,
        depth: usize,
        out: &mut String,
        headers: &mut String,
    ) {
        for (i, part) in msg.attachments().enumerate() {
            let ct = part
                .content_type()
                .map(|c| {
                    format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")).to_ascii_lowercase()
                })
                .unwrap_or_else(|| "application/octet-stream".into());
            let name = part.attachment_name().map(str::to_string);
            let what = format!("attachment {path}{} ({})", i + 1, type_label(&ct));
            self.facts.attachments.push(Attachment {
                content_type: ct.clone(),
                name: name.clone(),
                size: part.len(),
                detected_type: sniff::detected_type(part.contents()),
            });
            if Instant::now() >= self.deadline {
                self.unscannable(&what, "not read before the scan deadline");
                continue;
            }
            // An attached message: parsed by mail-parser already, or (past
            // its own nesting limit of encoded messages, flagged as an
            // encoding problem) kept as decoded bytes, which we parse here:
            // our own depth limit decides. Bytes in which no header can be
            // found were not a message, or not decoded.
            let nested_raw = (ct == "message/rfc822" || ct == "message/global")
                .then(|| part.contents())
                .filter(|_| !part.is_message());
            let reparsed = nested_raw.and_then(|raw| MessageParser::default().parse(raw));
            if part.is_encoding_problem && !part.is_message() && reparsed.is_none() {
                self.unscannable(&what, "its transfer encoding is damaged");
                continue;
            }
            if let Some(nested) = part.message().or(reparsed.as_ref()) {
                if depth + 1 > self.limits.max_depth {
                    self.unscannable(
                        &what,
                        format_args!(
                            "attached messages nest deeper than {}",
                            self.limits.max_depth
                        ),
                    );
                    continue;
                }
                self.check_transfer_encoding(part, &what);
                self.push(out, &normalize(nested.subject().unwrap_or("")));
                self.part_headers(nested, &what, headers);
                // A message attached as it is (7bit) shares the buffer of
                // the message it is in, with offsets into it; a decoded
                // one has a buffer of its own.
                let range = if nested.raw_message.as_ptr() == msg.raw_message.as_ptr() {
                    part.raw_body_offset() as usize..part.raw_end_offset() as usize
                } else {
                    0..nested.raw_message.len()
                };
                self.outside_parts(nested, range, &what, out);
                self.bodies(nested, &what, out);
                let inner = format!("{path}{}/", i + 1);
                self.attachments(nested, &inner, depth + 1, out, headers);
                continue;
            }
            if nested_raw.is_some() {
                self.unscannable(&what, "the attached message cannot be parsed");
                continue;
            }
            self.leaf(msg, part, &ct, name.as_deref(), &what, out);
        }
    }

    /// A `Content-Transfer-Encoding` mail-parser does not decode leaves the
    /// part encoded: unscannable (what can be read is read all the same).
    fn check_transfer_encoding(&mut self, part: &MessagePart<'_>, what: &str) {
        let Some(value) = part.headers.iter().find_map(|h| {
            matches!(h.name, HeaderName::ContentTransferEncoding).then_some(&h.value)
        }) else {
            return;
        };
        let known = match value {
            HeaderValue::Text(t) => {
                KNOWN_TRANSFER_ENCODINGS.contains(&t.trim().to_ascii_lowercase().as_str())
            }
            HeaderValue::Empty => true,
            _ => false,
        };
        if !known {
            self.unscannable(what, "its transfer encoding is not known");
        }
    }

    /// One part that is not a container: read by what its bytes are.
    fn leaf(
        &mut self,
        msg: &Message<'_>,
        part: &MessagePart<'_>,
        ct: &str,
        name: Option<&str>,
        what: &str,
        out: &mut String,
    ) {
        self.check_transfer_encoding(part, what);
        if part.is_encoding_problem {
            // mail-parser kept the raw bytes: a text part is still read.
            self.unscannable(what, "its transfer encoding is damaged");
            if let PartType::Text(t) | PartType::Html(t) = &part.body {
                if !sniff::looks_binary(t) {
                    self.push(out, &normalize(t));
                }
            }
            return;
        }
        if ct == "message/partial" {
            self.unscannable(what, "a fragment of a message, which is not reassembled");
            return;
        }
        match &part.body {
            PartType::Text(t) | PartType::Html(t) => {
                // A document sent as text, recognised by its bytes before
                // any charset is applied (a PDF labelled UTF-16 is still a
                // PDF). A PDF header past the start counts only in bytes
                // that are not text: a letter may quote one.
                let raw = raw_bytes(msg, part);
                let bytes = raw.as_deref().unwrap_or(t.as_bytes());
                if let Some(kind) = Kind::sniff(bytes) {
                    let lead = bytes
                        .iter()
                        .position(|b| !b.is_ascii_whitespace())
                        .unwrap_or(0);
                    let quoted = kind == Kind::Pdf
                        && !bytes[lead..].starts_with(b"%PDF-")
                        && !sniff::looks_binary(&String::from_utf8_lossy(bytes));
                    // Not a document after all (text that names one):
                    // read as text too.
                    if !quoted && self.extract(kind, bytes, what, out) {
                        return;
                    }
                }
                // A charset mail-parser cannot decode (EBCDIC, UTF-32,
                // `unknown-8bit`) was read as UTF-8: what is not ASCII in
                // it may be anything.
                if let Some(charset) = part.content_type().and_then(|c| c.attribute("charset")) {
                    if !bytes.is_ascii() && !charset_known(charset) {
                        self.unscannable(what, "its charset is not known");
                    }
                }
                let ct = if part.is_text_html() { "text/html" } else { ct };
                // UTF-16 with a byte-order mark but no charset: mail-parser
                // read it as UTF-8.
                if t.contains('\0')
                    && (bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]))
                {
                    let text = sniff::decode_text(bytes);
                    self.text(Some(part), ct, &text, what, out);
                    return;
                }
                self.text(Some(part), ct, t, what, out);
            }
            PartType::Binary(data) | PartType::InlineBinary(data) => {
                if data.is_empty() {
                    return;
                }
                // A signature or key holds no text of its own; what only
                // claims to be one is read like any other part.
                if sniff::is_signature_type(ct) {
                    if let Some(text) = sniff::genuine_signature(data) {
                        self.push(out, &normalize(&text));
                        return;
                    }
                }
                self.bytes(Some(part), ct, name, data, what, out);
            }
            PartType::Message(_) | PartType::Multipart(_) => {}
        }
    }

    /// The text of a document; `false` (and unscannable) if it cannot be
    /// read.
    fn extract(&mut self, kind: Kind, data: &[u8], what: &str, out: &mut String) -> bool {
        let limits = Limits {
            max_inflated: self.limits.max_inflated,
            max_text: self.limits.max_text.min(self.text_left),
            deadline: self.deadline,
            depth: MAX_CONTAINER_DEPTH,
        };
        match kind.extract(data, &limits) {
            Ok(text) => {
                self.push(out, &normalize(&text));
                true
            }
            Err(super::extract::ExtractError::TooLarge(n))
                if n == limits.max_text && limits.max_text < self.limits.max_text =>
            {
                // Cut by what the message has left, not by the document's
                // own limit.
                if !self.over_budget {
                    self.over_budget = true;
                    self.facts.unscannable.push(message_text_limit(self.limits));
                }
                false
            }
            Err(e) => {
                self.unscannable(what, e);
                false
            }
        }
    }

    /// Text as a reader sees it: markup read through [`html`], folded
    /// lines unfolded, flowed lines joined. Binary bytes in a text part,
    /// and text formats whose markup is not read, are unscannable.
    /// Bytes that are not a text part (an attachment, a `data:` URI):
    /// a document through its extractor, text as text, anything else
    /// unscannable.
    fn bytes(
        &mut self,
        part: Option<&MessagePart<'_>>,
        ct: &str,
        name: Option<&str>,
        data: &[u8],
        what: &str,
        out: &mut String,
    ) {
        if let Some(kind) = Kind::of(ct, name, data) {
            self.extract(kind, data, what, out);
            return;
        }
        // Anything else by what it is, never by whether its bytes happen
        // to be UTF-8 (an uncompressed PDF is ASCII).
        if sniff::binary_format(data).is_none()
            && (is_text_like(ct) || sniff::is_signature_type(ct))
        {
            let text = sniff::decode_text(data);
            self.text(part, ct, &text, what, out);
        } else {
            self.unscannable(what, "its text is not extracted");
        }
    }

    /// Text as a reader sees it: markup read through [`html`], folded
    /// lines unfolded, flowed lines joined; then what the text carries in
    /// encoded form (percent-encoded URLs, `data:` URIs). Binary bytes in
    /// a text part, and text formats whose markup is not read, are
    /// unscannable.
    fn text(
        &mut self,
        part: Option<&MessagePart<'_>>,
        ct: &str,
        text: &str,
        what: &str,
        out: &mut String,
    ) {
        if sniff::looks_binary(text) {
            self.unscannable(what, "holds binary content, not text");
            return;
        }
        if has_uuencoded_block(text) {
            // Mail readers show a `begin 644 name` block as an attachment;
            // it is not decoded here.
            self.unscannable(what, "holds uuencoded content, which is not read");
        }
        if let Some(format) = sniff::unread_text_format(text) {
            self.unscannable(what, format_args!("holds {format}, which is not read"));
        }
        let read = if is_markup(ct) {
            html::to_text(text)
        } else if is_folded(ct) {
            normalize(&unfold(text))
        } else {
            let param = |n: &str| {
                part.and_then(|p| p.content_type())
                    .and_then(|c| c.attribute(n))
                    .map(str::to_ascii_lowercase)
            };
            if param("format").as_deref() == Some("flowed") {
                normalize(&unflow(text, param("delsp").as_deref() == Some("yes")))
            } else {
                normalize(text)
            }
        };
        self.push(out, &read);
        if let Some(decoded) = percent_decoded_lines(&read) {
            self.push(out, &normalize(&decoded));
        }
        if let Some(shown) = overridden_lines(text) {
            self.push(out, &normalize(&shown));
        }
        // `data:` URIs are read like attachments, one level deep (a URI
        // inside one is not opened again).
        if part.is_some() {
            for (mediatype, data) in data_uris(&read) {
                let mediatype = if mediatype.is_empty() {
                    "text/plain".to_string()
                } else {
                    mediatype
                };
                let what = format!("{what}, a data: URI ({})", type_label(&mediatype));
                self.bytes(None, &mediatype, None, &data, &what, out);
            }
        }
    }
}

/// The lines of `text` that hold a right-to-left override (U+202E), as a
/// reader sees them: the overridden run is shown reversed, so
/// `\u{202E}9876-54-321` reads as an SSN. Nested overrides and
/// embeddings are not modelled; the run ends at U+202C or the line's end.
fn overridden_lines(text: &str) -> Option<String> {
    if !text.contains('\u{202E}') {
        return None;
    }
    let mut out = String::new();
    for line in text.lines().filter(|l| l.contains('\u{202E}')) {
        let mut rest = line;
        while let Some(at) = rest.find('\u{202E}') {
            out.push_str(&rest[..at]);
            let run = &rest[at + '\u{202E}'.len_utf8()..];
            let end = run.find('\u{202C}').unwrap_or(run.len());
            out.extend(run[..end].chars().rev());
            rest = run.get(end + '\u{202C}'.len_utf8()..).unwrap_or("");
        }
        out.push_str(rest);
        out.push('\n');
    }
    Some(out)
}

/// The lines of `text` that hold percent-encoded bytes (`%2D`), decoded:
/// a URL can carry a number the detectors would not see encoded.
fn percent_decoded_lines(text: &str) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = String::new();
    for line in text.lines() {
        let b = line.as_bytes();
        if !b
            .windows(3)
            .any(|w| w[0] == b'%' && hex(w[1]).is_some() && hex(w[2]).is_some())
        {
            continue;
        }
        let mut bytes = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match (
                b[i],
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => {
                    bytes.push(h << 4 | l);
                    i += 3;
                }
                (c, _, _) => {
                    bytes.push(c);
                    i += 1;
                }
            }
        }
        out.push_str(&String::from_utf8_lossy(&bytes));
        out.push('\n');
    }
    (!out.is_empty()).then_some(out)
}

/// The `data:` URIs in `text` (RFC 2397): media type (lowercased) and
/// decoded bytes (base64 or percent-encoded). One that cannot be decoded
/// is kept as its encoded bytes, which then read as text.
fn data_uris(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    // The scheme is case-insensitive; ASCII lowercasing keeps offsets.
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower.get(from..).and_then(|r| r.find("data:")) {
        let start = from + at + 5;
        from = start;
        let after = &text[start..];
        // The media type and parameters end at the comma; a URI's header
        // is short and has no white space or quotes.
        let Some(comma) = after
            .bytes()
            .take(256)
            .position(|b| {
                b == b',' || b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'<' | b'>')
            })
            .filter(|&i| after.as_bytes()[i] == b',')
        else {
            continue;
        };
        let header = after[..comma].to_ascii_lowercase();
        let body = &after[comma + 1..];
        let (mediatype, base64) = match header.strip_suffix(";base64") {
            Some(m) => (m, true),
            None => (header.as_str(), false),
        };
        // Base64 may be wrapped over lines; percent-encoded data ends at
        // white space.
        let end = body
            .bytes()
            .position(|b| {
                if base64 {
                    !(b.is_ascii_alphanumeric()
                        || b.is_ascii_whitespace()
                        || matches!(b, b'+' | b'/' | b'='))
                } else {
                    b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'<' | b'>' | b')')
                }
            })
            .unwrap_or(body.len());
        let payload = body[..end].trim_end();
        from = start + comma + 1 + end;
        let mediatype = mediatype.split(';').next().unwrap_or("").trim().to_string();
        // Percent-encoded text is read with the text's other
        // percent-encoded lines (see `percent_decoded_lines`).
        if !base64 && (mediatype.is_empty() || is_text_like(&mediatype)) {
            continue;
        }
        let data = if base64 {
            base64_decode(payload.as_bytes()).unwrap_or_else(|| payload.as_bytes().to_vec())
        } else {
            percent_decoded_lines(payload)
                .map(|d| d.trim_end_matches('\n').as_bytes().to_vec())
                .unwrap_or_else(|| payload.as_bytes().to_vec())
        };
        if !data.is_empty() {
            found.push((mediatype, data));
        }
    }
    found
}

/// Whether `text` holds a uuencoded block: a `begin <mode> <name>` line
/// followed by a line of uuencoded data (the length character, then
/// characters from `` ` `` to `_` only).
fn has_uuencoded_block(text: &str) -> bool {
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("begin-base64 ") {
            return true;
        }
        let Some(rest) = line.strip_prefix("begin ") else {
            continue;
        };
        let mut words = rest.splitn(2, ' ');
        let mode_ok = words.next().is_some_and(|m| {
            (3..=4).contains(&m.len()) && m.bytes().all(|b| (b'0'..=b'7').contains(&b))
        });
        let named = words.next().is_some_and(|n| !n.trim().is_empty());
        let data = lines.clone().next().is_some_and(uuencoded_line);
        if mode_ok && named && data {
            return true;
        }
    }
    false
}

/// A line of uuencoded data: a length character (` ` to `` ` ``) and four
/// characters per three bytes it announces (some encoders drop trailing
/// padding, or add a check character).
fn uuencoded_line(l: &str) -> bool {
    let b = l.as_bytes();
    let Some((&len, rest)) = b.split_first() else {
        return false;
    };
    if !(b' '..=b'`').contains(&len) || !rest.iter().all(|c| (b' '..=b'`').contains(c)) {
        return false;
    }
    let n = usize::from((len - b' ') & 63);
    let want = n.div_ceil(3) * 4;
    n > 0 && (want.saturating_sub(2)..=want + 1).contains(&rest.len())
}

/// A media type as decisions and audit rows may show it: the sender
/// chooses the label, which could carry a name or a number, so only
/// common types are named; others by their top-level type alone.
fn type_label(ct: &str) -> String {
    const KNOWN: &[&str] = &[
        "application/pdf",
        "application/octet-stream",
        "application/zip",
        "application/gzip",
        "application/msword",
        "application/rtf",
        "application/postscript",
        "application/pkcs7-mime",
        "application/pkcs7-signature",
        "application/pgp-encrypted",
        "application/pgp-signature",
        "application/pgp-keys",
        "application/ms-tnef",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/vnd.oasis.opendocument.presentation",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/tiff",
        "image/bmp",
        "image/svg+xml",
        "image/webp",
        "image/heic",
        "text/plain",
        "text/html",
        "text/csv",
        "text/calendar",
        "text/vcard",
        "text/rtf",
        "text/xml",
        "message/rfc822",
        "message/partial",
        "message/global",
        "audio/mpeg",
        "video/mp4",
    ];
    const TOP: &[&str] = &[
        "application",
        "audio",
        "font",
        "image",
        "message",
        "model",
        "multipart",
        "text",
        "video",
    ];
    let ct = ct.trim().to_ascii_lowercase();
    if KNOWN.contains(&ct.as_str()) {
        return ct;
    }
    match ct.split_once('/') {
        Some((top, _)) if TOP.contains(&top) => format!("{top}/other"),
        _ => "other".into(),
    }
}

/// Whether a multipart boundary appears where RFC 2046 does not allow a
/// delimiter (inside a line), or a delimiter follows the closing one: MIME
/// parsers then disagree on where parts end (mail-parser ends a part at a
/// boundary anywhere in a line), so content a reader shows may be read as
/// something else here.
fn misplaced_delimiter(raw: &[u8], boundaries: &[String]) -> Option<&'static str> {
    let mut distinct: Vec<&str> = boundaries.iter().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    // Each boundary costs one linear pass: a message declaring more than
    // any real one does is not checked boundary by boundary.
    if distinct.len() > MAX_BOUNDARIES {
        return Some("declares too many multipart boundaries");
    }
    for b in distinct {
        let needle = format!("--{b}");
        let needle = needle.as_bytes();
        if needle.len() < 3 {
            continue;
        }
        let mut closed = false;
        for i in memchr::memmem::find_iter(raw, needle) {
            let line_start = i == 0 || raw.get(i - 1) == Some(&b'\n');
            if !line_start {
                return Some("has a multipart boundary inside a line");
            }
            if closed {
                return Some("has a multipart delimiter after its closing one");
            }
            if raw
                .get(i + needle.len()..)
                .is_some_and(|a| a.starts_with(b"--"))
            {
                closed = true;
            }
        }
    }
    None
}

/// Distinct multipart boundaries a message may declare.
const MAX_BOUNDARIES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_from_a_multipart_message() {
        let raw = b"From: a@x.test\r\nSubject: =?utf-8?q?Lab_results_=5Bsecure=5D?=\r\nX-Priority: 1\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>Patient <b>DOB</b> 01/02/1960</p>\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b\r\nContent-Type: text/csv; name=list.csv\r\nContent-Disposition: attachment; filename=list.csv\r\n\r\nname,ssn\r\nx,123-45-6789\r\n--b--\r\n";
        let f = MessageFacts::parse(raw, false);
        assert_eq!(f.subject, "Lab results [secure]");
        assert_eq!(f.headers["x-priority"], vec!["1"]);
        assert!(f.body_text.contains("Patient") && f.body_text.contains("01/02/1960"));
        assert!(!f.body_text.contains("<b>"));
        assert_eq!(f.attachments.len(), 2);
        assert_eq!(f.attachments[0].content_type, "application/pdf");
        assert_eq!(f.attachments[0].name.as_deref(), Some("report.pdf"));
        assert_eq!(f.attachments[0].detected_type, Some("application/pdf"));
        assert_eq!(f.attachments[1].detected_type, None);
        assert!(f.attachment_text.contains("123-45-6789"));
    }

    /// RFC 2046: a delimiter starts a line. A boundary inside a line (where
    /// mail-parser ends the part, and Python's `email` and mail readers do
    /// not) or a delimiter after the closing one: parsers disagree on the
    /// parts, so the message is unscannable, wherever the boundary sits.
    #[test]
    fn a_boundary_where_parsers_disagree_is_unscannable() {
        let pdf = fixtures::base64_mime(&fixtures::pdf("Patient SSN 123-45-6789", None));
        let attachment = format!(
            "--zz\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{pdf}\r\n--zz--\r\n"
        );
        let head = "From: a@x.test\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\n";
        for text in [
            "See attached --zz--",
            "See attached --zz",
            "--zz-- at the start is a delimiter, this is text: x--zz",
            "Quoted=\r\n-printable --zz--",
        ] {
            let raw = format!("{head}{text}\r\n{attachment}");
            let f = MessageFacts::parse(raw.as_bytes(), false);
            assert!(
                !f.unscannable.is_empty() || ssns(&f) > 0,
                "{text:?}: neither seen nor unscannable"
            );
            assert!(!f.unscannable.is_empty(), "{text:?}");
        }
        // Past the number of boundaries any real message declares.
        let many: Vec<String> = (0..=MAX_BOUNDARIES).map(|i| format!("b{i}")).collect();
        assert!(misplaced_delimiter(b"text", &many).is_some());
        assert!(misplaced_delimiter(b"text", &many[..MAX_BOUNDARIES]).is_none());
        // A delimiter after the closing one.
        let raw = format!("{head}hello\r\n--zz--\r\n{attachment}");
        assert!(
            !MessageFacts::parse(raw.as_bytes(), false)
                .unscannable
                .is_empty()
        );
        // The well-formed message is read, and is not unscannable.
        let raw = format!("{head}hello\r\n{attachment}");
        let f = MessageFacts::parse(raw.as_bytes(), false);
        assert!(f.unscannable.is_empty(), "{:?}", f.unscannable);
        assert_eq!(ssns(&f), 1);
    }

    /// A uuencoded block in a body (readers show it as an attachment) is
    /// unscannable; prose that says "begin" is not.
    #[test]
    fn uuencoded_blocks_in_a_body_are_unscannable() {
        let uu = "Results attached.\r\n\r\nbegin 644 labs.txt\r\nM4&%T:65N=\"!34TX@,3(S+30U+38W.#DL($1/0B`P-\"\\Q,B\\Q.38Q(&]K(2$A\r\n`\r\nend\r\n";
        let raw = format!("From: a@x.test\r\nSubject: s\r\n\r\n{uu}");
        let f = MessageFacts::parse(raw.as_bytes(), false);
        assert!(
            f.unscannable.iter().any(|u| u.contains("uuencoded")),
            "{:?}",
            f.unscannable
        );
        // A short block (an SSN alone: 11 bytes, length character `+`).
        let short =
            "From: a@x.test\r\nSubject: s\r\n\r\nbegin 644 x\r\n+,3(S+30U+38W.#D`\r\n`\r\nend\r\n";
        assert!(
            MessageFacts::parse(short.as_bytes(), false)
                .unscannable
                .iter()
                .any(|u| u.contains("uuencoded"))
        );
        let prose = "From: a@x.test\r\nSubject: s\r\n\r\nbegin 10 minutes early\r\nMonday\r\n";
        assert!(
            MessageFacts::parse(prose.as_bytes(), false)
                .unscannable
                .is_empty()
        );
    }

    /// Sender-chosen type labels never reach decisions and audit rows.
    #[test]
    fn unscannable_entries_name_only_common_types() {
        assert_eq!(type_label("Application/PDF"), "application/pdf");
        assert_eq!(type_label("jane-roe-dob-1961-03-14/x"), "other");
        assert_eq!(type_label("image/ssn-123-45-6789"), "image/other");
        let raw = "From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: image/roe-123-45-6789\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b--\r\n";
        let f = MessageFacts::parse(raw.as_bytes(), false);
        assert!(!f.unscannable.is_empty());
        assert!(
            f.unscannable
                .iter()
                .all(|u| !u.contains("roe") && !u.contains("6789")),
            "{:?}",
            f.unscannable
        );
    }

    /// The Subject is read as a reader sees it (full-width digits,
    /// invisible characters), and every copy of it, not only the last.
    #[test]
    fn every_subject_is_scanned_as_a_reader_sees_it() {
        for subject in [
            "Subject: =?utf-8?b?U1NOIO+8ke+8ku+8ky3vvJTvvJUt77yW77yX77yY77yZ?=\r\n",
            "Subject: SSN 123-4\u{200b}5-6789\r\n",
            "Subject: SSN 123-45-6789\r\nSubject: hi\r\n",
        ] {
            let raw = format!("From: a@x.test\r\n{subject}\r\nhello\r\n");
            let f = MessageFacts::parse(raw.as_bytes(), false);
            assert_eq!(ssns(&f), 1, "{subject:?}: {:?}", f.subject_text);
        }
    }

    /// Multi-byte charsets are decoded, not read as lossy UTF-8: full-width
    /// digits in ISO-2022-JP (all-ASCII bytes on the wire) and Shift_JIS.
    #[test]
    fn multi_byte_charsets_are_decoded() {
        // "SSN １２３－４５－６７８９" in ISO-2022-JP and in Shift_JIS.
        let jis = b"SSN \x1b$B#1#2#3!]#4#5!]#6#7#8#9\x1b(B\r\n";
        let sjis = b"SSN \x82\x50\x82\x51\x82\x52\x81\x7c\x82\x53\x82\x54\x81\x7c\x82\x55\x82\x56\x82\x57\x82\x58\r\n";
        for (charset, body) in [("iso-2022-jp", &jis[..]), ("shift_jis", &sjis[..])] {
            let mut raw = format!(
                "From: a@x.test\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            )
            .into_bytes();
            raw.extend_from_slice(body);
            let f = MessageFacts::parse(&raw, false);
            assert_eq!(
                ssns(&f),
                1,
                "{charset}: {:?} {:?}",
                f.body_text,
                f.unscannable
            );
        }
    }

    use crate::policy::fixtures;

    fn ssns(f: &MessageFacts) -> usize {
        f.detect(&Detectors::new(), &[Detector::UsSsn])
            .iter()
            .map(|(_, n)| n)
            .sum()
    }

    /// `inner` attached as a message/rfc822 part of a multipart/mixed.
    fn attach_message(inner: &[u8], encoding: &str) -> Vec<u8> {
        let body = if encoding == "base64" {
            fixtures::base64_mime(inner)
        } else {
            format!("{}\r\n", String::from_utf8_lossy(inner))
        };
        format!(
            "From: a@clinic.example\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"outer{0}\"\r\n\r\n--outer{0}\r\n\
             Content-Type: text/plain\r\n\r\nsee attached\r\n--outer{0}\r\n\
             Content-Type: message/rfc822\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n\
             {body}--outer{0}--\r\n",
            inner.len()
        )
        .into_bytes()
    }

    #[test]
    fn ssn_in_an_attached_message_is_found() {
        let inner = b"From: lab@x.example\r\nSubject: result\r\n\r\nSSN 123-45-6789\r\n";
        for encoding in ["7bit", "base64"] {
            let f = MessageFacts::parse(&attach_message(inner, encoding), false);
            assert_eq!(ssns(&f), 1, "{encoding}: {:?}", f.attachment_text);
            assert_eq!(f.unscannable, Vec::<String>::new(), "{encoding}");
            assert_eq!(f.attachments[0].content_type, "message/rfc822");
        }
        // The attached message's own PDF attachment, inside a multipart.
        let pdf = fixtures::pdf("SSN 123-45-6789", None);
        let inner = fixtures::with_attachment("hello", "application/pdf", "r.pdf", &pdf);
        let f = MessageFacts::parse(&attach_message(&inner, "base64"), false);
        assert_eq!(ssns(&f), 1, "{:?} {:?}", f.attachment_text, f.unscannable);
        assert_eq!(f.attachments.len(), 2, "{:?}", f.attachments);
    }

    #[test]
    fn attached_messages_nest_only_to_the_depth_limit() {
        let mut msg = b"From: lab@x.example\r\nSubject: deep\r\n\r\nSSN 123-45-6789\r\n".to_vec();
        for _ in 0..ScanLimits::default().max_depth {
            msg = attach_message(&msg, "base64");
        }
        let f = MessageFacts::parse(&msg, false);
        assert_eq!(ssns(&f), 1, "{:?}", f.unscannable);
        assert!(f.unscannable.is_empty(), "{:?}", f.unscannable);
        let f = MessageFacts::parse(&attach_message(&msg, "base64"), false);
        assert_eq!(
            f.unscannable,
            vec!["attachment 1/1/1/1/1/1 (message/rfc822): attached messages nest deeper than 5"]
        );
    }

    #[test]
    fn pdf_and_docx_attachments_are_read_and_unreadable_ones_are_listed() {
        let pdf = fixtures::pdf_object_streams("Lab report. SSN 123-45-6789");
        let f = MessageFacts::parse(
            &fixtures::with_attachment("see attached", "application/pdf", "Jane Roe.pdf", &pdf),
            false,
        );
        assert_eq!(ssns(&f), 1);
        assert!(f.unscannable.is_empty(), "{:?}", f.unscannable);
        // Declared as octet-stream, recognised by its bytes.
        let f = MessageFacts::parse(
            &fixtures::with_attachment("x", "application/octet-stream", "scan", &pdf),
            false,
        );
        assert_eq!(ssns(&f), 1);

        let docx = fixtures::docx(
            "<w:p><w:r><w:t>SSN 123-</w:t></w:r><w:r><w:t>45-6789</w:t></w:r></w:p>",
            &[],
        );
        let f = MessageFacts::parse(
            &fixtures::with_attachment(
                "letter",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "letter.docx",
                &docx,
            ),
            false,
        );
        assert_eq!(ssns(&f), 1);
        assert!(f.unscannable.is_empty(), "{:?}", f.unscannable);

        let encrypted = fixtures::qpdf(&pdf, &["--encrypt", "u", "o", "256", "--"]);
        let f = MessageFacts::parse(
            &fixtures::with_attachment("x", "application/pdf", "Jane Roe.pdf", &encrypted),
            false,
        );
        assert_eq!(
            f.unscannable,
            vec!["attachment 1 (application/pdf): encrypted"]
        );
        let f = MessageFacts::parse(
            &fixtures::with_attachment(
                "x",
                "application/octet-stream",
                "b.docx",
                &fixtures::docx_bomb(64),
            ),
            false,
        );
        assert_eq!(
            f.unscannable,
            vec![
                "attachment 1 (application/octet-stream): expands beyond the scan limit of 33554432 bytes"
            ]
        );
        let f = MessageFacts::parse(
            &fixtures::with_attachment("x", "image/png", "xray.png", b"\x89PNG\r\n\x1a\nrest"),
            false,
        );
        assert_eq!(
            f.unscannable,
            vec!["attachment 1 (image/png): its text is not extracted"]
        );
        // A signature holds no text of its own.
        let f = MessageFacts::parse(
            &fixtures::with_attachment(
                "x",
                "application/pgp-signature",
                "sig.asc",
                b"-----BEGIN PGP SIGNATURE-----",
            ),
            false,
        );
        assert!(f.unscannable.is_empty(), "{:?}", f.unscannable);
    }

    #[test]
    fn transfer_encodings_are_decoded_before_scanning() {
        let qp = b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSSN 123=2D45=\r\n=2D6789\r\n";
        assert_eq!(ssns(&MessageFacts::parse(qp, false)), 1);
        let b64 = fixtures::with_attachment("x", "text/plain", "notes.txt", b"SSN 123-45-6789");
        assert_eq!(ssns(&MessageFacts::parse(&b64, false)), 1);
        let html = format!(
            "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
            fixtures::base64_mime(b"<p>SSN 123-<span>45</span>-6789</p>")
        );
        assert_eq!(ssns(&MessageFacts::parse(html.as_bytes(), false)), 1);
    }

    #[test]
    fn html_markup_inside_a_number_does_not_hide_it() {
        for part in ["text/html", "text/html; charset=utf-8"] {
            let raw = format!(
                "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n\
                 --a\r\nContent-Type: text/plain\r\n\r\nsee the HTML\r\n--a\r\nContent-Type: {part}\r\n\r\n\
                 <p>123-<span style=\"x\">45</span>-6789</p>\r\n--a--\r\n"
            );
            assert_eq!(
                ssns(&MessageFacts::parse(raw.as_bytes(), false)),
                1,
                "{part}"
            );
        }
    }

    #[test]
    fn reports_and_uncompressed_pdfs_are_read_by_what_they_are() {
        // A DSN as sealgate writes it: every part is text.
        let dsn = b"From: MAILER-DAEMON@gw.example\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/report; report-type=delivery-status; boundary=\"r\"\r\n\r\n\
            --r\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n\
            --r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; gw.example\r\n\r\n\
            Final-Recipient: rfc822; b@x.example\r\nAction: failed\r\nStatus: 5.7.1\r\n\r\n\
            --r\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <1@x>\r\n\r\n--r--\r\n";
        let f = MessageFacts::parse(dsn, false);
        assert!(f.unscannable.is_empty(), "{:?}", f.unscannable);
        // An uncompressed PDF is ASCII, but read as a PDF: text in a hex
        // string is found, which raw text would miss.
        let pdf = fixtures::pdf(
            "",
            Some("BT /F1 12 Tf 72 720 Td <3132332d34352d36373839> Tj ET"),
        );
        let mut pdf = fixtures::qpdf(&pdf, &["--stream-data=uncompress"]);
        // Only the binary-marker comment is not ASCII; same length keeps
        // the offsets.
        for b in pdf.iter_mut().filter(|b| !b.is_ascii()) {
            *b = b'A';
        }
        assert!(std::str::from_utf8(&pdf).is_ok(), "the PDF is plain ASCII");
        let f = MessageFacts::parse(
            &fixtures::with_attachment("x", "application/pdf", "r.pdf", &pdf),
            false,
        );
        assert_eq!(ssns(&f), 1, "{:?} {:?}", f.attachment_text, f.unscannable);
    }

    #[test]
    fn a_damaged_transfer_encoding_is_unscannable() {
        let raw = b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n%%%% not base64 %%%%\r\n--b--\r\n";
        let f = MessageFacts::parse(raw, false);
        assert_eq!(f.unscannable.len(), 1, "{:?}", f.unscannable);
        assert!(
            f.unscannable[0].starts_with("attachment 1 (application/pdf): "),
            "{:?}",
            f.unscannable
        );
    }

    #[test]
    fn a_message_cut_at_the_scan_limit_is_unscannable() {
        let f = MessageFacts::parse(b"Subject: x\r\n\r\nhello\r\n", true);
        assert_eq!(
            f.unscannable,
            vec!["message: longer than max_scan_size, only its start was scanned"]
        );
        assert!(
            MessageFacts::parse(b"Subject: x\r\n\r\nhello\r\n", false)
                .unscannable
                .is_empty()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scan_past_its_deadline_is_unscannable_and_keeps_the_headers() {
        let pdf = fixtures::pdf("SSN 123-45-6789", None);
        let raw = fixtures::with_attachment("x", "application/pdf", "r.pdf", &pdf);
        let f = MessageFacts::scan(raw.clone(), false, ScanLimits::default()).await;
        assert_eq!(ssns(&f), 1);
        assert!(f.unscannable.is_empty(), "{:?}", f.unscannable);
        let limits = ScanLimits {
            timeout: Duration::ZERO,
            ..ScanLimits::default()
        };
        let f = MessageFacts::scan(raw, false, limits).await;
        assert_eq!(f.subject, "results");
        assert!(!f.unscannable.is_empty());
        assert!(
            f.unscannable
                .iter()
                .all(|u| u.contains("deadline") || u.contains("in time")),
            "{:?}",
            f.unscannable
        );
    }

    /// A multipart/mixed message of `parts` (each its headers, a blank
    /// line and its body, as written).
    fn mixed(parts: &[String]) -> Vec<u8> {
        let mut m = String::from(
            "From: a@clinic.example\r\nTo: b@x.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n",
        );
        for p in parts {
            m.push_str("--zz\r\n");
            m.push_str(p);
            m.push_str("\r\n");
        }
        m.push_str("--zz--\r\n");
        m.into_bytes()
    }

    /// A part of type `ct` whose body is `data` in base64.
    fn b64_part(ct: &str, extra: &str, data: &[u8]) -> String {
        format!(
            "Content-Type: {ct}\r\n{extra}Content-Transfer-Encoding: base64\r\n\r\n{}",
            fixtures::base64_mime(data)
        )
    }

    /// `part` in each wrapper: the message itself (its only part), a
    /// multipart body part, an attachment after a text body, and the
    /// same inside an attached message (7bit and base64).
    fn wrapped(part: &str) -> Vec<(&'static str, Vec<u8>)> {
        let single =
            format!("From: a@clinic.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n{part}\r\n");
        let first = mixed(&[part.to_string()]);
        let after = mixed(&[
            "Content-Type: text/plain\r\n\r\nsee attached".into(),
            part.to_string(),
        ]);
        vec![
            ("the message itself", single.into_bytes()),
            ("the first part", first),
            ("an attachment", after.clone()),
            ("in an attached message", attach_message(&after, "7bit")),
            (
                "in a base64 attached message",
                attach_message(&after, "base64"),
            ),
            (
                "in a message attached twice",
                attach_message(&attach_message(&after, "base64"), "7bit"),
            ),
        ]
    }

    fn assert_ssn_everywhere(what: &str, part: &str) {
        for (wrapper, raw) in wrapped(part) {
            let f = MessageFacts::parse(&raw, false);
            assert_eq!(
                ssns(&f),
                1,
                "{what} as {wrapper}: {:?} {:?} {:?}",
                f.body_text,
                f.attachment_text,
                f.unscannable
            );
            assert!(
                f.unscannable.is_empty(),
                "{what} as {wrapper}: {:?}",
                f.unscannable
            );
        }
    }

    fn assert_unscannable_everywhere(what: &str, part: &str) {
        for (wrapper, raw) in wrapped(part) {
            let f = MessageFacts::parse(&raw, false);
            assert!(
                !f.unscannable.is_empty(),
                "{what} as {wrapper}: {:?}",
                f.body_text
            );
        }
    }

    /// From review: a part declared a signature or key was skipped
    /// unread, so a text file labelled `application/pgp-signature` hid an
    /// SSN. Only a real signature or key is skipped.
    #[test]
    fn parts_that_only_claim_to_be_signatures_are_read() {
        for ct in [
            "application/pgp-signature",
            "application/pkcs7-signature",
            "application/x-pkcs7-signature",
            "application/pgp-keys",
            "application/pkix-cert",
        ] {
            assert_ssn_everywhere(ct, &b64_part(ct, "", b"SSN 123-45-6789\r\n"));
            assert_ssn_everywhere(
                ct,
                &format!("Content-Type: {ct}\r\n\r\nnotes: SSN 123-45-6789"),
            );
            let pdf = fixtures::pdf("SSN 123-45-6789", None);
            assert_ssn_everywhere(ct, &b64_part(ct, "", &pdf));
            assert_unscannable_everywhere(ct, &b64_part(ct, "", b"\x00\x01\x02\x03\x04binary"));
        }
        // A real one is skipped: not text, not unscannable.
        let sig = "-----BEGIN PGP SIGNATURE-----\r\n\r\niAwEABYKAAYFAmFiY2Q=\r\n=AbCd\r\n-----END PGP SIGNATURE-----";
        for (wrapper, raw) in wrapped(&format!(
            "Content-Type: application/pgp-signature\r\n\r\n{sig}"
        )) {
            let f = MessageFacts::parse(&raw, false);
            assert!(f.unscannable.is_empty(), "{wrapper}: {:?}", f.unscannable);
            assert_eq!(ssns(&f), 0);
        }
        // A CMS signed message with its content inside, labelled a
        // signature: content (which is not read), not a signature.
        let opaque = hex::decode("303606092a864886f70d010702a02930270201013100301e06092a864886f70d010701a011040f53534e203132332d34352d363738393100").unwrap();
        assert_unscannable_everywhere(
            "opaque signed data",
            &b64_part("application/pkcs7-signature", "", &opaque),
        );
        // Its armor headers are read.
        let sig = sig.replacen("\r\n\r\n", "\r\nComment: SSN 123-45-6789\r\n\r\n", 1);
        assert_ssn_everywhere(
            "an armor comment",
            &format!("Content-Type: application/pgp-signature\r\n\r\n{sig}"),
        );
    }

    /// From review: text parts and `application/octet-stream` were not
    /// sniffed, so a PDF or zip sent as `text/plain` was read as garbled
    /// text. Documents are recognised by their bytes, in every wrapper.
    #[test]
    fn documents_are_read_whatever_their_label() {
        let pdf = fixtures::pdf_object_streams("SSN 123-45-6789");
        let zip = fixtures::zip(&[("notes.txt", b"SSN 123-45-6789")]);
        let docx = fixtures::docx("<w:p><w:r><w:t>SSN 123-45-6789</w:t></w:r></w:p>", &[]);
        let gz = fixtures::python(
            "import gzip,sys\nsys.stdout.buffer.write(gzip.compress(b'SSN 123-45-6789'))",
            &[],
        );
        for (doc, data) in [("PDF", &pdf), ("zip", &zip), ("DOCX", &docx), ("gzip", &gz)] {
            for (ct, extra) in [
                ("text/plain", ""),
                ("text/plain; charset=utf-8", ""),
                ("text/plain; charset=iso-8859-1", ""),
                ("text/html", ""),
                (
                    "text/csv; name=\"list.csv\"",
                    "Content-Disposition: attachment; filename=\"list.csv\"\r\n",
                ),
                ("application/octet-stream", ""),
                ("application/octet-stream; name=\"x.txt\"", ""),
                ("application/json", ""),
                ("image/png; name=\"xray.png\"", ""),
            ] {
                assert_ssn_everywhere(&format!("{doc} as {ct}"), &b64_part(ct, extra, data));
            }
        }
        // Declared as zip-based files.
        for ct in [
            "application/zip",
            "application/x-zip-compressed",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ] {
            assert_ssn_everywhere(ct, &b64_part(ct, "", &zip));
        }
    }

    #[test]
    fn unknown_binary_content_is_unscannable_in_every_wrapper() {
        for (ct, data) in [
            ("image/png", &b"\x89PNG\r\n\x1a\nrest"[..]),
            ("image/jpeg", b"\xff\xd8\xff\xe0JFIF"),
            ("application/octet-stream", b"\x00\x01\x02\x03\x04\x05"),
            (
                "application/octet-stream",
                b"SSN as text, but not a declared text",
            ),
            (
                "application/msword",
                b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1rest",
            ),
            ("application/x-7z-compressed", b"7z\xbc\xaf\x27\x1crest"),
            // Binary bytes in a text part, and text formats not read.
            ("text/plain", b"\x00\x01\x02\x03\x04\x05\x06\x07\x08"),
            (
                "text/plain",
                b"hi \x01\x02\x03\x04\x05\x06 \x78\x9c\x01\x02",
            ),
            ("text/rtf", b"{\\rtf1 SSN 123-{\\b 45}-6789}"),
            (
                "message/partial; id=\"x\"; number=1; total=2",
                b"Subject: part\r\n\r\nSSN",
            ),
        ] {
            assert_unscannable_everywhere(ct, &b64_part(ct, "", data));
        }
        // The same bytes as 7bit text/plain: still binary.
        assert_unscannable_everywhere(
            "7bit binary",
            "Content-Type: text/plain\r\n\r\nab\x01\x02\x03\x04\x05cd",
        );
    }

    /// From review: file names and part headers were not scanned.
    #[test]
    fn file_names_and_part_headers_are_scanned() {
        for (what, headers) in [
            (
                "filename",
                "Content-Disposition: attachment; filename=\"SSN 123-45-6789.txt\"\r\n",
            ),
            (
                "name",
                "Content-Type: text/plain; name=\"SSN 123-45-6789.txt\"\r\n",
            ),
            (
                "RFC 2231 filename",
                "Content-Disposition: attachment; filename*=utf-8''SSN%20123-45-6789.txt\r\n",
            ),
            (
                "RFC 2231 continuation split in the number",
                "Content-Disposition: attachment;\r\n filename*0=\"SSN 123-4\";\r\n filename*1=\"5-6789.txt\"\r\n",
            ),
            (
                "RFC 2047 name",
                "Content-Type: text/plain; name=\"=?utf-8?q?SSN_123-45-6789.txt?=\"\r\n",
            ),
            (
                "Content-Description",
                "Content-Description: Jane Roe SSN 123-45-6789\r\n",
            ),
            (
                "encoded Content-Description",
                "Content-Description: =?utf-8?b?U1NOIDEyMy00NS02Nzg5?=\r\n",
            ),
            ("an unknown part header", "X-Patient: 123-45-6789\r\n"),
        ] {
            let ct = if headers.starts_with("Content-Type") {
                ""
            } else {
                "Content-Type: text/plain\r\n"
            };
            assert_ssn_everywhere(what, &format!("{ct}{headers}\r\nhello"));
        }
        // The message's own headers a person writes, encoded or not.
        for header in [
            "X-Patient-SSN: 123-45-6789",
            "Comments: SSN 123-45-6789",
            "Keywords: labs, 123-45-6789",
            "To: \"Jane 123-45-6789\" <b@x.example>",
            "To: =?utf-8?q?Jane_123-45-6789?= <b@x.example>",
            "X-Note: =?utf-8?b?U1NOIDEyMy00NS02Nzg5?=",
            "X-Folded: SSN\r\n 123-45-6789",
        ] {
            let raw = format!("From: a@clinic.example\r\n{header}\r\nSubject: x\r\n\r\nhello\r\n");
            let f = MessageFacts::parse(raw.as_bytes(), false);
            assert_eq!(ssns(&f), 1, "{header}: {:?}", f.header_text);
            // And in an attached message.
            let f = MessageFacts::parse(&attach_message(raw.as_bytes(), "base64"), false);
            assert_eq!(ssns(&f), 1, "{header} attached: {:?}", f.header_text);
        }
        // The Subject once, and trace headers not at all.
        let raw = b"Subject: SSN 123-45-6789\r\nReceived: from x (1234567893.example)\r\nMessage-ID: <123-45-6789@x>\r\nContent-Type: multipart/mixed; boundary=\"123-45-6789\"\r\n\r\n--123-45-6789\r\n\r\nhi\r\n--123-45-6789--\r\n";
        let f = MessageFacts::parse(raw, false);
        assert_eq!(ssns(&f), 1, "{:?}", f.header_text);
        assert_eq!(f.detect(&Detectors::new(), &[Detector::Npi]), vec![]);
    }

    /// From review: a zip that was not a DOCX was unscannable at best;
    /// spreadsheets and slides were not read.
    #[test]
    fn archives_and_office_files_are_read() {
        let zip = fixtures::zip(&[("a/b/notes.txt", b"SSN 123-45-6789")]);
        assert_ssn_everywhere(
            "zip",
            &b64_part("application/zip; name=\"x.zip\"", "", &zip),
        );
        let named = fixtures::zip(&[("SSN 123-45-6789.txt", b"hello")]);
        assert_ssn_everywhere("a name in a zip", &b64_part("application/zip", "", &named));
        let xlsx = fixtures::zip(&[
            ("[Content_Types].xml", b"<Types/>"),
            ("xl/workbook.xml", b"<workbook/>"),
            (
                "xl/sharedStrings.xml",
                b"<sst><si><t>SSN 123-45-6789</t></si></sst>",
            ),
        ]);
        assert_ssn_everywhere(
            "xlsx",
            &b64_part(
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "",
                &xlsx,
            ),
        );
        let png = fixtures::zip(&[("scan.png", b"\x89PNG\r\n\x1a\nrest")]);
        assert_unscannable_everywhere("a zip of a picture", &b64_part("application/zip", "", &png));
    }

    /// From review: each part had its own text budget, so a thousand parts
    /// could each fill it. One budget for the message: past it, the rest
    /// is unscannable.
    #[test]
    fn one_text_budget_for_the_whole_message() {
        let limits = ScanLimits {
            max_message_text: 64 << 10,
            ..ScanLimits::default()
        };
        let text = "x".repeat(10 << 10);
        let parse = |raw: &[u8]| {
            MessageFacts::parse_with(raw, false, &limits, Instant::now() + limits.timeout)
        };
        let parts: Vec<String> = (0..5)
            .map(|_| format!("Content-Type: text/plain\r\n\r\n{text}"))
            .collect();
        let f = parse(&mixed(&parts));
        assert!(f.unscannable.is_empty(), "{:?}", f.unscannable);
        for n in [7, 100] {
            let parts: Vec<String> = (0..n)
                .map(|_| format!("Content-Type: text/plain\r\n\r\n{text}"))
                .collect();
            let f = parse(&mixed(&parts));
            assert_eq!(
                f.unscannable,
                vec!["message: holds more text than the scan limit of 65536 bytes"],
                "{n} parts"
            );
            let total = f.body_text.len() + f.attachment_text.len() + f.header_text.len();
            assert!(total <= 64 << 10, "{total}");
        }
        // Documents draw on the same budget.
        let docs: Vec<String> = (0..10)
            .map(|_| {
                b64_part(
                    "application/zip",
                    "",
                    &fixtures::zip(&[("a.txt", text.as_bytes())]),
                )
            })
            .collect();
        let f = parse(&mixed(&docs));
        assert_eq!(
            f.unscannable,
            vec!["message: holds more text than the scan limit of 65536 bytes"]
        );
        // A message that is not MIME at all, and one of header lines only.
        for raw in [
            "\r\n".to_string() + &"x".repeat(100 << 10),
            "x".repeat(100 << 10),
        ] {
            let f = parse(raw.as_bytes());
            assert!(f.body_text.len() + f.header_text.len() <= 64 << 10);
            assert_eq!(f.unscannable.len(), 1, "{:?}", f.unscannable);
        }
    }

    /// A line in the header section that is not a header field is dropped
    /// by mail-parser, but some readers show it: it is scanned, at the
    /// start, in the middle and at the end of the section, in every part.
    #[test]
    fn stray_lines_in_a_header_section_are_scanned() {
        for raw in [
            "SSN 123-45-6789\r\nSubject: x\r\n\r\nhello\r\n",
            "Subject: x\r\nSSN 123-45-6789\r\nTo: b@x.example\r\n\r\nhello\r\n",
            "Subject: x\r\nSSN 123-45-6789\r\n\r\nhello\r\n",
            "Subject: x\r\nSSN 123-45-6789\r\n",
            "Subject: x\r\nSSN 123-45-6789",
        ] {
            let f = MessageFacts::parse(raw.as_bytes(), false);
            assert_eq!(
                ssns(&f),
                1,
                "{raw:?}: {:?} {:?}",
                f.header_text,
                f.body_text
            );
        }
        assert_ssn_everywhere(
            "a stray line in a part's headers",
            "Content-Type: text/plain\r\nSSN 123-45-6789\r\n\r\nhello",
        );
    }

    #[test]
    fn charsets_and_transfer_encodings_do_not_hide_a_number() {
        let utf16le: Vec<u8> = "SSN 123-45-6789"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let utf16be: Vec<u8> = "SSN 123-45-6789"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        let bom = |b: &[u8], le: bool| {
            let mut v = if le {
                vec![0xff, 0xfe]
            } else {
                vec![0xfe, 0xff]
            };
            v.extend_from_slice(b);
            v
        };
        for (ct, data) in [
            ("text/plain; charset=utf-16", bom(&utf16le, true)),
            ("text/plain; charset=utf-16", bom(&utf16be, false)),
            ("text/plain; charset=utf-16le", utf16le.clone()),
            ("text/plain; charset=UTF-16BE", utf16be.clone()),
            // No charset, but a byte-order mark.
            ("text/plain", bom(&utf16le, true)),
            ("application/json", bom(&utf16be, false)),
            (
                "text/html; charset=utf-16",
                bom(
                    &"<p>SSN 123-<b>45</b>-6789</p>"
                        .encode_utf16()
                        .flat_map(u16::to_le_bytes)
                        .collect::<Vec<u8>>(),
                    true,
                ),
            ),
        ] {
            assert_ssn_everywhere(ct, &b64_part(ct, "", &data));
        }
        // A quoted-printable soft line break at every position of the
        // number, with CRLF and bare LF.
        let ssn = "123-45-6789";
        for at in 0..=ssn.len() {
            for nl in ["\r\n", "\n"] {
                let body = format!("SSN {}={nl}{}", &ssn[..at], &ssn[at..]);
                let part = format!(
                    "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{body}"
                );
                assert_ssn_everywhere(&format!("QP break at {at}"), &part);
            }
        }
        // format=flowed with delsp=yes: a number wrapped at a soft break.
        for at in 1..ssn.len() {
            let part = format!(
                "Content-Type: text/plain; format=flowed; delsp=yes\r\n\r\nSSN {} \r\n{}",
                &ssn[..at],
                &ssn[at..]
            );
            assert_ssn_everywhere(&format!("flowed break at {at}"), &part);
        }
        // iCalendar and vCard folding, at every position.
        for at in 1..ssn.len() {
            for ct in ["text/calendar", "text/vcard", "text/x-vcard"] {
                let part = format!(
                    "Content-Type: {ct}\r\n\r\nBEGIN:VEVENT\r\nDESCRIPTION:SSN {}\r\n {}\r\nEND:VEVENT",
                    &ssn[..at],
                    &ssn[at..]
                );
                assert_ssn_everywhere(&format!("{ct} folded at {at}"), &part);
            }
        }
        // An HTML attachment, and XML, read as a reader sees them.
        for ct in [
            "text/html",
            "application/xhtml+xml",
            "text/xml",
            "application/xml",
        ] {
            let part = b64_part(
                ct,
                "Content-Disposition: attachment; filename=\"r\"\r\n",
                b"<p>SSN 123-<span>45</span>-6789</p>",
            );
            assert_ssn_everywhere(ct, &part);
        }
    }

    #[test]
    fn unknown_transfer_encodings_are_unscannable() {
        for cte in ["x-uuencode", "uuencode", "base-64", "x-gzip64", "binhex"] {
            for ct in ["text/plain", "application/pdf", "message/rfc822"] {
                let part = format!(
                    "Content-Type: {ct}\r\nContent-Transfer-Encoding: {cte}\r\n\r\nbegin 644 x\r\nend\r\n"
                );
                assert_unscannable_everywhere(&format!("{ct} in {cte}"), &part);
            }
        }
        for cte in ["7bit", "8BIT", "binary", " Base64 ", "quoted-printable"] {
            let part = format!(
                "Content-Type: text/plain\r\nContent-Transfer-Encoding: {cte}\r\n\r\nhello"
            );
            for (wrapper, raw) in wrapped(&part) {
                let f = MessageFacts::parse(&raw, false);
                assert!(
                    f.unscannable.is_empty(),
                    "{cte} as {wrapper}: {:?}",
                    f.unscannable
                );
            }
        }
    }

    /// The preamble and epilogue of a multipart belong to no part: readers
    /// hide them, mail-parser skips them, but they travel in the clear.
    #[test]
    fn text_outside_the_parts_is_scanned() {
        let message = |preamble: &str, epilogue: &str, inner_epilogue: &str| {
            format!(
                "From: a@clinic.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n\
                 Content-Type: multipart/mixed; boundary=\"o\"\r\n\r\n{preamble}--o\r\n\
                 Content-Type: multipart/alternative; boundary=\"i\"\r\n\r\n--i\r\n\
                 Content-Type: text/plain\r\n\r\nhello\r\n--i--\r\n{inner_epilogue}--o\r\n\
                 Content-Type: text/plain\r\n\r\nsee\r\n--o--\r\n{epilogue}"
            )
            .into_bytes()
        };
        let ssn = "SSN 123-45-6789\r\n";
        for (what, raw) in [
            ("preamble", message(ssn, "", "")),
            ("epilogue", message("", ssn, "")),
            (
                "epilogue without a line break",
                message("", "SSN 123-45-6789", ""),
            ),
            ("inner epilogue", message("", "", ssn)),
        ] {
            for (wrapper, raw) in [
                ("the message", raw.clone()),
                ("attached 7bit", attach_message(&raw, "7bit")),
                ("attached base64", attach_message(&raw, "base64")),
            ] {
                let f = MessageFacts::parse(&raw, false);
                assert_eq!(
                    ssns(&f),
                    1,
                    "{what} in {wrapper}: {:?} {:?}",
                    f.body_text,
                    f.attachment_text
                );
                assert!(
                    f.unscannable.is_empty(),
                    "{what} in {wrapper}: {:?}",
                    f.unscannable
                );
            }
        }
        // Nothing outside the parts: nothing added.
        let f = MessageFacts::parse(&message("", "", ""), false);
        assert_eq!(f.body_text.trim(), "hello\nsee");
    }

    /// What a text carries encoded: a `data:` URI in HTML (a link the
    /// recipient opens, an inline document) and percent-encoded URLs.
    #[test]
    fn data_uris_and_percent_encoding_are_decoded() {
        let b64 = |d: &[u8]| fixtures::base64_mime(d).replace("\r\n", "");
        let pdf = fixtures::pdf("SSN 123-45-6789", None);
        for (what, html) in [
            (
                "a base64 text link",
                format!(
                    "<a href=\"data:text/plain;base64,{}\">notes</a>",
                    b64(b"SSN 123-45-6789")
                ),
            ),
            (
                "base64 wrapped over lines",
                format!(
                    "<a href=\"DATA:text/plain;charset=utf-8;base64,{}\r\n{}\">x</a>",
                    &b64(b"SSN 123-45-6789")[..8],
                    &b64(b"SSN 123-45-6789")[8..]
                ),
            ),
            (
                "a percent-encoded link",
                "<a href=\"data:,SSN%20123%2D45%2D6789\">x</a>".into(),
            ),
            (
                "a PDF",
                format!("<embed src=\"data:application/pdf;base64,{}\">", b64(&pdf)),
            ),
            (
                "a PDF without its type",
                format!("<embed src=\"data:;base64,{}\">", b64(&pdf)),
            ),
            (
                "a URL",
                "<a href=\"https://x.example/?ssn=123%2D45%2D6789\">x</a>".into(),
            ),
        ] {
            assert_ssn_everywhere(what, &format!("Content-Type: text/html\r\n\r\n{html}"));
        }
        // In plain text too.
        assert_ssn_everywhere(
            "a URL in plain text",
            "Content-Type: text/plain\r\n\r\nhttps://x.example/?ssn=123%2D45%2D6789",
        );
        // An inline image is unscannable, as an image attachment is.
        let png = b64(b"\x89PNG\r\n\x1a\nrest");
        assert_unscannable_everywhere(
            "an inline image",
            &format!("Content-Type: text/html\r\n\r\n<img src=\"data:image/png;base64,{png}\">"),
        );
    }

    /// Adjacent encoded words join (RFC 2047 section 6.2), so a number
    /// split over two is one number.
    #[test]
    fn encoded_words_split_inside_a_number_join() {
        for header in [
            "Subject: =?utf-8?q?SSN_123-4?= =?utf-8?q?5-6789?=",
            "X-Note: =?utf-8?q?SSN_123-4?=\r\n =?utf-8?b?NS02Nzg5?=",
            "Content-Description: =?utf-8?q?SSN_123?= =?iso-8859-1?q?-45-6789?=",
        ] {
            let raw = format!("From: a@clinic.example\r\n{header}\r\n\r\nhello\r\n");
            let f = MessageFacts::parse(raw.as_bytes(), false);
            assert_eq!(ssns(&f), 1, "{header}: {:?} {:?}", f.subject, f.header_text);
        }
    }

    /// Text in a charset mail-parser cannot decode is unscannable when it
    /// is not plain ASCII; known charsets are decoded.
    #[test]
    fn unknown_charsets_are_unscannable() {
        // "SSN 123-45-6789" in EBCDIC (cp037).
        let ebcdic = b"\xe2\xe2\xd5\x40\xf1\xf2\xf3\x60\xf4\xf5\x60\xf6\xf7\xf8\xf9";
        for charset in ["ebcdic-cp-us", "x-unknown", "unknown-8bit", "utf-32"] {
            assert_unscannable_everywhere(
                charset,
                &b64_part(&format!("text/plain; charset={charset}"), "", ebcdic),
            );
        }
        for charset in [
            "utf-8",
            "UTF8",
            "iso-8859-1",
            "windows-1252",
            "koi8-r",
            "shift_jis",
        ] {
            let part = b64_part(
                &format!("text/plain; charset={charset}"),
                "",
                b"SSN 123-45-6789 \xe9",
            );
            for (wrapper, raw) in wrapped(&part) {
                let f = MessageFacts::parse(&raw, false);
                assert!(
                    f.unscannable.is_empty(),
                    "{charset} as {wrapper}: {:?}",
                    f.unscannable
                );
            }
        }
        // Plain ASCII in any label is read as it is.
        assert_ssn_everywhere(
            "ASCII in an unknown charset",
            "Content-Type: text/plain; charset=x-whatever\r\n\r\nSSN 123-45-6789",
        );
    }

    /// Two Content-Type or Content-Transfer-Encoding headers that differ:
    /// mail-parser takes one, a reader may take the other.
    #[test]
    fn conflicting_part_headers_are_unscannable() {
        for headers in [
            "Content-Type: text/plain\r\nContent-Type: application/pdf\r\n",
            "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\nContent-Transfer-Encoding: quoted-printable\r\n",
        ] {
            assert_unscannable_everywhere(headers, &format!("{headers}\r\nU1NOIDEyMy00NS02Nzg5"));
        }
        // The same value twice is no conflict.
        let part = "Content-Type: text/plain\r\nContent-Type: text/plain\r\n\r\nSSN 123-45-6789";
        assert_ssn_everywhere("a repeated type", part);
    }

    /// A right-to-left override shows its run reversed: what the reader
    /// sees is scanned too.
    #[test]
    fn a_number_shown_reversed_by_an_override_is_found() {
        for body in [
            "SSN \u{202E}9876-54-321",
            "SSN \u{202E}9876-54-321\u{202C} ok",
            "x\u{202E}y\u{202C} SSN \u{202E}9876-54-321",
        ] {
            assert_ssn_everywhere(
                body,
                &format!("Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"),
            );
            assert_ssn_everywhere(
                body,
                &format!("Content-Type: text/html; charset=utf-8\r\n\r\n<p>{body}</p>"),
            );
        }
    }

    /// The detectors run within the scan (on its thread, inside its time
    /// bound), and `detect` gives what a fresh count over the same text
    /// would.
    #[test]
    fn the_scan_counts_the_findings_itself() {
        let raw = b"Subject: SSN 123-45-6789\r\nX-Note: DOB 01/02/1960\r\n\r\nNPI 1234567893\r\n";
        let f = MessageFacts::parse(raw, false);
        assert!(f.findings.is_some());
        let fresh = MessageFacts {
            findings: None,
            ..f.clone()
        };
        let d = Detectors::new();
        for which in [
            &Detector::ALL[..],
            &[Detector::UsSsn],
            &[Detector::Npi, Detector::DateOfBirth],
            &[],
        ] {
            assert_eq!(f.detect(&d, which), fresh.detect(&d, which), "{which:?}");
        }
        assert_eq!(f.detect(&d, &Detector::ALL).len(), 3);
        assert!(
            MessageFacts::parse(b"SSN 123-45-6789", false)
                .findings
                .is_some()
        );
    }
}
