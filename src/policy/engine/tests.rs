use super::*;
use crate::capability::{Capability, ProbeReport};

fn policy(text: &str) -> Policy {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    std::fs::write(&f, text).unwrap();
    Policy::load(&[f.display().to_string()]).unwrap()
}

fn policy_err(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    std::fs::write(&f, text).unwrap();
    Policy::load(&[f.display().to_string()])
        .unwrap_err()
        .to_string()
}

fn env(sender: &str) -> Envelope {
    Envelope {
        sender: sender.into(),
        client_ip: Some("10.1.2.3".parse().unwrap()),
        auth_user: None,
        size: 1000,
        requiretls: false,
    }
}

fn msg(subject: &str, body: &str) -> MessageFacts {
    MessageFacts::parse(
        format!("Subject: {subject}\r\nX-Sensitivity: Private\r\n\r\n{body}\r\n").as_bytes(),
        false,
    )
}

fn tls(level: TlsRequirement) -> ProbeReport {
    ProbeReport {
        probe: "static",
        result: Ok(vec![Capability::Tls { level }]),
        evidence: serde_json::Value::Null,
        cached: false,
    }
}

const RULES: &str = r#"
[defaults]
methods = ["pgp", "tls", "portal"]
min_tls = "verified"

[[rule]]
name = "block-ssn-to-freemail"
match.recipient_domain = ["freemail.example"]
match.detectors = ["us-ssn"]
action = "reject"
reject_message = "SSNs may not be sent to free mail providers"

[[rule]]
name = "secure-tag"
match.subject_tag = "[secure]"
strip_tag = true
methods = ["portal"]

[[rule]]
name = "hr-header"
match.header = [{ name = "X-Sensitivity", pattern = "(?i)^private$" }]
match.sender_domain = ["hr.clinic.example"]
action = "hold"

[[rule]]
name = "partner"
match.recipient_domain = ["*.partner.example", "partner.example"]
methods = ["tls"]
min_tls = "opportunistic"

[[rule]]
name = "big-from-app"
match.size_over = "500"
match.client_network = ["10.0.0.0/8"]
match.body = ["(?i)invoice"]
methods = ["tls"]
min_tls = "dane"
"#;

#[test]
fn rules_match_in_order() {
    let p = policy(RULES);
    // (sender, recipient, subject, body) → rule
    let cases = [
        (
            "a@clinic.example",
            "x@freemail.example",
            "hi",
            "ssn 123-45-6789",
            "block-ssn-to-freemail",
        ),
        (
            "a@clinic.example",
            "x@freemail.example",
            "hi",
            "no numbers",
            "default",
        ),
        (
            "a@clinic.example",
            "x@other.example",
            "Results [SECURE]",
            "x",
            "secure-tag",
        ),
        (
            "a@hr.clinic.example",
            "x@other.example",
            "hi",
            "x",
            "hr-header",
        ),
        (
            "a@clinic.example",
            "x@mx.partner.example",
            "hi",
            "x",
            "partner",
        ),
        (
            "a@clinic.example",
            "x@partner.example",
            "hi",
            "x",
            "partner",
        ),
        (
            "a@clinic.example",
            "x@notpartner.example",
            "hi",
            "x",
            "default",
        ),
        (
            "a@clinic.example",
            "x@y.example",
            "hi",
            "your INVOICE",
            "big-from-app",
        ),
    ];
    for (sender, rcpt, subject, body, want) in cases {
        let prep = p.prepare(env(sender), msg(subject, body));
        let e = prep.evaluate(rcpt, false);
        assert_eq!(
            e.outcome.rule, want,
            "{sender} → {rcpt} / {subject} / {body}"
        );
    }
}

#[test]
fn decisions_follow_capabilities_and_fail_closed() {
    let p = policy(RULES);
    let prep = p.prepare(env("a@clinic.example"), msg("hi", "hello"));
    // Default rule: pgp (not available yet), tls needs verified, portal not configured.
    let e = prep.evaluate("x@other.example", false);
    let d = prep.decide(&e, vec![tls(TlsRequirement::Verified)]);
    assert_eq!(
        (d.action, d.method, d.tls),
        (Action::Deliver, Method::Tls, TlsRequirement::Verified)
    );
    assert_eq!(d.explanation.skipped[0].method, Method::Pgp);
    // Only opportunistic available: tls skipped, portal not configured → wait.
    let d = prep.decide(&e, vec![tls(TlsRequirement::Opportunistic)]);
    assert_eq!(d.action, Action::Wait);
    assert!(d.reason.contains("rule needs verified"), "{}", d.reason);
    // A probe that failed: never less protection.
    let failed = ProbeReport {
        probe: "tls-offered",
        result: Err("timed out".into()),
        evidence: serde_json::Value::Null,
        cached: false,
    };
    let d = prep.decide(&e, vec![failed]);
    assert_eq!(d.action, Action::Wait);
    assert!(d.reason.contains("timed out"), "{}", d.reason);
    // DANE published: enforced even for a rule that allows opportunistic.
    let e = prep.evaluate("x@partner.example", false);
    let d = prep.decide(&e, vec![tls(TlsRequirement::Dane)]);
    assert_eq!((d.action, d.tls), (Action::Deliver, TlsRequirement::Dane));
    let d = prep.decide(&e, vec![]);
    assert_eq!(
        (d.action, d.tls),
        (Action::Deliver, TlsRequirement::Opportunistic)
    );
}

