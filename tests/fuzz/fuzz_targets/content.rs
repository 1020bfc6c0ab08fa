//! The content scan (`sealgate::policy::facts`, `extract`, `html`): MIME,
//! attached messages, PDF, zip (Office, OpenDocument) and gzip
//! extraction, signature sniffing and HTML to text.
//!
//! Besides "never panics, never hangs" (libFuzzer's timeout) and bounded
//! memory: text without markup or references reads as itself, so HTML to
//! text never loses what a plain text would show.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sealgate::policy::{extract, facts, html, sniff};

fuzz_target!(|data: &[u8]| {
    let limits = facts::ScanLimits {
        max_depth: 5,
        timeout: Duration::from_secs(5),
        max_inflated: 1 << 20,
        max_text: 1 << 20,
        max_message_text: 2 << 20,
    };
    let deadline = Instant::now() + limits.timeout;
    let _ = facts::MessageFacts::parse_with(data, false, &limits, deadline);
    let l = extract::Limits {
        max_inflated: limits.max_inflated,
        max_text: limits.max_text,
        deadline,
        depth: extract::MAX_CONTAINER_DEPTH,
    };
    let _ = extract::pdf_text(data, &l);
    let _ = extract::zip_text(data, &l);
    let _ = extract::gzip_text(data, &l);
    let _ = sniff::genuine_signature(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let out = html::to_text(text);
        if !text.contains(['<', '&']) {
            assert_eq!(out, html::normalize(text));
        }
    }
});
