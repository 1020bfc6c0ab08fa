//! The MTA-STS policy parser (`StsPolicy::parse`, RFC 8461 section 3.2)
//! and the `_mta-sts` TXT parser (`parse_txt`), fed the input as a policy
//! body and, line by line, as TXT records.
//!
//! A policy that parses must be one delivery can rely on: a known mode, a
//! bounded max_age, host-name patterns with at most a leading `*.` label,
//! patterns that match the hosts they name (and a wildcard exactly one
//! label), and a cache file form that reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealgate::net::mta_sts::{MAX_AGE_LIMIT, StsMode, StsPolicy, parse_txt};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let records: Vec<String> = text.split('\n').map(str::to_string).collect();
    if let Ok(Some(id)) = parse_txt(&records) {
        assert!(!id.is_empty() && id.len() <= 32);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "id {id:?}");
    }

    let Ok(p) = StsPolicy::parse(text, "fuzz") else {
        return;
    };
    assert!(p.max_age <= MAX_AGE_LIMIT);
    assert!(p.mode == StsMode::None || !p.mx.is_empty());
    for pattern in &p.mx {
        assert_eq!(*pattern, pattern.to_ascii_lowercase());
        assert!(!pattern.ends_with('.'), "{pattern:?}");
        match pattern.strip_prefix("*.") {
            Some(suffix) => {
                assert!(!suffix.contains('*'), "{pattern:?}");
                assert!(p.matches(&format!("mx.{suffix}")), "{pattern:?}");
                assert!(p.matches(&format!("MX.{}.", suffix.to_ascii_uppercase())));
                assert!(
                    !only(&p, pattern).matches(suffix),
                    "{pattern:?} matched its suffix"
                );
                assert!(
                    !only(&p, pattern).matches(&format!("a.b.{suffix}")),
                    "{pattern:?} matched two labels"
                );
            }
            None => {
                assert!(!pattern.contains('*'), "{pattern:?}");
                assert!(p.matches(pattern), "{pattern:?} does not match itself");
                assert!(p.matches(&format!("{pattern}.")), "{pattern:?} with a dot");
            }
        }
    }
    let _ = p.is_fresh();
    let json = serde_json::to_string(&p).expect("a policy serialises");
    let back: StsPolicy = serde_json::from_str(&json).expect("the cache form reads back");
    assert_eq!(back, p);
});

/// The policy with a single pattern, to test that pattern alone.
fn only(p: &StsPolicy, pattern: &str) -> StsPolicy {
    StsPolicy {
        mx: vec![pattern.to_string()],
        ..p.clone()
    }
}
