//! What the rules can look at in a message: envelope, client, headers,
//! subject, text of the bodies and of the attachments that can be read
//! (text, PDF, DOCX, attached messages), attachment types and sizes, and
//! what could not be read. Built once per delivery attempt, never logged.
//!
//! "Could not read it" is not "clean": a part the scan could not read (cut
//! at `max_scan_size`, an encrypted or broken document, an image, a
//! message nested too deep, a damaged transfer encoding, the deadline) is
//! listed in [`MessageFacts::unscannable`], and the policy counts it as PHI.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use tokio::sync::Semaphore;

use super::detectors::{Detector, Detectors};
use super::extract::{Kind, Limits};
use super::html::{self, normalize};

/// An attachment as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `type/subtype`, lowercased.
    pub content_type: String,
    /// File name, if any.
    pub name: Option<String>,
    pub size: usize,
}

/// The message facts rules match on.
#[derive(Debug, Clone, Default)]
pub struct MessageFacts {
    pub sender: String,
    pub client_ip: Option<IpAddr>,
    pub auth_user: Option<String>,
    pub size: u64,
    pub subject: String,
    /// Header name (lowercased) to every value (unfolded, decoded).
    pub headers: HashMap<String, Vec<String>>,
    /// Text of the text/plain and text/html bodies.
    pub body_text: String,
    /// Text of the attachments that could be read: text parts, PDF and
    /// DOCX documents, and attached messages (their subject, bodies and
    /// attachments), at any depth up to [`ScanLimits::max_depth`].
    pub attachment_text: String,
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
    /// Decompressed bytes one PDF stream or one DOCX may produce.
    pub max_inflated: usize,
    /// Characters of text one document may yield.
    pub max_text: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_depth: 5,
            timeout: Duration::from_secs(10),
            max_inflated: 32 << 20,
            max_text: 16 << 20,
        }
    }
}

/// Content scans running at once. Extraction is CPU-bound and a scan that
/// overran its timeout keeps its thread until it ends: this bounds how
/// many such threads (and their memory) there can be.
static SCAN_SLOTS: Semaphore = Semaphore::const_new(2);

/// Types that carry no text of their own: signatures and public keys.
const NO_TEXT_TYPES: &[&str] = &[
    "application/pgp-signature",
    "application/pkcs7-signature",
    "application/x-pkcs7-signature",
    "application/pgp-keys",
];

/// Types whose bytes are text, though mail-parser does not decode them as
/// text: structured text (JSON, XML) and the report formats (RFC 3464
/// delivery status, RFC 8098 dispositions, RFC 5965 feedback, returned
/// headers).
fn is_text_like(ct: &str) -> bool {
    ct.starts_with("text/")
        || ct.starts_with("message/")
        || matches!(ct, "application/json" | "application/xml")
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
}

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
        let deadline = Instant::now() + limits.timeout;
        let work = {
            let content = content.clone();
            async move {
                let permit = SCAN_SLOTS.acquire().await.ok()?;
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
            f.body_text = normalize(&String::from_utf8_lossy(content));
            return f;
        };
        f.read_headers(&msg);
        let mut scan = Scan {
            facts: &mut f,
            limits,
            deadline,
        };
        let mut body = String::new();
        scan.bodies(&msg, "message", &mut body);
        let mut att_text = String::new();
        scan.attachments(&msg, "", 0, &mut att_text);
        f.body_text = body;
        f.attachment_text = att_text;
        f
    }

    /// Findings of `which` detectors over the bodies and text attachments.
    pub fn detect(&self, detectors: &Detectors, which: &[Detector]) -> Vec<(Detector, usize)> {
        let mut found: HashMap<Detector, usize> = HashMap::new();
        for text in [&self.subject, &self.body_text, &self.attachment_text] {
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

/// One content scan in progress.
struct Scan<'a> {
    facts: &'a mut MessageFacts,
    limits: &'a ScanLimits,
    deadline: Instant,
}

impl Scan<'_> {
    fn unscannable(&mut self, what: &str, why: impl std::fmt::Display) {
        self.facts.unscannable.push(format!("{what}: {why}"));
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
            if part.is_encoding_problem {
                self.unscannable(&format!("{what} body"), "its transfer encoding is damaged");
            }
            let Some(text) = part.text_contents() else {
                continue;
            };
            if part.is_text_html() {
                out.push_str(&html::to_text(text));
            } else {
                out.push_str(&normalize(text));
            }
            out.push('\n');
        }
    }

    /// The attachments of `msg` into `out`, attached messages opened up to
    /// the depth limit. `path` is the position of `msg` ("" for the
    /// message itself, "2/" for its second attachment, ...).
    fn attachments(&mut self, msg: &Message<'_>, path: &str, depth: usize, out: &mut String) {
        for (i, part) in msg.attachments().enumerate() {
            let ct = part
                .content_type()
                .map(|c| {
                    format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")).to_ascii_lowercase()
                })
                .unwrap_or_else(|| "application/octet-stream".into());
            let name = part.attachment_name().map(str::to_string);
            let what = format!("attachment {path}{} ({ct})", i + 1);
            self.facts.attachments.push(Attachment {
                content_type: ct.clone(),
                name: name.clone(),
                size: part.len(),
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
                out.push_str(&normalize(nested.subject().unwrap_or("")));
                out.push('\n');
                self.bodies(nested, &what, out);
                let inner = format!("{path}{}/", i + 1);
                self.attachments(nested, &inner, depth + 1, out);
                continue;
            }
            if nested_raw.is_some() {
                self.unscannable(&what, "the attached message cannot be parsed");
                continue;
            }
            // Text parts as mail-parser decoded them (charset included).
            if matches!(part.body, PartType::Text(_) | PartType::Html(_)) {
                let t = part.text_contents().unwrap_or("");
                if part.is_text_html() {
                    out.push_str(&html::to_text(t));
                } else {
                    out.push_str(&normalize(t));
                }
                out.push('\n');
                continue;
            }
            // Anything else by what it is, never by whether its bytes
            // happen to be UTF-8 (an uncompressed PDF is ASCII).
            let data = part.contents();
            if data.is_empty() || NO_TEXT_TYPES.contains(&ct.as_str()) {
                continue;
            }
            match Kind::of(&ct, name.as_deref(), data) {
                Some(kind) => {
                    let limits = Limits {
                        max_inflated: self.limits.max_inflated,
                        max_text: self.limits.max_text,
                        deadline: self.deadline,
                    };
                    match kind.extract(data, &limits) {
                        Ok(text) => {
                            out.push_str(&normalize(&text));
                            out.push('\n');
                        }
                        Err(e) => self.unscannable(&what, e),
                    }
                }
                None if is_text_like(&ct) => {
                    out.push_str(&normalize(&String::from_utf8_lossy(data)));
                    out.push('\n');
                }
                None => self.unscannable(&what, "its text is not extracted"),
            }
        }
    }
}

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
        assert!(f.attachment_text.contains("123-45-6789"));
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
}
