//! What the rules can look at in a message: envelope, client, headers,
//! subject, text of the bodies and text attachments, attachment types and
//! sizes. Built once per delivery attempt, never logged.

use std::collections::HashMap;
use std::net::IpAddr;

use mail_parser::{MessageParser, MimeHeaders};

use super::detectors::{Detector, Detectors};

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
    /// Text of text-like attachments.
    pub attachment_text: String,
    pub attachments: Vec<Attachment>,
    /// Whether the content was cut at the scan limit.
    pub truncated: bool,
}

impl MessageFacts {
    /// Parses `content` (at most the scan limit of the stored message).
    pub fn parse(content: &[u8], truncated: bool) -> MessageFacts {
        let mut f = MessageFacts {
            truncated,
            ..Default::default()
        };
        let Some(msg) = MessageParser::default().parse(content) else {
            // Not MIME at all: scan it as text so detectors still see it.
            f.body_text = String::from_utf8_lossy(content).into_owned();
            return f;
        };
        f.subject = msg.subject().unwrap_or("").to_string();
        for (name, value) in msg.headers_raw() {
            let v = value
                .replace("\r\n", "")
                .replace('\n', "")
                .trim()
                .to_string();
            f.headers
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(v);
        }
        // Decoded subject replaces the raw (RFC 2047) one.
        if let Some(s) = msg.subject() {
            f.headers.insert("subject".into(), vec![s.to_string()]);
        }
        // mail-parser lists a text/plain part among the HTML bodies too (and
        // the other way round) when there is no alternative: scan each part once.
        let mut body = String::new();
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
            let Some(text) = part.text_contents() else {
                continue;
            };
            if part.is_text_html() {
                body.push_str(&strip_tags(text));
            } else {
                body.push_str(text);
            }
            body.push('\n');
        }
        f.body_text = body;
        let mut att_text = String::new();
        for part in msg.attachments() {
            let ct = part
                .content_type()
                .map(|c| {
                    format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")).to_ascii_lowercase()
                })
                .unwrap_or_else(|| "application/octet-stream".into());
            let name = part.attachment_name().map(str::to_string);
            f.attachments.push(Attachment {
                content_type: ct.clone(),
                name,
                size: part.len(),
            });
            if let Some(t) = part.text_contents() {
                att_text.push_str(t);
                att_text.push('\n');
            } else if ct.starts_with("text/") || ct == "application/json" || ct == "application/xml"
            {
                att_text.push_str(&String::from_utf8_lossy(part.contents()));
                att_text.push('\n');
            }
        }
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

/// Crude HTML-to-text for scanning: drops tags, keeps text.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
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
}
