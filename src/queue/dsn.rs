//! Delivery status notifications (RFC 3464): a `multipart/report` telling
//! the envelope sender which recipients failed and why.
//!
//! The returned headers are filtered: the Subject and every other header
//! that could carry PHI stay out, because the DSN itself is not protected
//! by the policy that protected the original (invariant 3).

use chrono::Utc;

use super::{QueuedMessage, Recipient};

/// A DSN ready to be queued.
pub struct Dsn {
    pub message_id: String,
    pub content: Vec<u8>,
}

/// Headers safe to return: addresses, ids and dates only.
const RETURNED_HEADERS: &[&str] = &[
    "message-id",
    "date",
    "from",
    "to",
    "cc",
    "sender",
    "reply-to",
];

/// Builds the DSN for `bounced` recipients of `msg`; `original` is the
/// start of the stored content (only its header section is used).
pub fn build(hostname: &str, msg: &QueuedMessage, bounced: &[&Recipient], original: &[u8]) -> Dsn {
    let boundary = format!("sealgate-dsn-{}", crate::util::random_hex_id());
    let message_id = format!("<{}@{}>", crate::util::random_hex_id(), hostname);
    let now = Utc::now().to_rfc2822();
    let mut s = String::new();
    s.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    s.push_str(&format!("To: <{}>\r\n", msg.sender));
    s.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    s.push_str(&format!("Date: {now}\r\n"));
    s.push_str(&format!("Message-ID: {message_id}\r\n"));
    s.push_str("Auto-Submitted: auto-replied\r\n");
    s.push_str("MIME-Version: 1.0\r\n");
    s.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    s.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    s.push_str(&format!("--{boundary}\r\n"));
    s.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\n");
    s.push_str(&format!(
        "This is the mail system at host {hostname}.\r\n\r\n\
         Your message (queue id {}) could not be delivered to the\r\n\
         recipient(s) below. The message was not sent to them.\r\n\r\n",
        msg.id
    ));
    for r in bounced {
        s.push_str(&format!(
            "<{}>: {}\r\n",
            r.address,
            one_line(r.last_error.as_deref().unwrap_or("delivery failed"))
        ));
    }
    s.push_str("\r\n");

    s.push_str(&format!("--{boundary}\r\n"));
    s.push_str("Content-Type: message/delivery-status\r\n\r\n");
    s.push_str(&format!("Reporting-MTA: dns;{hostname}\r\n"));
    s.push_str(&format!("X-Sealgate-Queue-ID: {}\r\n", msg.id));
    s.push_str(&format!(
        "Arrival-Date: {}\r\n",
        msg.received_at.to_rfc2822()
    ));
    for r in bounced {
        s.push_str("\r\n");
        s.push_str(&format!("Final-Recipient: rfc822;{}\r\n", r.address));
        s.push_str("Action: failed\r\n");
        s.push_str(&format!("Status: {}\r\n", status_of(r)));
        if let Some(remote) = &r.last_remote {
            s.push_str(&format!("Remote-MTA: dns;{remote}\r\n"));
        }
        if let Some(err) = &r.last_error {
            let kind = if err.len() > 3 && err.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
                "smtp"
            } else {
                "x-sealgate"
            };
            s.push_str(&format!("Diagnostic-Code: {kind};{}\r\n", one_line(err)));
        }
        s.push_str(&format!("Last-Attempt-Date: {now}\r\n"));
    }
    s.push_str("\r\n");

    s.push_str(&format!("--{boundary}\r\n"));
    s.push_str("Content-Type: text/rfc822-headers\r\n\r\n");
    s.push_str(&returned_headers(original));
    s.push_str(&format!("\r\n--{boundary}--\r\n"));
    Dsn {
        message_id,
        content: s.into_bytes(),
    }
}

/// RFC 3464 wants a status code; a 4.x.x that became final on expiry
/// is reported as such (4.4.7), anything unknown as 5.0.0.
fn status_of(r: &Recipient) -> String {
    match r.last_status.as_deref() {
        Some(code) if is_enhanced(code) => code.to_string(),
        _ => "5.0.0".into(),
    }
}

fn is_enhanced(code: &str) -> bool {
    let parts: Vec<&str> = code.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect()
}

/// The allowed headers of the original, unfolded lines kept as they were.
fn returned_headers(original: &[u8]) -> String {
    let end = original
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(original.len());
    let text = String::from_utf8_lossy(&original[..end]);
    let mut out = String::new();
    let mut keep = false;
    for line in text.split("\r\n") {
        if line.starts_with(' ') || line.starts_with('\t') {
            if keep {
                out.push_str(line);
                out.push_str("\r\n");
            }
            continue;
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        keep = RETURNED_HEADERS.contains(&name.as_str());
        if keep {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes() {
        for (code, ok) in [
            ("5.1.1", true),
            ("4.4.7", true),
            ("2.0.0", true),
            ("5.1", false),
            ("6.0.0", false),
            ("5.a.1", false),
        ] {
            assert_eq!(is_enhanced(code), ok, "{code}");
        }
    }

    #[test]
    fn only_safe_headers_are_returned() {
        let orig = b"Subject: Lab results for Jane\r\nFrom: a@example.test\r\nX-Diagnosis: flu\r\n  continued\r\nMessage-ID: <1@x>\r\n\r\nbody";
        let h = returned_headers(orig);
        assert!(h.contains("From: a@example.test"));
        assert!(h.contains("Message-ID: <1@x>"));
        assert!(!h.contains("Lab results"));
        assert!(!h.contains("flu") && !h.contains("continued"));
    }
}
