//! Decision time for a cached recipient against a policy of 200 rules and
//! a 1 MB message body with every PHI detector on.
//!
//! `cargo bench --bench policy`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sealgate::policy::facts::MessageFacts;
use sealgate::policy::{Envelope, Policy, TlsRequirement};
use sealgate::probe::{Capability, ProbeReport};

/// 200 rules of every kind; none matches the benchmark message until the
/// last, so every rule is evaluated.
fn policy_text() -> String {
    let mut s = String::from(
        "[defaults]\nmethods = [\"pgp\", \"smime\", \"tls\", \"portal\"]\nmin_tls = \"verified\"\n",
    );
    for i in 0..199 {
        s.push_str(&format!("\n[[rule]]\nname = \"rule-{i}\"\n"));
        match i % 5 {
            0 => s.push_str(&format!("match.recipient_domain = [\"partner{i}.example\", \"*.partner{i}.example\"]\nmethods = [\"tls\"]\nmin_tls = \"opportunistic\"\n")),
            1 => s.push_str(&format!("match.body = [\"(?i)project-code-{i}\\\\b\"]\naction = \"hold\"\n")),
            2 => s.push_str(&format!("match.header = [{{ name = \"X-Case-{i}\", pattern = \"^yes$\" }}]\nmethods = [\"portal\"]\n")),
            3 => s.push_str(&format!("match.sender = [\"billing-{i}@clinic.example\"]\nmatch.detectors = [\"us-ssn\", \"npi\"]\nmethods = [\"pgp\", \"portal\"]\n")),
            _ => s.push_str(&format!("match.subject_tag = \"[tag-{i}]\"\nstrip_tag = true\nmethods = [\"tls\"]\n")),
        }
    }
    s.push_str("\n[[rule]]\nname = \"last\"\nmatch.recipient_domain = [\"dest.example\"]\nmethods = [\"tls\"]\n");
    s
}

/// About 1 MB of clinical-looking text with a few identifiers in it.
fn message() -> Vec<u8> {
    let mut m = String::from(
        "From: a@clinic.example\r\nTo: b@dest.example\r\nSubject: Referral\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    let para = "The patient was seen in clinic today for follow-up of hypertension and type 2 diabetes. \
                Blood pressure was 132/84, heart rate 72. Medication list reviewed; no changes. \
                Next appointment in three months. Please call 555-0100 with questions.\r\n";
    let mut i = 0;
    while m.len() < 1_000_000 {
        m.push_str(para);
        if i % 500 == 0 {
            m.push_str(
                "Patient DOB: 03/14/1961, MRN 0045521, diagnosis E11.9, NPI 1234567893.\r\n",
            );
        }
        i += 1;
    }
    m.into_bytes()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, policy_text()).expect("write policy");
    let policy = Policy::load(&[file.display().to_string()]).expect("policy loads");
    assert_eq!(policy.rules().len(), 200);
    let raw = message();
    let envelope = Envelope {
        sender: "a@clinic.example".into(),
        client_ip: Some("10.0.0.5".parse().unwrap()),
        auth_user: None,
        size: raw.len() as u64,
        requiretls: false,
    };
    let cached = vec![ProbeReport {
        probe: "tls-offered",
        result: Ok(vec![Capability::Tls {
            level: TlsRequirement::Verified,
        }]),
        evidence: serde_json::Value::Null,
        cached: true,
    }];

    let mut g = c.benchmark_group("policy");
    g.sample_size(20);
    g.bench_function("parse 1 MB message", |b| {
        b.iter(|| MessageFacts::parse(black_box(&raw), false))
    });
    let facts = MessageFacts::parse(&raw, false);
    g.bench_function(
        "decide: 200 rules, 1 MB body, detectors on, cached probes",
        |b| {
            b.iter(|| {
                let prepared = policy.prepare(envelope.clone(), facts.clone());
                let eval = prepared.evaluate("b@dest.example", false);
                prepared.decide(&eval, cached.clone())
            })
        },
    );
    let prepared = policy.prepare(envelope.clone(), facts.clone());
    g.bench_function("decide one more recipient of a prepared message", |b| {
        b.iter(|| {
            let eval = prepared.evaluate(black_box("c@dest.example"), false);
            prepared.decide(&eval, cached.clone())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
