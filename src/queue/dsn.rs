//! Delivery status notifications (RFC 3464): a `multipart/report` telling
//! the envelope sender which recipients failed and why.
//!
//! A DSN names no person: it is decided by the policy like any other
//! message, but it may reach the sender in a weaker way than the original
//! reached its recipients, so it carries addresses and ids only
//! (invariants 3 and 7). The returned headers are rebuilt from the parsed
//! original: Message-ID, Date and the bare addresses of From, To and Cc;
//! display names, comments, group names, the Subject and every other
//! field stay out. The remote's reply text is not copied either (a content
//! filter may quote the body, a mailbox-full reply the owner's name): the
//! DSN gives the reply code, the enhanced status and a fixed explanation
//! of that status; the full reply is in the audit record.

use chrono::Utc;
use mail_parser::{HeaderName, MessageParser};

use super::{QueuedMessage, Recipient};

/// A DSN ready to be queued.
pub struct Dsn {
    pub message_id: String,
    pub content: Vec<u8>,
}

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
        s.push_str(&format!("<{}>: {}\r\n", r.address, diagnostic(r).1));
    }
    s.push_str(&format!(
        "\r\nThe full reply of the remote server is in the audit record of\r\n\
         queue id {} at {hostname}.\r\n\r\n",
        msg.id
    ));

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
        let (kind, text) = diagnostic(r);
        s.push_str(&format!("Diagnostic-Code: {kind};{text}\r\n"));
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

/// The Diagnostic-Code type and text for `r`. A remote's reply (three
/// digits first) becomes its code, the enhanced status and a fixed
/// explanation, nothing of its text; sealgate's own reasons (a policy
/// rule's message, a routing or TLS failure) are kept, with every remote
/// reply quoted inside them (`...: 535 ...`, `; last error: 452 ...`)
/// reduced the same way.
fn diagnostic(r: &Recipient) -> (&'static str, String) {
    let status = status_of(r);
    let Some(error) = r.last_error.as_deref().map(one_line) else {
        return ("x-sealgate", format!("{status} {}", explain(&status)));
    };
    if let Some(code) = reply_code(&error) {
        let kind = if matches!(&code[..1], "4" | "5") {
            "smtp"
        } else {
            "x-sealgate"
        };
        return (kind, format!("{code} {status} {}", explain(&status)));
    }
    ("x-sealgate", without_replies(&error, &status))
}

/// `text` with each remote reply after a `: ` cut down to its code and
/// the explanation of its enhanced status (or of `status`), up to the
/// next `; ` (where sealgate's own text may go on).
fn without_replies(text: &str, status: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(": ") {
        let (head, tail) = rest.split_at(at + 2);
        out.push_str(head);
        rest = tail;
        if let Some(code) = reply_code(rest) {
            let clause_end = rest.find("; ").unwrap_or(rest.len());
            let enhanced = enhanced_in(&rest[..clause_end]).unwrap_or_else(|| status.to_string());
            out.push_str(&format!("{code} {}", explain(&enhanced)));
            rest = &rest[clause_end..];
        }
    }
    out.push_str(rest);
    out
}

/// The code a remote reply starts with: three digits, then a space, a
/// hyphen or nothing (any first digit: a broken next hop may send 600).
fn reply_code(text: &str) -> Option<&str> {
    let code = text.get(..3)?;
    let next = text.as_bytes().get(3).copied();
    (code.bytes().all(|b| b.is_ascii_digit()) && matches!(next, None | Some(b' ') | Some(b'-')))
        .then_some(code)
}

/// The enhanced status after a reply code (`550 5.1.1 ...`), if valid.
fn enhanced_in(reply: &str) -> Option<String> {
    let second = reply.get(4..)?.split(' ').next()?;
    is_enhanced(second).then(|| second.to_string())
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect()
}

/// A fixed explanation of an enhanced status code (RFC 3463).
fn explain(status: &str) -> &'static str {
    let mut parts = status.splitn(3, '.').skip(1);
    let (subject, detail) = (parts.next().unwrap_or("0"), parts.next().unwrap_or("0"));
    match (subject, detail) {
        ("1", "1") => "no such mailbox",
        ("1", "2") => "no such domain, or it takes no mail",
        ("1", _) => "the address was refused",
        ("2", "2") => "the mailbox is full",
        ("2", _) => "the mailbox cannot take mail",
        ("3", "4") => "the message is too big for the recipient's mail system",
        ("3", _) => "the recipient's mail system has a problem",
        ("4", "7") => "delivery time expired",
        ("4", _) => "the recipient's mail servers could not be reached",
        ("5", _) => "the mail protocol failed",
        ("6", _) => "the recipient's mail system refused the message's format",
        ("7", "1") => "delivery was refused (not authorized, or by policy)",
        ("7", _) => "delivery was refused for security or policy reasons",
        _ => "delivery failed",
    }
}

/// The header section at the start of `original` (with its final CRLF).
fn header_section(original: &[u8]) -> &[u8] {
    let end = original
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(original.len());
    &original[..end]
}