#[test]
fn phi_content_never_goes_out_on_opportunistic_tls() {
    let p = policy(RULES);
    let prep = p.prepare(
        env("a@clinic.example"),
        msg("hi", "Patient DOB: 03/04/1961, SSN 123-45-6789"),
    );
    let e = prep.evaluate("x@partner.example", false);
    assert_eq!(e.outcome.rule, "partner");
    assert_eq!(
        e.outcome.min_tls,
        TlsRequirement::MtaSts,
        "the PHI floor raised the rule's opportunistic"
    );
    let d = prep.decide(&e, vec![tls(TlsRequirement::Verified)]);
    assert_eq!(d.action, Action::Wait);
    assert!(d.explanation.phi);
    assert!(
        d.explanation
            .detectors
            .iter()
            .any(|(n, c)| n == "us-ssn" && *c == 1),
        "{:?}",
        d.explanation.detectors
    );
    let d = prep.decide(&e, vec![tls(TlsRequirement::MtaSts)]);
    assert_eq!((d.action, d.tls), (Action::Deliver, TlsRequirement::MtaSts));
}

#[test]
fn reject_hold_and_release() {
    let p = policy(RULES);
    let prep = p.prepare(env("a@clinic.example"), msg("x", "123-45-6789"));
    let d = prep.decide(&prep.evaluate("x@freemail.example", false), vec![]);
    assert_eq!(d.action, Action::Reject);
    assert_eq!(d.reason, "SSNs may not be sent to free mail providers");
    let prep = p.prepare(env("a@hr.clinic.example"), msg("x", "y"));
    let d = prep.decide(&prep.evaluate("x@other.example", false), vec![]);
    assert_eq!(d.action, Action::Hold);
    let e = prep.evaluate("x@other.example", true);
    assert_eq!(
        e.outcome.rule, "default",
        "a released recipient is not held again"
    );
}

#[test]
fn monitor_rules_record_what_they_would_do() {
    let text = r#"
[defaults]
methods = ["tls"]
min_tls = "opportunistic"

[[rule]]
name = "try-strict"
mode = "monitor"
match.recipient_domain = ["other.example"]
min_tls = "dane"
"#;
    let p = policy(text);
    let prep = p.prepare(env("a@clinic.example"), msg("x", "y"));
    let e = prep.evaluate("x@other.example", false);
    assert_eq!(e.outcome.rule, "default");
    let d = prep.decide(&e, vec![tls(TlsRequirement::Verified)]);
    assert_eq!(d.action, Action::Deliver);
    assert_eq!(d.explanation.monitors.len(), 1);
    assert_eq!(d.explanation.monitors[0].rule, "try-strict");
    assert_eq!(d.explanation.monitors[0].action, Action::Wait);
}

#[test]
fn whole_file_in_monitor_mode() {
    let text = "[policy]\nmode = \"monitor\"\n[[rule]]\nname = \"x\"\nmatch.recipient_domain = [\"a.example\"]\naction = \"hold\"\n";
    let p = policy(text);
    assert_eq!(p.rules()[0].mode, Mode::Monitor);
}

#[test]
fn bad_files_name_file_line_and_key() {
    let cases = [
        (
            "[[rule]]\nname = \"a\"\nmatch.body = [\"(unclosed\"]\n",
            "p.toml:3",
            "rule.match.body",
        ),
        (
            "[[rule]]\nname = \"a\"\nmatch.detectors = [\"us-sin\"]\n",
            "p.toml:3",
            "unknown detector `us-sin`",
        ),
        (
            "[[rule]]\nname = \"a\"\nbogus = 1\n",
            "p.toml:3",
            "rule.bogus: unknown key `bogus`",
        ),
        (
            "[defaults]\nmin_tls = \"strong\"\n",
            "p.toml:2",
            "defaults.min_tls",
        ),
        (
            "[defaults]\nphi_min_tls = \"opportunistic\"\n",
            "p.toml:2",
            "never goes out on opportunistic",
        ),
        (
            "[[rule]]\nname = \"a\"\naction = \"reject\"\n",
            "p.toml:2",
            "reject_message",
        ),
        (
            "[[rule]]\nname = \"a\"\nmethods = [\"fax\"]\n",
            "p.toml:3",
            "rule.methods",
        ),
        (
            "[[rule]]\nname = \"a\"\nmatch.recipient_domain = [\"x@y\"]\n",
            "p.toml:3",
            "is an address",
        ),
    ];
    for (text, at, what) in cases {
        let e = policy_err(text);
        assert!(e.contains(at) && e.contains(what), "{text}\n→ {e}");
    }
}

