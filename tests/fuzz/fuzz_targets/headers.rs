//! Header handling on the encryption path: the rule facts
//! (`MessageFacts::parse`), subject-tag stripping, and the header
//! protection of PGP/MIME (`pgp::payload`, `pgp::outer_prefix`).
//!
//! Input: 1 byte choosing the subject tag, then message content. The
//! content is CRLF-normalised and given a Received header, as the listener
//! stores it, and split at the first empty line, as delivery does.
//!
//! Oracle: mail-parser, read as the receiving side would. The outer header
//! section of an encrypted message must show only the transport fields of
//! the original (never more of them than the original had) and the
//! placeholder Subject; stripping a tag must leave every other field as it
//! was; the encrypted payload must carry no trace field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mail_parser::{MessageParser, MimeHeaders};
use sealgate::encrypt::{pgp, strip_subject_tag};
use sealgate::policy::facts::MessageFacts;

const TAGS: [&str; 4] = ["[secure]", "[sécurisé]", "#PHI", "s"];
const PLACEHOLDER: &str = "...";
const BOUNDARY: &str = "sealgate-pgp-fuzz";
/// What `outer_prefix` may copy from the original.
const TRANSPORT: [&str; 11] = [
    "from",
    "to",
    "cc",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "reply-to",
    "sender",
    "received",
    "return-path",
];
const TRACE: [&str; 7] = [
    "received",
    "return-path",
    "dkim-signature",
    "arc-seal",
    "arc-message-signature",
    "arc-authentication-results",
    "authentication-results",
];

/// Bare CR and bare LF become CRLF, as the DATA receiver stores content.
fn crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 16);
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' if input.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Lowercased names of the top-level header fields, in order.
fn names(message: &[u8]) -> Vec<String> {
    match MessageParser::default().parse_headers(message) {
        Some(m) => m
            .headers()
            .iter()
            .map(|h| h.name.as_str().to_ascii_lowercase())
            .collect(),
        None => Vec::new(),
    }
}

fn count(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, content)) = input.split_first() else {
        return;
    };
    let tag = TAGS[usize::from(which) % TAGS.len()];
    let mut message = b"Received: from client.example.test ([127.0.0.1])\r\n\tby gateway.example.test (sealgate) with ESMTP id 1;\r\n\tThu, 1 Jan 2026 00:00:00 +0000\r\n".to_vec();
    message.extend_from_slice(&crlf(content));
    // Stored content always ends with a line end (the one before `.`).
    if !message.ends_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }

    let facts = MessageFacts::parse(&message, false);
    assert!(facts.headers.keys().all(|k| *k == k.to_ascii_lowercase()));

    let split = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |p| p + 4);
    let (head, rest) = message.split_at(split);

    // Stripping the tag touches the Subject only.
    let stripped = strip_subject_tag(head, tag);
    let without_subject =
        |n: Vec<String>| -> Vec<String> { n.into_iter().filter(|n| n != "subject").collect() };
    assert_eq!(
        without_subject(names(&stripped)),
        without_subject(names(head)),
        "stripping the tag changed other header fields"
    );
    let original = names(&stripped);

    // The outer message: transport fields and the placeholder only.
    let mut outer = pgp::outer_prefix(&stripped, PLACEHOLDER, BOUNDARY);
    outer.extend_from_slice(
        b"-----BEGIN PGP MESSAGE-----\r\n\r\nx\r\n-----END PGP MESSAGE-----\r\n",
    );
    outer.extend_from_slice(&pgp::outer_suffix(BOUNDARY));
    let parsed = MessageParser::default()
        .parse(&outer)
        .expect("the outer message parses");
    let outer_names: Vec<String> = parsed
        .headers()
        .iter()
        .map(|h| h.name.as_str().to_ascii_lowercase())
        .collect();
    for n in &outer_names {
        let ours = ["subject", "mime-version", "content-type"].contains(&n.as_str());
        assert!(
            ours || TRANSPORT.contains(&n.as_str()),
            "field `{n}` of the original is outside the encryption"
        );
        if !ours {
            assert!(
                count(&outer_names, n) <= count(&original, n),
                "the outer message has more `{n}` fields than the original"
            );
        }
    }
    // mail-parser's Date parser can run into the next line on a broken
    // date, so our Subject line may be read as part of a copied field:
    // then there is none, but never another one.
    assert!(count(&outer_names, "subject") <= 1, "outer Subject count");
    if count(&outer_names, "subject") == 1 {
        assert_eq!(
            parsed.subject(),
            Some(PLACEHOLDER),
            "outer Subject is not the placeholder"
        );
    }
    assert_eq!(
        count(&outer_names, "content-type"),
        1,
        "outer Content-Type count"
    );
    let ct = parsed.content_type().expect("outer Content-Type");
    assert_eq!(
        (ct.ctype(), ct.subtype()),
        ("multipart", Some("encrypted")),
        "outer Content-Type"
    );

    // The payload: every non-trace field, and the hp marker.
    let mut payload = pgp::payload(&stripped, "[...]");
    payload.extend_from_slice(rest);
    let inner = names(&payload);
    for n in &inner {
        assert!(
            !TRACE.contains(&n.as_str()),
            "trace field `{n}` inside the payload"
        );
    }
    // Not checked: that the payload's Content-Type shows hp="cipher". With
    // an odd original Content-Type (a comment left open, several fields,
    // a bare CR in it) readers may not see the parameter; that costs the
    // marker, not secrecy, and is left open (see README, Fuzzing).
});