/// The returned headers: Message-ID, Date and the bare addresses of
/// From, To and Cc, each rebuilt from the parsed value so that no display
/// name, comment, group name or encoded word of the original survives.
fn returned_headers(original: &[u8]) -> String {
    let Some(msg) = MessageParser::default().parse_headers(header_section(original)) else {
        return String::new();
    };
    let mut out = String::new();
    if let Some(id) = msg.message_id().filter(|id| is_bare_address(id)) {
        out.push_str(&format!("Message-ID: <{id}>\r\n"));
    }
    if let Some(date) = msg.date().filter(|d| d.is_valid()) {
        out.push_str(&format!("Date: {}\r\n", date.to_rfc822()));
    }
    for (field, name) in [
        ("From", HeaderName::From),
        ("To", HeaderName::To),
        ("Cc", HeaderName::Cc),
    ] {
        let addrs: Vec<String> = msg
            .header_values(name)
            .filter_map(|v| v.as_address())
            .flat_map(|a| a.iter())
            .filter_map(|a| a.address.as_deref())
            .filter(|a| is_bare_address(a))
            .map(|a| format!("<{a}>"))
            .collect();
        if !addrs.is_empty() {
            // One address per line keeps long lists within the line limit.
            out.push_str(&format!("{field}: {}\r\n", addrs.join(",\r\n ")));
        }
    }
    out
}