#[test]
fn unreachable_rules_are_reported() {
    let text = "[[rule]]\nname = \"all\"\nmethods = [\"tls\"]\n\n[[rule]]\nname = \"never\"\nmatch.recipient_domain = [\"a.example\"]\n";
    let e = policy_err(text);
    assert!(
        e.contains("rule `never` can never match") && e.contains("p.toml:6"),
        "{e}"
    );
    let text = "[[rule]]\nname = \"one\"\nmatch.recipient_domain = [\"a.example\", \"b.example\"]\n[[rule]]\nname = \"two\"\nmatch.recipient_domain = [\"b.example\", \"a.example\"]\n";
    assert!(policy_err(text).contains("same conditions"));
    // A monitor rule does not shadow later rules.
    let text = "[[rule]]\nname = \"all\"\nmode = \"monitor\"\n[[rule]]\nname = \"later\"\nmatch.recipient_domain = [\"a.example\"]\n";
    policy(text);
}

#[test]
fn the_default_policy_loads_and_is_strict() {
    let p = Policy::load(&[]).unwrap();
    let prep = p.prepare(env("a@clinic.example"), msg("x", "y"));
    let e = prep.evaluate("x@other.example", false);
    assert_eq!(e.outcome.min_tls, TlsRequirement::MtaSts);
    let d = prep.decide(&e, vec![tls(TlsRequirement::Verified)]);
    assert_eq!(
        d.action,
        Action::Wait,
        "verified alone is not enough by default"
    );
    let d = prep.decide(&e, vec![tls(TlsRequirement::Dane)]);
    assert_eq!(
        (d.action, d.method, d.tls),
        (Action::Deliver, Method::Tls, TlsRequirement::Dane)
    );
}

#[test]
fn version_changes_with_content() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.toml");
    std::fs::write(&f, "[defaults]\nsign = false\n").unwrap();
    let pat = vec![dir.path().join("*.toml").display().to_string()];
    let v1 = Policy::load(&pat).unwrap().version().to_string();
    std::fs::write(&f, "[defaults]\nsign = true\n").unwrap();
    let v2 = Policy::load(&pat).unwrap().version().to_string();
    assert_ne!(v1, v2);
}

#[test]
fn explanation_holds_no_content() {
    let p = policy(RULES);
    let prep = p.prepare(
        env("a@clinic.example"),
        msg("Lab results for Jane", "SSN 123-45-6789 diagnosis E11.9"),
    );
    let d = prep.decide(
        &prep.evaluate("x@y.example", false),
        vec![tls(TlsRequirement::Verified)],
    );
    let json = serde_json::to_string(&d).unwrap();
    for secret in ["Jane", "123-45-6789", "E11.9", "Lab results"] {
        assert!(!json.contains(secret), "{secret} leaked into {json}");
    }
}

fn probe(name: &'static str, result: Result<Vec<Capability>, String>) -> ProbeReport {
    ProbeReport {
        probe: name,
        result,
        evidence: serde_json::Value::Null,
        cached: false,
    }
}

fn dane_level(level: TlsRequirement) -> ProbeReport {
    probe("dane", Ok(vec![Capability::Tls { level }]))
}

fn pgp_key() -> ProbeReport {
    probe(
        "pgp",
        Ok(vec![Capability::Pgp {
            fingerprint: "AB12".into(),
            source: "wkd".into(),
        }]),
    )
}

const EVERY_METHOD: &str = r#"
[defaults]
methods = ["pgp", "tls"]
min_tls = "opportunistic"
honor_tls_required_no = true

[[rule]]
name = "floor-mta-sts"
match.recipient_domain = ["strict.example"]
methods = ["tls"]
min_tls = "mta-sts"
"#;

