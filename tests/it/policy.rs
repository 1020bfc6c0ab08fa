//! The policy engine end to end: decisions per recipient with evidence in
//! the audit rows, reload, fail-closed probes, hold/release, reject, tags.

use std::time::Duration;

use crate::common::{WAIT, World, message, python_send};
use crate::gateway::{self, Gateway};
use crate::world::{MxOptions, TestMx};

fn evidence(row: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(row["evidence"].as_str().unwrap()).unwrap()
}

const VERIFIED_POLICY: &str = r#"
[defaults]
methods = ["pgp", "tls", "portal"]
min_tls = "verified"

[[capability]]
recipients = ["*@dane.example.test"]
tls = "dane"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_recipients_with_different_capabilities_get_three_decisions() {
    let w = World::new().await;
    // good.example.test: STARTTLS with a certificate from the trusted CA.
    w.domain("good.example.test", "mx.good.example.test");
    let good = w
        .tls_mx(
            "mx.good.example.test",
            MxOptions::new("mx.good.example.test"),
        )
        .await;
    // plain.example.test: no STARTTLS at all, on another loopback address.
    let ip2 = gateway::fresh_ip();
    w.zone
        .add_mx("plain.example.test", 10, "mx.plain.example.test");
    w.zone.add_a("mx.plain.example.test", ip2);
    let plain = TestMx::start(MxOptions::new("mx.plain.example.test").ip(ip2).port(w.port)).await;
    // dane.example.test: declared DANE in the policy.
    w.zone
        .add_mx("dane.example.test", 10, "mx.good.example.test");
    let mut opts = w.options();
    opts.policy = VERIFIED_POLICY.into();
    let gw = Gateway::start(opts).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &[
            "x@good.example.test",
            "y@plain.example.test",
            "z@dane.example.test",
        ],
        &message("three", "hello"),
    )
    .unwrap();
    let got = good.wait_for(1, WAIT).await.unwrap();
    assert_eq!(
        got[0].rcpt_to,
        vec!["x@good.example.test"],
        "only the verified recipient went out"
    );
    let rows = gw.wait_audit(WAIT, |r| r.len() >= 3).await.unwrap();
    let row = |rcpt: &str| {
        rows.iter()
            .find(|r| r["recipient"] == rcpt)
            .unwrap()
            .clone()
    };

    let x = row("x@good.example.test");
    assert_eq!(x["outcome"], "delivered");
    assert_eq!(x["tls_requirement"], "verified");
    let ev = evidence(&x);
    assert_eq!(ev["decision"]["action"], "deliver");
    assert_eq!(ev["decision"]["explanation"]["skipped"][0]["method"], "pgp");
    let probes = ev["decision"]["explanation"]["probes"].as_array().unwrap();
    let tls_probe = probes.iter().find(|p| p["probe"] == "tls-offered").unwrap();
    assert_eq!(tls_probe["result"]["capabilities"][0]["level"], "verified");
    assert_eq!(
        tls_probe["evidence"]["checked"]["tls"]["cert_verified"],
        true
    );
    assert_eq!(ev["cert_verified"], true);

    let y = row("y@plain.example.test");
    assert_eq!(y["outcome"], "deferred");
    let ev = evidence(&y);
    assert_eq!(ev["decision"]["action"], "wait");
    assert!(
        y["smtp_reply"]
            .as_str()
            .unwrap()
            .contains("the rule needs verified"),
        "{y}"
    );
    assert_eq!(
        plain.data_commands(),
        0,
        "nothing was sent to the host without TLS"
    );

    let z = row("z@dane.example.test");
    assert_eq!(z["tls_requirement"], "dane");
    assert_eq!(
        z["outcome"], "deferred",
        "DANE cannot be checked yet: fail closed"
    );
    let ev = evidence(&z);
    assert_eq!(ev["decision"]["tls"], "dane");
    let stat = ev["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "static")
        .unwrap()
        .clone();
    assert!(
        stat["evidence"]["declared_in"][0]
            .as_str()
            .unwrap()
            .contains("policy.toml:")
    );

    // No message content in the evidence.
    for r in &rows {
        assert!(!r.to_string().contains("hello"), "{r}");
    }
    let q = gw.queue().unwrap();
    assert_eq!(q.len(), 1);
    let text = String::from_utf8_lossy(&gw.cli(&["queue", "list"]).stdout).into_owned();
    assert!(text.contains("no protection method available"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_old_policy_on_error_and_applies_a_good_one_to_queued_mail() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let mut opts = w.options();
    opts.policy = "[defaults]\nmethods = [\"tls\"]\nmin_tls = \"verified\"\n".into();
    opts.retry_base = "1h".into();
    let gw = Gateway::start(opts).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@example.test"],
        &message("reload", "x"),
    )
    .unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    assert_eq!(rows[0]["outcome"], "deferred");
    let v1 = rows[0]["policy_version"].as_str().unwrap().to_string();
    let policy_file = gw.dir.path().join("policy.d/policy.toml");

    std::fs::write(
        &policy_file,
        "[defaults]\nmethods = [\"tls\"]\nmin_tls = \"sloppy\"\n",
    )
    .unwrap();
    let out = gw.cli(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy.toml:3")
            && err.contains("defaults.min_tls")
            && err.contains("previous policy stays"),
        "{err}"
    );
    gw.cli(&["queue", "flush"]);
    let rows = gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    assert_eq!(
        rows[1]["policy_version"],
        v1.as_str(),
        "the old policy is still in force"
    );
    assert_eq!(rows[1]["outcome"], "deferred");

    std::fs::write(
        &policy_file,
        "[defaults]\nmethods = [\"tls\"]\nmin_tls = \"opportunistic\"\n",
    )
    .unwrap();
    // Picked up on SIGHUP.
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + WAIT;
    while !gw.log().contains("policy reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.cli(&["queue", "flush"]);
    mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 3).await.unwrap();
    assert_eq!(rows[2]["outcome"], "delivered");
    assert_ne!(rows[2]["policy_version"], v1.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_probe_does_not_stall_the_queue_and_fails_closed() {
    let w = World::new().await;
    // slow.example.test accepts TCP and never greets.
    let ip2 = gateway::fresh_ip();
    w.zone
        .add_mx("slow.example.test", 10, "mx.slow.example.test");
    w.zone.add_a("mx.slow.example.test", ip2);
    let _slow = TestMx::start(
        MxOptions::new("mx.slow.example.test")
            .ip(ip2)
            .port(w.port)
            .greeting_delay(Duration::from_secs(3600)),
    )
    .await;
    w.domain("fast.example.test", "mx.fast.example.test");
    let fast = w
        .tls_mx(
            "mx.fast.example.test",
            MxOptions::new("mx.fast.example.test"),
        )
        .await;
    let mut opts = w.options();
    opts.policy = "[defaults]\nmethods = [\"tls\"]\nmin_tls = \"verified\"\n".into();
    let gw = Gateway::start(opts).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["s@slow.example.test"],
        &message("slow", "x"),
    )
    .unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["f@fast.example.test"],
        &message("fast", "x"),
    )
    .unwrap();
    fast.wait_for(1, Duration::from_secs(15)).await.unwrap();
    let rows = gw
        .wait_audit(WAIT, |r| {
            r.iter().any(|r| r["recipient"] == "s@slow.example.test")
        })
        .await
        .unwrap();
    let s = rows
        .iter()
        .find(|r| r["recipient"] == "s@slow.example.test")
        .unwrap();
    assert_eq!(s["outcome"], "deferred");
    assert!(
        s["smtp_reply"].as_str().unwrap().contains("timed out"),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_release_reject_and_subject_tag() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    w.domain("clinic.example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let mut opts = w.options();
    opts.policy = r#"
[defaults]
methods = ["tls"]
min_tls = "opportunistic"
phi_min_tls = "verified"

[[rule]]
name = "quarantine-board"
match.recipient = ["board@example.test"]
action = "hold"

[[rule]]
name = "no-ssn-to-freemail"
match.recipient_domain = ["example.test"]
match.detectors = ["us-ssn"]
action = "reject"
reject_message = "SSNs may not leave by e-mail"

[[rule]]
name = "secure-tag"
match.subject_tag = "[secure]"
strip_tag = true
methods = ["tls"]
min_tls = "opportunistic"
"#
    .into();
    let gw = Gateway::start(opts).unwrap();
    // Tag stripped before delivery.
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["t@example.test"],
        &message("[secure] Lab results", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    let subject = got[0].header("Subject").unwrap();
    assert_eq!(subject.trim(), "Lab results");
    // Hold, then release.
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["board@example.test"],
        &message("minutes", "x"),
    )
    .unwrap();
    gw.wait_audit(WAIT, |r| r.iter().any(|r| r["outcome"] == "held"))
        .await
        .unwrap();
    let q = gw.queue().unwrap();
    assert_eq!(q[0]["message"]["recipients"][0]["status"], "held");
    let id = q[0]["message"]["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mx.messages().len(), 1, "held mail is not retried by time");
    let out = gw.cli(&["queue", "release", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    mx.wait_for(2, WAIT).await.unwrap();
    // Reject: the sender gets a DSN with the rule's message.
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["c@example.test"],
        &message("ssn", "SSN 123-45-6789"),
    )
    .unwrap();
    let got = mx.wait_for(3, WAIT).await.unwrap();
    let dsn = got.iter().find(|m| m.mail_from.is_empty()).expect("a DSN");
    assert!(dsn.data_str().contains("SSNs may not leave by e-mail"));
    assert!(!dsn.data_str().contains("123-45-6789"));
    gw.wait_queue_empty(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_command_explains_each_recipient() {
    let w = World::new().await;
    w.domain("good.example.test", "mx.good.example.test");
    let _good = w
        .tls_mx(
            "mx.good.example.test",
            MxOptions::new("mx.good.example.test"),
        )
        .await;
    let mut opts = w.options();
    opts.policy = VERIFIED_POLICY.into();
    let gw = Gateway::start(opts).unwrap();
    let msg = gw.dir.path().join("m.eml");
    std::fs::write(&msg, "Subject: x\r\n\r\nPatient DOB: 01/02/1960\r\n").unwrap();
    let out = gw.cli(&[
        "probe",
        "--json",
        "--from",
        "a@clinic.example.test",
        "--message",
        msg.to_str().unwrap(),
        "x@good.example.test",
        "z@dane.example.test",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The date of birth makes it PHI: verified TLS is no longer enough.
    assert_eq!(v[0]["decision"]["action"], "wait");
    assert!(
        v[0]["decision"]["explanation"]["detectors"]
            .to_string()
            .contains("dob")
    );
    assert_eq!(v[0]["decision"]["explanation"]["min_tls"], "mta-sts");
    assert_eq!(v[0]["route"]["hops"][0]["name"], "mx.good.example.test");
    assert_eq!(v[1]["decision"]["tls"], "dane");
    assert_eq!(v[1]["decision"]["action"], "deliver");
    let out = gw.cli(&["probe", "x@good.example.test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("action:         deliver")
            && text.contains("tls:            verified")
            && text.contains("probe tls-offered"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_validates_policy_files() {
    let w = World::new().await;
    let mut opts = w.options();
    opts.policy = "[[rule]]\nname = \"everything\"\nmethods = [\"tls\"]\n\n[[rule]]\nname = \"never\"\nmatch.detectors = [\"us-ssn\"]\n".into();
    // check-config on the same files.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), &opts.policy).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[server]\nhostname = \"gw.example.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"s\"\nspool_key_file = \"k\"\n[policy]\nfiles = [\"p.toml\"]\n").unwrap();
    std::process::Command::new(gateway::BIN)
        .args(["keygen", "--out"])
        .arg(dir.path().join("k"))
        .output()
        .unwrap();
    let out = std::process::Command::new(gateway::BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("p.toml:6") && err.contains("can never match"),
        "{err}"
    );
    let gw = Gateway::start(opts.clone());
    assert!(gw.is_err(), "serve refuses an unreachable rule");
    let err = format!("{:#}", gw.err().unwrap());
    assert!(
        err.contains("rule `never` can never match") && err.contains("policy.toml:6"),
        "{err}"
    );
}

/// The documents of the unit tests, made by Python and qpdf.
#[path = "../../src/policy/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phi_only_in_a_pdf_attachment_never_goes_out_on_opportunistic_tls() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    w.domain("clinic.example.test", "mx.example.test");
    // No STARTTLS at the MX: only opportunistic TLS (here, none) reaches it.
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let mut opts = w.options();
    opts.policy = r#"
[defaults]
methods = ["tls"]
min_tls = "opportunistic"
phi_min_tls = "verified"
"#
    .into();
    let gw = Gateway::start(opts).unwrap();
    let send = |to: &str, body: &[u8]| {
        python_send(gw.addr, "a@clinic.example.test", &[to], body).unwrap();
    };
    let with_pdf = |pdf: &[u8]| {
        fixtures::with_attachment(
            "Please see the attached report.",
            "application/pdf",
            "report.pdf",
            pdf,
        )
    };
    // PHI only inside the PDF's compressed content stream.
    let phi_pdf = fixtures::pdf_object_streams("Patient SSN 123-45-6789");
    send("phi@example.test", &with_pdf(&phi_pdf));
    // The same PDF, encrypted: nothing can be read, so it counts as PHI.
    let encrypted = fixtures::qpdf(&phi_pdf, &["--encrypt", "u", "o", "256", "--"]);
    send("locked@example.test", &with_pdf(&encrypted));
    // A PDF without PHI goes out on the opportunistic floor.
    send(
        "clean@example.test",
        &with_pdf(&fixtures::pdf_object_streams("Clinic opening hours")),
    );

    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].rcpt_to, vec!["clean@example.test"]);
    let rows = gw
        .wait_audit(WAIT, |r| {
            ["phi@example.test", "locked@example.test"]
                .iter()
                .all(|a| r.iter().any(|r| r["recipient"] == *a))
        })
        .await
        .unwrap();
    let row = |rcpt: &str| {
        rows.iter()
            .find(|r| r["recipient"] == rcpt)
            .unwrap()
            .clone()
    };
    for (rcpt, reason) in [
        ("phi@example.test", "detector us-ssn"),
        (
            "locked@example.test",
            "unscannable attachment 1 (application/pdf): encrypted",
        ),
    ] {
        let r = row(rcpt);
        assert_eq!(r["outcome"], "deferred", "{r}");
        let ev = evidence(&r);
        assert_eq!(ev["decision"]["action"], "wait", "{ev}");
        assert_eq!(ev["decision"]["tls"], "verified", "{ev}");
        assert_eq!(ev["decision"]["explanation"]["phi"], true, "{ev}");
        assert_eq!(
            ev["decision"]["explanation"]["phi_reasons"][0], reason,
            "{ev}"
        );
        let text = r.to_string();
        assert!(
            !text.contains("123-45-6789") && !text.contains("report.pdf"),
            "{text}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mx.messages().len(), 1, "nothing with PHI went out");
}