/// `local@domain` with nothing that could carry a name beside it: no
/// white space, quotes, comments, brackets or list separators.
fn is_bare_address(a: &str) -> bool {
    let Some((local, domain)) = a.split_once('@') else {
        return false;
    };
    a.len() <= 254
        && !local.is_empty()
        && !domain.is_empty()
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"()<>[]\\,;:".contains(c))
        && !domain.contains('@')
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
        assert_eq!(h, "Message-ID: <1@x>\r\nFrom: <a@example.test>\r\n");
    }

    /// Names in every place a header can hide one: quoted and plain
    /// display names, encoded words split across a fold, comments, group
    /// names, Reply-To and Sender, a comment in the Date, the Subject.
    const NAMED: &str = concat!(
        "From: \"Doe, Jane (patient)\" <p1@clinic.example.test>\r\n",
        "To: =?utf-8?q?J=C3=BCrgen?=\r\n =?utf-8?q?_M=C3=BCller?= <p2@example.test>,\r\n",
        "\tHannelore Zwicky\r\n <p3@example.test>\r\n",
        "Cc: p4@example.test (John Doe), Trial Group: p5@example.test,\r\n",
        " \"Ophelia Krabappel\" <p6@example.test>;, =?utf-8?b?QmrDtnJu?= <p7@example.test>\r\n",
        "Cc: Quentin Blake p8@example.test, \"Winifred Oddly\"@example.test\r\n",
        "Reply-To: Marisol Underhill <p9@example.test>\r\n",
        "Sender: Tiberius Vandersloot <p10@example.test>\r\n",
        "Subject: =?utf-8?q?Lab_results_for_Jane_Doe?=\r\n",
        "Date: Sun, 29 Nov 2026 10:00:00 +0000 (Ignatius Plum)\r\n",
        "Message-ID: <abc.123@clinic.example.test>\r\n",
        "X-Patient: Jane Doe\r\n",
        "\r\n",
        "Dear Jane Doe, your results are in.\r\n",
    );

    const NAME_TEXT: &[&str] = &[
        "Jane",
        "Doe",
        "patient",
        "Jürgen",
        "Müller",
        "J=C3=BCrgen",
        "M=C3=BCller",
        "Hannelore",
        "Zwicky",
        "John",
        "Trial",
        "Group",
        "Ophelia",
        "Krabappel",
        "QmrDtnJu",
        "Björn",
        "Quentin",
        "Blake",
        "Winifred",
        "Oddly",
        "Marisol",
        "Underhill",
        "Tiberius",
        "Vandersloot",
        "Lab results",
        "Ignatius",
        "Plum",
        "results",
    ];

    fn message(sender: &str) -> QueuedMessage {
        QueuedMessage {
            id: crate::queue::QueueId("q1".into()),
            received_at: Utc::now(),
            sender: sender.into(),
            recipients: Vec::new(),
            message_id: None,
            size: NAMED.len() as u64,
            content_sha256: String::new(),
            body_8bit: false,
            smtputf8: false,
            client: crate::queue::ClientInfo {
                ip: "127.0.0.1".into(),
                helo: "client.example.test".into(),
                auth_user: None,
                tls: false,
                connector: None,
            },
            local: false,
            requiretls: false,
        }
    }

    #[test]
    fn no_name_of_the_original_appears_anywhere_in_the_dsn() {
        let mut bounced = Recipient::new("p2@example.test".into());
        // A remote reply that echoes names and the Subject.
        bounced.last_error = Some(
            "550 5.2.2 mailbox of JANE DOE (Jürgen Müller) is full: \"Lab results for Jane Doe\""
                .into(),
        );
        bounced.last_status = Some("5.2.2".into());
        let dsn = build(
            "gateway.example.test",
            &message("p1@clinic.example.test"),
            &[&bounced],
            NAMED.as_bytes(),
        );
        let text = String::from_utf8(dsn.content).unwrap();
        let lower = text.to_lowercase();
        for name in NAME_TEXT {
            assert!(!lower.contains(&name.to_lowercase()), "{name} in:\n{text}");
        }
        let headers = text
            .split("Content-Type: text/rfc822-headers\r\n\r\n")
            .nth(1)
            .unwrap();
        assert!(
            headers.starts_with(concat!(
                "Message-ID: <abc.123@clinic.example.test>\r\n",
                "Date: Sun, 29 Nov 2026 10:00:00 +0000\r\n",
                "From: <p1@clinic.example.test>\r\n",
                "To: <p2@example.test>,\r\n <p3@example.test>\r\n",
            )),
            "{headers}"
        );
        for addr in ["p4", "p5", "p6", "p7"] {
            assert!(
                headers.contains(&format!("<{addr}@example.test>")),
                "{addr}: {headers}"
            );
        }
        assert!(
            !headers.contains("p9@") && !headers.contains("p10@"),
            "{headers}"
        );
        assert!(text.contains("Final-Recipient: rfc822;p2@example.test"));
        assert!(
            text.contains("Diagnostic-Code: smtp;550 5.2.2 the mailbox is full\r\n"),
            "{text}"
        );
        assert!(!text.contains("mailbox of"), "reply text copied:\n{text}");
    }

    #[test]
    fn nothing_returned_when_the_header_section_is_not_mail() {
        for orig in [
            &b""[..],
            b"\r\n\r\n",
            b"no colon at all\r\n\r\n",
            b"\xff\xfe: \x00\r\n",
        ] {
            let h = returned_headers(orig);
            assert!(h.is_empty() || h.lines().all(|l| l.is_empty()), "{h:?}");
        }
    }

    #[test]
    fn bare_addresses_only() {
        for (a, ok) in [
            ("p1@example.test", true),
            ("p.1+tag@sub.example.test", true),
            ("jürgen@example.test", true),
            ("Jane Doe@example.test", false),
            ("\"Jane Doe\"@example.test", false),
            ("p1@example.test (Jane)", false),
            ("a@b@c", false),
            ("@example.test", false),
            ("p1@", false),
            ("nobody", false),
            ("<p1@example.test>", false),
        ] {
            assert_eq!(is_bare_address(a), ok, "{a}");
        }
    }

    /// A reply that quotes the body, a name in an encoded word, a
    /// two-letter name: none of it reaches the DSN, whose text is fixed
    /// by the status; our own errors have no reply code.
    #[test]
    fn the_reply_text_never_reaches_the_dsn() {
        for (error, status, want) in [
            (
                "550 5.7.1 rejected: contains 'HIV positive' for Li Wu",
                Some("5.7.1"),
                "smtp;550 5.7.1 delivery was refused (not authorized, or by policy)",
            ),
            (
                "554 5.6.0 =?utf-8?b?TGFiIHJlc3VsdHM=?=",
                Some("5.6.0"),
                "smtp;554 5.6.0 the recipient's mail system refused the message's format",
            ),
            (
                "delivery time expired; last error: 452 4.2.2 mailbox of Li Wu full",
                Some("4.4.7"),
                "x-sealgate;delivery time expired; last error: 452 the mailbox is full",
            ),
            (
                "delivery time expired; last error: mx.example.test closed the connection",
                Some("4.4.7"),
                "x-sealgate;delivery time expired; last error: mx.example.test closed the connection",
            ),
            (
                "451 4.4.7 expired after 5d (Li Wu)",
                Some("4.4.7"),
                "smtp;451 4.4.7 delivery time expired",
            ),
            (
                "delivery time expired; last error: smarthost relay.example refused our credentials: 535 5.7.8 user jane.doe@clinic unknown",
                Some("4.4.7"),
                "x-sealgate;delivery time expired; last error: smarthost relay.example refused our credentials: 535 delivery was refused for security or policy reasons",
            ),
            (
                "delivery time expired; last error: 600 Patient Li Wu said hello",
                Some("4.4.7"),
                "x-sealgate;delivery time expired; last error: 600 delivery time expired",
            ),
            (
                "rejected by policy: SSNs may not leave by e-mail",
                Some("5.7.1"),
                "x-sealgate;rejected by policy: SSNs may not leave by e-mail",
            ),
        ] {
            let mut r = Recipient::new("p2@example.test".into());
            r.last_error = Some(error.into());
            r.last_status = status.map(str::to_string);
            let dsn = build(
                "gw.example.test",
                &message("p1@clinic.example.test"),
                &[&r],
                b"Subject: x\r\n\r\n",
            );
            let text = String::from_utf8(dsn.content).unwrap();
            assert!(
                text.contains(&format!("Diagnostic-Code: {want}\r\n")),
                "{text}"
            );
            for leak in ["HIV", "Li Wu", "TGFi", "jane.doe", "Patient"] {
                assert!(!text.contains(leak), "{leak} in:\n{text}");
            }
        }
    }
}