#[test]
fn secure_but_unusable_tlsa_means_mandatory_tls_for_every_method() {
    let p = policy(EVERY_METHOD);
    let prep = p.prepare(env("a@clinic.example"), msg("hi", "hello"));
    let e = prep.evaluate("x@pkix.example", false);
    // The tls method under an opportunistic rule: never cleartext.
    let d = prep.decide(&e, vec![dane_level(TlsRequirement::Encrypted)]);
    assert_eq!(
        (d.action, d.method, d.tls, d.dnssec_mx),
        (
            Action::Deliver,
            Method::Tls,
            TlsRequirement::Encrypted,
            true
        )
    );
    // OpenPGP as well: the destination's requirement binds the hop.
    let d = prep.decide(&e, vec![pgp_key(), dane_level(TlsRequirement::Encrypted)]);
    assert_eq!(
        (d.method, d.tls, d.dnssec_mx),
        (Method::Pgp, TlsRequirement::Encrypted, true)
    );
    // Only the DANE probe publishes `encrypted`; a static or tls-offered
    // answer of that level is a capability, not a requirement.
    let d = prep.decide(
        &e,
        vec![probe(
            "tls-offered",
            Ok(vec![Capability::Tls {
                level: TlsRequirement::Encrypted,
            }]),
        )],
    );
    assert_eq!(
        (d.method, d.tls, d.dnssec_mx),
        (Method::Tls, TlsRequirement::Opportunistic, false)
    );
    // DANE usable: dane, from the validated MX set.
    let d = prep.decide(&e, vec![pgp_key(), dane_level(TlsRequirement::Dane)]);
    assert_eq!((d.tls, d.dnssec_mx), (TlsRequirement::Dane, true));
    // MTA-STS published: binds OpenPGP too, not DNSSEC-dependent.
    let d = prep.decide(
        &e,
        vec![
            pgp_key(),
            probe(
                "mta-sts",
                Ok(vec![Capability::Tls {
                    level: TlsRequirement::MtaSts,
                }]),
            ),
        ],
    );
    assert_eq!(
        (d.method, d.tls, d.dnssec_mx),
        (Method::Pgp, TlsRequirement::MtaSts, false)
    );
}

#[test]
fn requiretls_binds_openpgp_mail_too() {
    let p = policy(EVERY_METHOD);
    let mut envelope = env("a@clinic.example");
    envelope.requiretls = true;
    let prep = p.prepare(envelope, msg("hi", "hello"));
    let e = prep.evaluate("x@other.example", false);
    let d = prep.decide(&e, vec![pgp_key(), signed_mx()]);
    assert_eq!(
        (d.method, d.tls, d.requiretls),
        (Method::Pgp, TlsRequirement::Verified, true)
    );
    let d = prep.decide(&e, vec![pgp_key(), dane_level(TlsRequirement::Dane)]);
    assert_eq!((d.method, d.tls), (Method::Pgp, TlsRequirement::Dane));
}

#[test]
fn bogus_dnssec_holds_every_method() {
    let p = policy(EVERY_METHOD);
    let prep = p.prepare(env("a@clinic.example"), msg("hi", "hello"));
    let e = prep.evaluate("x@bogus.example", false);
    let d = prep.decide(
        &e,
        vec![pgp_key(), probe("dane", Err("bogus MX answer".into()))],
    );
    assert_eq!(d.action, Action::Wait);
    assert!(
        d.explanation
            .skipped
            .iter()
            .any(|s| s.method == Method::Pgp && s.reason.contains("DNSSEC")),
        "{:?}",
        d.explanation.skipped
    );
}

#[test]
fn tls_required_no_on_a_dane_only_domain_delivers_over_dane() {
    let p = policy(EVERY_METHOD);
    let facts = MessageFacts::parse(b"Subject: hi\r\nTLS-Required: No\r\n\r\nhello\r\n", false);
    let prep = p.prepare(env("a@clinic.example"), facts);
    let e = prep.evaluate("x@strict.example", false);
    assert!(e.outcome.ignore_published);
    // The rule's floor (mta-sts) stays; the only mechanism that meets it
    // at this destination is DANE, so that is what is used.
    let d = prep.decide(
        &e,
        vec![
            probe(
                "tls-offered",
                Ok(vec![Capability::Tls {
                    level: TlsRequirement::Encrypted,
                }]),
            ),
            dane_level(TlsRequirement::Dane),
        ],
    );
    assert_eq!(
        (d.action, d.tls, d.dnssec_mx, d.published_ignored),
        (Action::Deliver, TlsRequirement::Dane, true, true)
    );
    // An opportunistic rule with TLS-Required: No: DANE is not enforced.
    let e = prep.evaluate("x@other.example", false);
    let d = prep.decide(&e, vec![dane_level(TlsRequirement::Dane)]);
    assert_eq!(
        (d.method, d.tls, d.dnssec_mx),
        (Method::Tls, TlsRequirement::Opportunistic, false)
    );
}

/// A real key wins over `[[capability]] pgp = true` (a declaration names
/// no key, so alone it is not a key: the next method is tried); a held key
/// change holds the recipient instead of falling to TLS.
#[test]
fn declared_pgp_never_shadows_a_key_and_a_held_key_holds() {
    let p = policy(EVERY_METHOD);
    let prep = p.prepare(env("a@clinic.example"), msg("hi", "hello"));
    let e = prep.evaluate("x@other.example", false);
    let declared = probe(
        "static",
        Ok(vec![Capability::Pgp {
            fingerprint: "declared".into(),
            source: "policy".into(),
        }]),
    );
    let d = prep.decide(&e, vec![declared.clone(), pgp_key()]);
    assert_eq!(
        (d.action, d.method, d.key.as_deref()),
        (Action::Deliver, Method::Pgp, Some("AB12"))
    );
    let d = prep.decide(&e, vec![declared.clone()]);
    assert_eq!((d.action, d.method), (Action::Deliver, Method::Tls));
    assert!(
        d.explanation
            .skipped
            .iter()
            .any(|s| s.method == Method::Pgp && s.reason.contains("declares")),
        "{:?}",
        d.explanation.skipped
    );
    let held = probe(
        "pgp",
        Ok(vec![Capability::PgpHeld {
            reason: "the OpenPGP key found by wkd differs from the one last used".into(),
        }]),
    );
    let d = prep.decide(&e, vec![declared, held]);
    assert_eq!((d.action, d.method), (Action::Hold, Method::Pgp));
    assert!(
        d.reason.contains("differs from the one last used"),
        "{}",
        d.reason
    );
}

/// An encrypted PDF attachment (qpdf) with nothing else in the message.
fn encrypted_pdf_message() -> MessageFacts {
    use crate::policy::fixtures;
    let pdf = fixtures::qpdf(
        &fixtures::pdf("SSN 123-45-6789", None),
        &["--encrypt", "u", "o", "256", "--"],
    );
    MessageFacts::parse(
        &fixtures::with_attachment("see attached", "application/pdf", "Jane Roe labs.pdf", &pdf),
        false,
    )
}

#[test]
fn unscannable_content_counts_as_phi() {
    let p = policy(RULES);
    for (what, facts) in [
        ("encrypted PDF", encrypted_pdf_message()),
        (
            "cut at max_scan_size",
            MessageFacts::parse(b"Subject: x\r\n\r\nhello\r\n", true),
        ),
    ] {
        let prep = p.prepare(env("a@clinic.example"), facts);
        let e = prep.evaluate("x@partner.example", false);
        assert_eq!(e.outcome.rule, "partner");
        assert_eq!(
            e.outcome.min_tls,
            TlsRequirement::MtaSts,
            "{what}: the PHI floor"
        );
        let d = prep.decide(&e, vec![tls(TlsRequirement::Verified)]);
        assert_eq!(d.action, Action::Wait, "{what}");
        assert!(d.explanation.phi, "{what}");
        assert!(
            d.explanation.detectors.is_empty(),
            "{what}: no detector fired"
        );
        assert_eq!(d.explanation.phi_reasons.len(), 1, "{what}");
        assert!(
            d.reason.contains("the content counts as PHI (unscannable "),
            "{}",
            d.reason
        );
        let json = serde_json::to_string(&d).unwrap();
        assert!(!json.contains("Jane") && !json.contains("123-45"), "{json}");
    }
    let prep = p.prepare(env("a@clinic.example"), encrypted_pdf_message());
    let d = prep.decide(
        &prep.evaluate("x@partner.example", false),
        vec![tls(TlsRequirement::Verified)],
    );
    assert_eq!(
        d.explanation.phi_reasons,
        vec!["unscannable attachment 1 (application/pdf): encrypted"]
    );
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(
        json["explanation"]["unscannable"][0],
        "attachment 1 (application/pdf): encrypted"
    );
}

#[test]
fn unscannable_is_phi_can_be_turned_off_and_needs_phi_detectors() {
    for extra in ["unscannable_is_phi = false\n", "phi_detectors = []\n"] {
        let text = RULES.replacen("[defaults]\n", &format!("[defaults]\n{extra}"), 1);
        let p = policy(&text);
        let prep = p.prepare(env("a@clinic.example"), encrypted_pdf_message());
        let e = prep.evaluate("x@partner.example", false);
        assert_eq!(e.outcome.min_tls, TlsRequirement::Opportunistic, "{extra}");
        let d = prep.decide(&e, vec![tls(TlsRequirement::Verified)]);
        assert_eq!(d.action, Action::Deliver, "{extra}");
        assert!(!d.explanation.phi);
        // What could not be read is still recorded.
        assert_eq!(d.explanation.unscannable.len(), 1, "{extra}");
    }
    // The key is checked like every other.
    assert!(
        policy_err("[defaults]\nunscannable_is_phi = \"yes\"\n").contains("unscannable_is_phi")
    );
}

/// A signed MX set without TLSA: a `verified` (here REQUIRETLS) decision
/// still takes its hosts from the validated set, never from the plain
/// resolver; an unsigned one does not ask for it.
#[test]
fn a_signed_mx_set_binds_the_route_even_without_tlsa() {
    let p = policy(EVERY_METHOD);
    let mut envelope = env("a@clinic.example");
    envelope.requiretls = true;
    let prep = p.prepare(envelope, msg("hi", "hello"));
    let e = prep.evaluate("x@signed.example", false);
    let signed = ProbeReport {
        probe: "dane",
        result: Ok(Vec::new()),
        evidence: serde_json::json!({ "domain": "signed.example", "dnssec": "secure", "dane": false }),
        cached: false,
    };
    let verified = probe(
        "static",
        Ok(vec![Capability::Tls {
            level: TlsRequirement::Verified,
        }]),
    );
    let d = prep.decide(&e, vec![signed, verified.clone()]);
    assert_eq!(
        (d.action, d.tls, d.dnssec_mx),
        (Action::Deliver, TlsRequirement::Verified, true)
    );
    let unsigned = ProbeReport {
        probe: "dane",
        result: Ok(Vec::new()),
        evidence: serde_json::json!({ "domain": "plain.example", "dnssec": "insecure", "dane": false }),
        cached: false,
    };
    let d = prep.decide(&e, vec![unsigned.clone(), verified.clone()]);
    assert_eq!((d.action, d.dnssec_mx), (Action::Wait, false));
    assert!(d.reason.contains("RFC 8689"), "{}", d.reason);
    // Without REQUIRETLS the same destination gets the verified hop.
    let prep = p.prepare(env("a@clinic.example"), msg("hi", "hello"));
    let e = prep.evaluate("x@signed.example", false);
    let d = prep.decide(&e, vec![unsigned, verified]);
    assert_eq!((d.action, d.dnssec_mx), (Action::Deliver, false));
}

/// A DANE probe's report for a DNSSEC-secure MX set without TLSA.
fn signed_mx() -> ProbeReport {
    ProbeReport {
        probe: "dane",
        result: Ok(Vec::new()),
        evidence: serde_json::json!({ "dnssec": "secure", "dane": false }),
        cached: false,
    }
}

/// RFC 8689 section 4.2.1: REQUIRETLS needs MX names from DNSSEC or an
/// MTA-STS policy, whatever the method; a smarthost is named in the
/// configuration.
#[test]
fn requiretls_needs_authenticated_hop_names() {
    let p = policy(EVERY_METHOD);
    let mut envelope = env("a@clinic.example");
    envelope.requiretls = true;
    let prep = p.prepare(envelope, msg("hi", "hello"));
    let e = prep.evaluate("x@plain.example", false);
    let verified = tls(TlsRequirement::Verified);
    for caps in [
        vec![pgp_key()],
        vec![verified.clone()],
        vec![pgp_key(), verified.clone()],
    ] {
        let d = prep.decide(&e, caps);
        assert_eq!(d.action, Action::Wait, "{d:?}");
    }
    let sts = probe(
        "mta-sts",
        Ok(vec![Capability::Tls {
            level: TlsRequirement::MtaSts,
        }]),
    );
    let d = prep.decide(&e, vec![sts]);
    assert_eq!((d.action, d.tls), (Action::Deliver, TlsRequirement::MtaSts));
    let hop = probe(
        "smarthost",
        Ok(vec![Capability::Tls {
            level: TlsRequirement::MtaSts,
        }]),
    );
    let d = prep.decide(&e, vec![hop, pgp_key()]);
    assert_eq!(
        (d.action, d.method, d.tls),
        (Action::Deliver, Method::Pgp, TlsRequirement::MtaSts)
    );
    // A level declared in a policy file names no MX host: not enough.
    let declared = probe(
        "static",
        Ok(vec![Capability::Tls {
            level: TlsRequirement::Dane,
        }]),
    );
    let d = prep.decide(&e, vec![declared]);
    assert_eq!(d.action, Action::Wait, "{d:?}");
}

/// An honoured `TLS-Required: No` sets aside what the destination
/// publishes, never what our own smarthost meets.
#[test]
fn tls_required_no_keeps_what_the_smarthost_meets() {
    let p = policy(EVERY_METHOD);
    let facts = MessageFacts::parse(b"Subject: hi\r\nTLS-Required: No\r\n\r\nhello\r\n", false);
    let prep = p.prepare(env("a@clinic.example"), facts);
    let e = prep.evaluate("x@any.example", false);
    assert!(e.outcome.ignore_published);
    for level in [
        TlsRequirement::Dane,
        TlsRequirement::MtaSts,
        TlsRequirement::Encrypted,
    ] {
        let hop = probe("smarthost", Ok(vec![Capability::Tls { level }]));
        let d = prep.decide(&e, vec![hop, pgp_key()]);
        assert_eq!((d.action, d.tls), (Action::Deliver, level), "{level:?}");
    }
}

/// On a smarthost route what the smarthost meets binds every rule: a
/// verified smarthost is never used unverified, one with only
/// unauthenticated TLS never in plaintext.
#[test]
fn what_the_smarthost_meets_binds_opportunistic_rules() {
    let p = policy(EVERY_METHOD);
    let prep = p.prepare(env("a@clinic.example"), msg("hi", "hello"));
    let e = prep.evaluate("x@any.example", false);
    for (level, want) in [
        (TlsRequirement::Dane, TlsRequirement::Dane),
        (TlsRequirement::MtaSts, TlsRequirement::MtaSts),
        (TlsRequirement::Encrypted, TlsRequirement::Encrypted),
        (TlsRequirement::Opportunistic, TlsRequirement::Opportunistic),
    ] {
        let hop = probe("smarthost", Ok(vec![Capability::Tls { level }]));
        let d = prep.decide(&e, vec![hop]);
        assert_eq!((d.action, d.tls), (Action::Deliver, want), "{level:?}");
    }
    // A smarthost that cannot be checked: nothing goes.
    let d = prep.decide(&e, vec![probe("smarthost", Err("refused".into()))]);
    assert_eq!(d.action, Action::Wait);
}

/// The key lookup failed for an address that had a key (the probe says
/// so by failing): the recipient waits, never falls to TLS.
#[test]
fn a_failed_key_lookup_for_a_known_key_holder_waits() {
    let p = policy(EVERY_METHOD);
    let prep = p.prepare(env("a@clinic.example"), msg("hi", "hello"));
    let e = prep.evaluate("x@other.example", false);
    let failed = probe(
        "pgp",
        Err("OpenPGP key lookup failed (wkd: timed out) and key AB12 was used before; waiting rather than sending without it".into()),
    );
    let d = prep.decide(&e, vec![failed]);
    assert_eq!(d.action, Action::Wait);
    assert!(d.reason.contains("was used before"), "{}", d.reason);
}

/// From review: content rules did not match content that could not be
/// read, so a rule that holds or rejects SSNs let an encrypted PDF (or a
/// scan) through on the default. Now what a rule looks for may be in the
/// unread content: a `detectors` condition matches it for every action, a
/// regex condition for `hold` and `reject`; a `reject` rule that only may
/// match holds, never bounces.
#[test]
fn content_rules_treat_unscannable_content_as_a_possible_match() {
    const CONTENT_RULES: &str = r#"
[defaults]
methods = ["tls"]
min_tls = "verified"
phi_min_tls = "verified"

[[rule]]
name = "reject-ssn"
match.recipient_domain = ["freemail.example"]
match.detectors = ["us-ssn"]
action = "reject"
reject_message = "no"

[[rule]]
name = "hold-confidential"
match.recipient_domain = ["hold.example"]
match.attachment_content = ["(?i)confidential"]
action = "hold"

[[rule]]
name = "newsletter-opportunistic"
match.recipient_domain = ["news.example"]
match.body = ["(?i)newsletter"]
methods = ["tls"]
min_tls = "opportunistic"

[[rule]]
name = "phi-to-lab-over-dane"
match.recipient_domain = ["lab.example"]
match.detectors = ["us-ssn", "dob"]
methods = ["tls"]
min_tls = "dane"
"#;
    let p = policy(CONTENT_RULES);
    let image = MessageFacts::parse(
        &crate::policy::fixtures::with_attachment(
            "hello",
            "image/png",
            "x.png",
            b"\x89PNG\r\n\x1a\nrest",
        ),
        false,
    );
    for (what, facts) in [
        ("an encrypted PDF", encrypted_pdf_message()),
        ("an image", image),
        (
            "a message cut at max_scan_size",
            MessageFacts::parse(b"Subject: x\r\n\r\nhello\r\n", true),
        ),
    ] {
        let prep = p.prepare(env("a@clinic.example"), facts);
        // Reject becomes hold, and a released recipient goes on.
        let e = prep.evaluate("x@freemail.example", false);
        assert_eq!(e.outcome.rule, "reject-ssn", "{what}");
        assert_eq!(e.outcome.action, RuleAction::Hold, "{what}: never a bounce");
        let d = prep.decide(&e, vec![]);
        assert_eq!(d.action, Action::Hold, "{what}");
        assert!(
            d.reason.contains("could not be read"),
            "{what}: {}",
            d.reason
        );
        assert!(
            d.explanation
                .matched
                .iter()
                .any(|m| m.starts_with("detectors (may be")),
            "{what}: {:?}",
            d.explanation.matched
        );
        let e = prep.evaluate("x@freemail.example", true);
        assert_eq!(e.outcome.rule, "default", "{what}: released");
        // A hold rule's regex may match the unread content.
        let e = prep.evaluate("x@hold.example", false);
        assert_eq!(
            (e.outcome.rule.as_str(), e.outcome.action),
            ("hold-confidential", RuleAction::Hold),
            "{what}"
        );
        // A deliver rule keyed on a regex must match what was read: it
        // could lower the floor.
        let e = prep.evaluate("x@news.example", false);
        assert_eq!(e.outcome.rule, "default", "{what}");
        // A deliver rule keyed on detectors treats it as PHI.
        let e = prep.evaluate("x@lab.example", false);
        assert_eq!(e.outcome.rule, "phi-to-lab-over-dane", "{what}");
        assert_eq!(e.outcome.min_tls, TlsRequirement::Dane, "{what}");
    }
    // What was read decides as before: a real SSN is rejected, clean
    // readable content matches nothing.
    let prep = p.prepare(env("a@clinic.example"), msg("x", "SSN 123-45-6789"));
    let e = prep.evaluate("x@freemail.example", false);
    assert_eq!(
        (e.outcome.rule.as_str(), e.outcome.action),
        ("reject-ssn", RuleAction::Reject)
    );
    let prep = p.prepare(env("a@clinic.example"), msg("x", "hello"));
    for rcpt in ["x@freemail.example", "x@hold.example", "x@lab.example"] {
        assert_eq!(prep.evaluate(rcpt, false).outcome.rule, "default", "{rcpt}");
    }
    // `unscannable_is_phi = false` turns this off too (weaker).
    let p = policy(&CONTENT_RULES.replacen(
        "[defaults]\n",
        "[defaults]\nunscannable_is_phi = false\n",
        1,
    ));
    let prep = p.prepare(env("a@clinic.example"), encrypted_pdf_message());
    for rcpt in ["x@freemail.example", "x@hold.example", "x@lab.example"] {
        assert_eq!(prep.evaluate(rcpt, false).outcome.rule, "default", "{rcpt}");
    }
}

/// From review: `attachment_type` matched the label only, so a PDF sent
/// as `text/plain` named `notes.txt` passed a rule that holds PDFs. The
/// type the bytes show matches too.
#[test]
fn attachment_type_rules_match_what_the_bytes_are() {
    let p = policy(
        r#"
[[rule]]
name = "hold-pdfs"
match.attachment_type = ["application/pdf"]
action = "hold"

[[rule]]
name = "no-programs"
match.attachment_type = ["application/x-msdownload", "*.exe"]
action = "reject"
reject_message = "no"
"#,
    );
    let pdf = crate::policy::fixtures::pdf("hello", None);
    for (ct, name) in [
        ("text/plain", "notes.txt"),
        ("application/octet-stream", "x"),
        ("application/pdf", "r.pdf"),
    ] {
        let facts = MessageFacts::parse(
            &crate::policy::fixtures::with_attachment("see", ct, name, &pdf),
            false,
        );
        let prep = p.prepare(env("a@clinic.example"), facts);
        assert_eq!(
            prep.evaluate("x@y.example", false).outcome.rule,
            "hold-pdfs",
            "{ct}"
        );
    }
    let mut exe = b"MZ".to_vec();
    exe.resize(0x40, 0);
    exe[0x3c] = 0x40;
    exe.extend_from_slice(b"PE\0\0rest");
    let facts = MessageFacts::parse(
        &crate::policy::fixtures::with_attachment("see", "image/png", "cat.png", &exe),
        false,
    );
    let prep = p.prepare(env("a@clinic.example"), facts);
    assert_eq!(
        prep.evaluate("x@y.example", false).outcome.rule,
        "no-programs"
    );
    // A text that starts with the same two letters is not a program.
    let facts = MessageFacts::parse(
        &crate::policy::fixtures::with_attachment("see", "text/plain", "n.txt", b"MZ Health notes"),
        false,
    );
    let prep = p.prepare(env("a@clinic.example"), facts);
    assert_eq!(prep.evaluate("x@y.example", false).outcome.rule, "default");
}
