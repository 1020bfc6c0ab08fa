//! End to end: a real SMTP client → the sealgate binary → test MX hosts
//! found through the loopback DNS server, with audit rows checked.

use std::time::Duration;

use crate::common::{WAIT, World, message, python_send};
use crate::gateway::Gateway;
use crate::world::{Aiosmtpd, MxOptions, Script, SmtpClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_message_is_delivered_by_mx_in_plaintext_when_no_starttls() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let gw = w.gateway().unwrap();
    let body = message("hello", "line one\r\n.leading dot\r\nline three");
    python_send(gw.addr, "a@clinic.example.test", &["b@example.test"], &body).unwrap();
    let got = match mx.wait_for(1, WAIT).await {
        Ok(g) => g,
        Err(e) => panic!("{e}\n{}\n{:#?}", gw.log(), gw.audit_rows()),
    };
    assert_eq!(got[0].mail_from, "a@clinic.example.test");
    assert_eq!(got[0].rcpt_to, vec!["b@example.test"]);
    assert!(got[0].tls.is_none());
    let data = got[0].data_str();
    assert!(
        data.starts_with("Received: from client.example.test"),
        "{data}"
    );
    assert!(
        data.ends_with(std::str::from_utf8(&body).unwrap().trim_end_matches("\r\n"))
            || data.contains("line one\r\n.leading dot\r\nline three"),
        "{data}"
    );
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    let row = &rows[0];
    assert_eq!(row["outcome"], "delivered");
    assert_eq!(row["method"], "plaintext");
    assert_eq!(row["recipient"], "b@example.test");
    assert_eq!(row["remote_host"], "mx.example.test");
    assert_eq!(row["remote_ip"], w.ip.to_string());
    assert!(row["smtp_reply"].as_str().unwrap().starts_with("250"));
    assert_eq!(row["body_sha256"].as_str().unwrap().len(), 64);
    gw.wait_queue_empty(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_at_the_mx_is_used_and_the_certificate_checked() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w
        .tls_mx("mx.example.test", MxOptions::new("mx.example.test"))
        .await;
    let gw = w.gateway().unwrap();
    let mut c = SmtpClient::connect(gw.addr).await.unwrap();
    c.ehlo("client.example.test").await.unwrap();
    let r = c
        .send_mail(
            "a@clinic.example.test",
            &["b@example.test"],
            &message("tls", "secret"),
        )
        .await
        .unwrap();
    assert_eq!(r.0, 250, "{r:?}");
    let got = mx.wait_for(1, WAIT).await.unwrap();
    let tls = got[0].tls.as_ref().expect("delivered over TLS");
    assert_eq!(tls.sni.as_deref(), Some("mx.example.test"));
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    assert_eq!(rows[0]["method"], "tls");
    assert!(
        rows[0]["tls_version"]
            .as_str()
            .unwrap()
            .starts_with("TLSv1.")
    );
    assert!(!rows[0]["tls_cipher"].as_str().unwrap().is_empty());
    let ev: serde_json::Value =
        serde_json::from_str(rows[0]["evidence"].as_str().unwrap()).unwrap();
    assert_eq!(ev["cert_verified"], true, "{ev}");
    assert_eq!(
        ev["attempt"]["tls"]["peer_cert_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_still_encrypts_opportunistically_and_says_so() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let cert = crate::world::pki::self_signed(&["mx.example.test"]);
    let mx = w.mx(MxOptions::new("mx.example.test").tls(&cert)).await;
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@example.test"],
        &message("s", "b"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].tls.is_some());
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    let ev: serde_json::Value =
        serde_json::from_str(rows[0]["evidence"].as_str().unwrap()).unwrap();
    assert_eq!(ev["cert_verified"], false, "{ev}");
    assert!(ev["attempt"]["tls"]["cert_error"].as_str().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_share_one_transaction_and_connections_are_reused() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let gw = w.gateway().unwrap();
    let rcpts = ["b@example.test", "c@example.test", "d@example.test"];
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &rcpts,
        &message("one", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert_eq!(
        got[0].rcpt_to.len(),
        3,
        "one transaction for three recipients"
    );
    gw.wait_audit(WAIT, |r| r.len() == 3).await.unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["e@example.test"],
        &message("two", "y"),
    )
    .unwrap();
    mx.wait_for(2, WAIT).await.unwrap();
    assert_eq!(mx.transactions(), 2);
    assert_eq!(mx.connections(), 1, "second message reused the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failure_is_retried_and_then_delivered() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w
        .mx(MxOptions::new("mx.example.test")
            .rcpt_script("b@example.test", Script::first([(451, "4.2.0 try later")])))
        .await;
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@example.test"],
        &message("retry", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].rcpt_to, vec!["b@example.test"]);
    let rows = gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    assert_eq!(rows[0]["outcome"], "deferred");
    assert!(rows[0]["smtp_reply"].as_str().unwrap().starts_with("451"));
    assert_eq!(rows[1]["outcome"], "delivered");
    gw.wait_queue_empty(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_bounces_that_recipient_only_with_a_dsn() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    w.domain("clinic.example.test", "mx.example.test");
    let mx = w
        .mx(MxOptions::new("mx.example.test").rcpt_script(
            "nobody@example.test",
            Script::always(550, "5.1.1 no such user"),
        ))
        .await;
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@example.test", "nobody@example.test"],
        &message("Lab results for Jane Doe", "x"),
    )
    .unwrap();
    // The good recipient, then the DSN to the sender.
    let got = mx.wait_for(2, WAIT).await.unwrap();
    assert_eq!(got[0].rcpt_to, vec!["b@example.test"]);
    let dsn = &got[1];
    assert_eq!(dsn.mail_from, "", "DSNs use the null sender");
    assert_eq!(dsn.rcpt_to, vec!["a@clinic.example.test"]);
    let text = dsn.data_str();
    assert!(
        text.contains("multipart/report; report-type=delivery-status"),
        "{text}"
    );
    assert!(text.contains("Final-Recipient: rfc822;nobody@example.test"));
    assert!(text.contains("Status: 5.1.1"));
    assert!(text.contains("Action: failed"));
    assert!(!text.contains("Jane Doe"), "no subject (PHI) in the DSN");
    let rows = gw.wait_audit(WAIT, |r| r.len() == 3).await.unwrap();
    let bounced: Vec<_> = rows.iter().filter(|r| r["outcome"] == "bounced").collect();
    assert_eq!(bounced.len(), 1);
    assert_eq!(bounced[0]["recipient"], "nobody@example.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_rejection_and_nonexistent_domain() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    w.zone.add_soa("example.test");
    let mx = w
        .mx(MxOptions::new("mx.example.test")
            .data_script(Script::first([(554, "5.7.1 rejected by content filter")])))
        .await;
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "<>".trim_matches(['<', '>']),
        &["b@example.test", "x@nxdomain.example.test"],
        &message("s", "b"),
    )
    .unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    for r in &rows {
        assert_eq!(r["outcome"], "bounced", "{r}");
    }
    // Null sender: no DSN is generated.
    gw.wait_queue_empty(WAIT).await.unwrap();
    assert_eq!(mx.transactions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_preference_order_and_fallback_to_the_next_host() {
    let w = World::new().await;
    w.zone.add_mx("example.test", 10, "mx1.example.test");
    w.zone.add_mx("example.test", 20, "mx2.example.test");
    // mx1 has an address where nothing listens; mx2 is the world's MX.
    let dead = crate::gateway::fresh_ip();
    w.zone.add_a("mx1.example.test", dead);
    w.zone.add_a("mx2.example.test", w.ip);
    let mx = w.mx(MxOptions::new("mx2.example.test")).await;
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@example.test"],
        &message("s", "b"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    assert_eq!(rows[0]["remote_host"], "mx2.example.test");
    let ev: serde_json::Value =
        serde_json::from_str(rows[0]["evidence"].as_str().unwrap()).unwrap();
    assert_eq!(
        ev["attempt"]["hosts"],
        serde_json::json!(["mx1.example.test", "mx2.example.test"])
    );
    assert!(
        ev["attempt"]["earlier_failures"][0]
            .as_str()
            .unwrap()
            .contains("mx1.example.test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_mx_when_the_domain_has_only_an_address() {
    let w = World::new().await;
    w.zone.add_a("example.test", w.ip);
    let mx = w.mx(MxOptions::new("example.test")).await;
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@example.test"],
        &message("s", "b"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_mail_survives_sigkill_and_is_delivered_after_restart() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    // No MX listening yet: the message is deferred.
    let mut gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@example.test"],
        &message("kill", "x"),
    )
    .unwrap();
    gw.wait_audit(WAIT, |r| r.iter().any(|r| r["outcome"] == "deferred"))
        .await
        .unwrap();
    gw.kill();
    let queued = gw.queue().unwrap();
    assert_eq!(
        queued.len(),
        1,
        "read straight from the spool while the daemon is down"
    );
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    gw.spawn().unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].data_str().contains("Subject: kill"));
    gw.wait_queue_empty(WAIT).await.unwrap();
    let out = gw.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smarthost_receives_everything() {
    let w = World::new().await;
    w.zone.add_a("relay.example.test", w.ip);
    let relay = w
        .tls_mx("relay.example.test", MxOptions::new("relay.example.test"))
        .await;
    // The recipient domain's DNSSEC is broken: not our hop, so it does not matter.
    w.zone.add_mx("one.example.test", 10, "mx.one.example.test");
    w.zone.set_bogus("one.example.test", true);
    let mut opts = w.options();
    opts.smarthost = Some(format!("relay.example.test:{}", w.port));
    let gw = Gateway::start(opts).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@one.example.test", "c@two.example.test"],
        &message("s", "b"),
    )
    .unwrap();
    let got = relay.wait_for(1, WAIT).await.unwrap();
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, vec!["b@one.example.test", "c@two.example.test"]);
    assert!(got[0].tls.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_cli_lists_flushes_and_removes() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mut opts = w.options();
    opts.retry_base = "1h".into();
    let mut gw = Gateway::start(opts).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@example.test"],
        &message("q", "x"),
    )
    .unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["c@example.test"],
        &message("q2", "x"),
    )
    .unwrap();
    gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    let q = gw.queue().unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(q[0]["message"]["recipients"][0]["status"], "deferred");
    let text = gw.cli(&["queue", "list"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("b@example.test") && text.contains("deferred"),
        "{text}"
    );
    let id = q[0]["message"]["id"].as_str().unwrap().to_string();
    let out = gw.cli(&["queue", "remove", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(gw.queue().unwrap().len(), 1);
    // Flush brings the retry forward.
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let out = gw.cli(&["queue", "flush"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    mx.wait_for(1, WAIT).await.unwrap();
    gw.wait_queue_empty(WAIT).await.unwrap();
    // Without a daemon: flush says so clearly, list reads the spool.
    gw.stop().unwrap();
    let out = gw.cli(&["queue", "flush"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sealgate daemon is listening"));
    let out = gw.cli(&["queue", "list"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("empty"));
    assert_eq!(
        mx.messages().len(),
        1,
        "the removed message was never delivered"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_failing_past_max_age_bounce_with_a_dsn() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    w.domain("clinic.example.test", "mx.example.test");
    let mx = w
        .mx(MxOptions::new("mx.example.test").rcpt_script(
            "late@example.test",
            Script::always(451, "4.3.0 try again later"),
        ))
        .await;
    let mut opts = w.options();
    opts.max_age = "3s".into();
    let gw = Gateway::start(opts).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["late@example.test"],
        &message("expiry", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    let text = got[0].data_str();
    assert_eq!(got[0].mail_from, "");
    assert!(
        text.contains("Status: 4.4.7")
            && text.contains("Final-Recipient: rfc822;late@example.test"),
        "{text}"
    );
    assert!(text.contains("delivery time expired"), "{text}");
    let rows = gw
        .wait_audit(WAIT, |r| r.iter().any(|r| r["outcome"] == "bounced"))
        .await
        .unwrap();
    assert!(
        rows.iter()
            .filter(|r| r["recipient"] == "late@example.test")
            .count()
            >= 2,
        "deferred at least once before bouncing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smarthost_auth_is_sent_only_inside_tls() {
    let w = World::new().await;
    w.zone.add_a("relay.example.test", w.ip);
    let relay = w
        .tls_mx(
            "relay.example.test",
            MxOptions::new("relay.example.test").ehlo_keyword("AUTH PLAIN LOGIN"),
        )
        .await;
    let pw = w.dir.path().join("relay.pw");
    std::fs::write(&pw, "s3cret-relay\n").unwrap();
    let mut opts = w.options();
    opts.smarthost = Some(format!("relay.example.test:{}", w.port));
    opts.delivery_extra = format!(
        "[delivery.smarthost_auth]\nusername = \"gw\"\npassword_file = {:?}\n",
        pw.display().to_string()
    );
    let gw = Gateway::start(opts).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@one.example.test"],
        &message("auth", "x"),
    )
    .unwrap();
    relay.wait_for(1, WAIT).await.unwrap();
    let lines: Vec<String> = relay.transcript().into_iter().map(|(_, l)| l).collect();
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode("\0gw\0s3cret-relay");
    let auth = lines
        .iter()
        .position(|l| l.contains(&format!("AUTH PLAIN {token}")))
        .expect("AUTH PLAIN with the configured credentials");
    let starttls = lines
        .iter()
        .position(|l| l.contains("STARTTLS"))
        .expect("STARTTLS first");
    assert!(
        starttls < auth,
        "credentials only after STARTTLS: {lines:?}"
    );
}

/// Options under which a deferral would show: the first retry is ten
/// minutes away, and pooled connections stay idle-valid for as long, so a
/// message that arrives within the tests' bounded waits was delivered at
/// its first attempt.
fn no_quick_retry(w: &World) -> crate::gateway::GatewayOptions {
    let mut opts = w.options();
    opts.retry_base = "10m".into();
    opts.retry_max = "1h".into();
    opts.delivery_extra = "idle_timeout = \"10m\"\n".into();
    opts
}

/// Every audit row says delivered: nothing was deferred on the way.
async fn all_delivered(gw: &Gateway, n: usize) {
    let rows = gw.wait_audit(WAIT, |r| r.len() >= n).await.unwrap();
    for r in &rows {
        assert_eq!(r["outcome"], "delivered", "{r:#}\n{}", gw.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_next_hop_gets_the_next_message_at_once() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let addr = std::net::SocketAddr::from((w.ip, w.port));
    let mut hop = Aiosmtpd::start(addr, &w.dir.path().join("before"))
        .await
        .unwrap();
    let gw = Gateway::start(no_quick_retry(&w)).unwrap();
    let (from, to) = ("a@clinic.example.test", ["b@example.test"]);
    python_send(gw.addr, from, &to, &message("first", "x")).unwrap();
    hop.wait_for(1, WAIT).await.unwrap();
    all_delivered(&gw, 1).await;
    // The next hop restarts: the connection sealgate pooled is gone.
    hop.kill();
    let after = Aiosmtpd::start(addr, &w.dir.path().join("after"))
        .await
        .unwrap();
    python_send(gw.addr, from, &to, &message("second", "y")).unwrap();
    let got = match after.wait_for(1, WAIT).await {
        Ok(g) => g,
        Err(e) => panic!("{e}\n{:#?}\n{}", gw.audit_rows(), gw.log()),
    };
    assert!(got[0].contains("Subject: second"), "{}", got[0]);
    all_delivered(&gw, 2).await;
    gw.wait_queue_empty(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connection_closed_right_after_the_last_reply_is_replaced() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w
        .mx(MxOptions::new("mx.example.test").hang_up_after_data())
        .await;
    let gw = Gateway::start(no_quick_retry(&w)).unwrap();
    for (i, subject) in ["one", "two", "three"].iter().enumerate() {
        python_send(
            gw.addr,
            "a@clinic.example.test",
            &["b@example.test"],
            &message(subject, "x"),
        )
        .unwrap();
        if let Err(e) = mx.wait_for(i + 1, WAIT).await {
            panic!("{e}\n{:#?}\n{}", gw.audit_rows(), gw.log());
        }
        all_delivered(&gw, i + 1).await;
    }
    assert_eq!(mx.connections(), 3, "one new connection per message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_connection_refusing_mail_with_421_is_replaced() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    // The second MAIL FROM (the first on the reused connection) gets 421
    // and the server hangs up; the third (on a new connection) is accepted.
    let mx = w
        .mx(
            MxOptions::new("mx.example.test").mail_script(Script::first([
                (250, "2.1.0 ok"),
                (421, "4.3.2 shutting down"),
            ])),
        )
        .await;
    let gw = Gateway::start(no_quick_retry(&w)).unwrap();
    let to = ["b@example.test"];
    python_send(gw.addr, "a@clinic.example.test", &to, &message("one", "x")).unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    all_delivered(&gw, 1).await;
    python_send(gw.addr, "a@clinic.example.test", &to, &message("two", "y")).unwrap();
    if let Err(e) = mx.wait_for(2, WAIT).await {
        panic!("{e}\n{:#?}\n{}", gw.audit_rows(), gw.log());
    }
    all_delivered(&gw, 2).await;
    assert_eq!(mx.connections(), 2);
    assert_eq!(mx.messages().len(), 2, "each message exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_connection_dropped_at_mail_is_replaced() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    // The second MAIL FROM: the server closes without a reply (end of
    // stream at the first command of the reused connection).
    let mx = w
        .mx(MxOptions::new("mx.example.test")
            .mail_script(Script::first([(250, "2.1.0 ok"), (0, "")])))
        .await;
    let gw = Gateway::start(no_quick_retry(&w)).unwrap();
    let to = ["b@example.test"];
    python_send(gw.addr, "a@clinic.example.test", &to, &message("one", "x")).unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    all_delivered(&gw, 1).await;
    python_send(gw.addr, "a@clinic.example.test", &to, &message("two", "y")).unwrap();
    if let Err(e) = mx.wait_for(2, WAIT).await {
        panic!("{e}\n{:#?}\n{}", gw.audit_rows(), gw.log());
    }
    all_delivered(&gw, 2).await;
    assert_eq!(mx.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_connection_failing_too_defers_after_one_reconnect() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    // After the first message every MAIL FROM gets 421.
    let mx = w
        .mx(MxOptions::new("mx.example.test")
            .mail_script(Script::first([(250, "2.1.0 ok")]).then(421, "4.3.2 shutting down")))
        .await;
    let gw = Gateway::start(no_quick_retry(&w)).unwrap();
    let to = ["b@example.test"];
    python_send(gw.addr, "a@clinic.example.test", &to, &message("one", "x")).unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    all_delivered(&gw, 1).await;
    python_send(gw.addr, "a@clinic.example.test", &to, &message("two", "y")).unwrap();
    let rows = gw
        .wait_audit(WAIT, |r| r.iter().any(|r| r["outcome"] == "deferred"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    // The reused connection, then exactly one new one: no loop.
    assert_eq!(mx.connections(), 2, "{:?}", mx.transcript());
    let mails = mx.verbs().iter().filter(|v| *v == "MAIL").count();
    assert_eq!(mails, 3, "{:?}", mx.transcript());
    assert_eq!(mx.data_commands(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_after_data_started_is_not_retried_at_once() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    // The second message: the server takes the data and hangs up without
    // a reply. It may have been delivered, so only the retry backoff may
    // send it again (at least once, never in a loop).
    let mx = w
        .mx(MxOptions::new("mx.example.test")
            .data_script(Script::first([(250, "2.0.0 ok"), (0, "")])))
        .await;
    let gw = Gateway::start(no_quick_retry(&w)).unwrap();
    let to = ["b@example.test"];
    python_send(gw.addr, "a@clinic.example.test", &to, &message("one", "x")).unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    all_delivered(&gw, 1).await;
    python_send(gw.addr, "a@clinic.example.test", &to, &message("two", "y")).unwrap();
    let rows = gw
        .wait_audit(WAIT, |r| r.iter().any(|r| r["outcome"] == "deferred"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert_eq!(mx.data_commands(), 2, "{:?}", mx.transcript());
    assert_eq!(mx.connections(), 1);
}

/// A message whose header fields name a patient in every way a header
/// can: display names (quoted, encoded, folded), comments, a group name.
fn named_message() -> Vec<u8> {
    concat!(
        "From: \"Doe, Jane (patient)\" <a@clinic.example.test>\r\n",
        "To: =?utf-8?q?J=C3=BCrgen?=\r\n =?utf-8?q?_M=C3=BCller?= <nobody@example.test>\r\n",
        "Cc: b@example.test (John Doe), Trial Group: c@example.test;\r\n",
        "Reply-To: Marisol Underhill <r@clinic.example.test>\r\n",
        "Subject: Lab results for Jane Doe\r\n",
        "Date: Sun, 29 Nov 2026 10:00:00 +0000\r\n",
        "Message-ID: <named.1@clinic.example.test>\r\n",
        "\r\n",
        "Dear Jane Doe, your results are in.\r\n",
    )
    .as_bytes()
    .to_vec()
}

const NAME_TEXT: &[&str] = &[
    "Jane",
    "Doe",
    "patient",
    "Jürgen",
    "Müller",
    "J=C3=BCrgen",
    "M=C3=BCller",
    "John",
    "Trial",
    "Marisol",
    "Underhill",
    "Lab results",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_reaches_the_sender_and_names_no_one() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    w.domain("clinic.example.test", "mx.example.test");
    // The remote's refusal echoes a name, as some servers do.
    let mx = w
        .mx(MxOptions::new("mx.example.test").rcpt_script(
            "nobody@example.test",
            Script::always(550, "5.1.1 <nobody@example.test>: no mailbox for Jane Doe"),
        ))
        .await;
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["nobody@example.test"],
        &named_message(),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    let dsn = &got[0];
    assert_eq!(dsn.mail_from, "");
    assert_eq!(dsn.rcpt_to, vec!["a@clinic.example.test"]);
    let text = dsn.data_str();
    let lower = text.to_lowercase();
    for name in NAME_TEXT {
        assert!(
            !lower.contains(&name.to_lowercase()),
            "{name} in the DSN:\n{text}"
        );
    }
    assert!(
        text.contains("Final-Recipient: rfc822;nobody@example.test"),
        "{text}"
    );
    assert!(
        text.contains("Message-ID: <named.1@clinic.example.test>"),
        "{text}"
    );
    assert!(text.contains("From: <a@clinic.example.test>"), "{text}");
    assert!(text.contains("To: <nobody@example.test>"), "{text}");
    // Read by Python's email package: an RFC 3464 report whose status part
    // holds the per-message block and one block for the recipient.
    let tree = crate::common::python_mime_tree(
        &dsn.data,
        r#"
status = list(msg.iter_parts())[1]
blocks = status.get_payload()
print(len(blocks), blocks[0]['Reporting-MTA'], blocks[1]['Final-Recipient'], blocks[1]['Action'], blocks[1]['Status'])
print(msg['Auto-Submitted'], msg['To'])
"#,
    );
    let lines: Vec<&str> = tree.lines().collect();
    assert!(
        lines[0].starts_with("0 multipart/report ")
            && lines[0].contains("('report-type', 'delivery-status')")
            && lines[0].ends_with("[]"),
        "{tree}"
    );
    // (Python reads each block of the status part as a part of its own.)
    let parts: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("1 "))
        .collect();
    assert_eq!(parts.len(), 3, "{tree}");
    assert!(parts[0].starts_with("1 text/plain"), "{tree}");
    assert!(parts[1].starts_with("1 message/delivery-status"), "{tree}");
    assert!(parts[2].starts_with("1 text/rfc822-headers"), "{tree}");
    assert!(
        tree.contains("2 dns;gateway.example.test rfc822;nobody@example.test failed 5.1.1\n"),
        "{tree}"
    );
    assert!(
        tree.contains("auto-replied a@clinic.example.test\n"),
        "{tree}"
    );
    assert!(!tree.contains("Defect"), "{tree}");
    // The DSN was decided by the policy (its default here), not waved through.
    let rows = gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    let row = rows
        .iter()
        .find(|r| r["recipient"] == "a@clinic.example.test")
        .unwrap();
    assert_eq!(row["outcome"], "delivered");
    assert_eq!(row["policy_rule"], "default", "{row:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_waits_when_its_destination_cannot_meet_the_policy() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w
        .mx(MxOptions::new("mx.example.test").rcpt_script(
            "nobody@example.test",
            Script::always(550, "5.1.1 no such user"),
        ))
        .await;
    // The sender's domain: a server without STARTTLS, and a rule that
    // wants verified TLS for it.
    let ip2 = crate::gateway::fresh_ip();
    w.zone
        .add_mx("clinic.example.test", 10, "mx.clinic.example.test");
    w.zone.add_a("mx.clinic.example.test", ip2);
    let clinic = crate::world::TestMx::start(
        MxOptions::new("mx.clinic.example.test")
            .ip(ip2)
            .port(w.port),
    )
    .await;
    let mut opts = w.options();
    opts.retry_base = "10m".into();
    opts.retry_max = "1h".into();
    opts.policy = format!(
        "{}\n[[rule]]\nname = \"own-domain-verified\"\nmatch.recipient_domain = [\"clinic.example.test\"]\nmethods = [\"tls\"]\nmin_tls = \"verified\"\n",
        crate::gateway::OPPORTUNISTIC_POLICY
    );
    let gw = Gateway::start(opts).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["nobody@example.test"],
        &message("s", "b"),
    )
    .unwrap();
    let rows = gw
        .wait_audit(WAIT, |r| {
            r.iter().any(|r| r["recipient"] == "a@clinic.example.test")
        })
        .await
        .unwrap();
    let row = rows
        .iter()
        .find(|r| r["recipient"] == "a@clinic.example.test")
        .unwrap();
    assert_eq!(row["outcome"], "deferred", "{row:#}");
    assert_eq!(row["policy_rule"], "own-domain-verified");
    let ev: serde_json::Value = serde_json::from_str(row["evidence"].as_str().unwrap()).unwrap();
    assert_eq!(ev["decision"]["action"], "wait", "{ev:#}");
    assert!(
        clinic.messages().is_empty(),
        "the DSN did not go in plaintext"
    );
    assert_eq!(clinic.transactions(), 0);
    assert_eq!(mx.messages().len(), 0);
}

/// A domain with fifteen MX hosts: at most ten are tried (most preferred
/// first), so a hostile domain cannot hold a delivery slot by listing
/// hundreds of dead hosts. Here the only live one is the fifteenth: it is
/// never reached and the recipient is deferred after ten refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_ten_mx_hosts_are_tried() {
    let w = World::new().await;
    for i in 1..=14u16 {
        let host = format!("dead{i}.many.example.test");
        w.zone.add_mx("many.example.test", 10 + i, &host);
        w.zone.add_a(&host, crate::gateway::fresh_ip());
    }
    w.zone
        .add_mx("many.example.test", 99, "live.many.example.test");
    w.zone.add_a("live.many.example.test", w.ip);
    let mx = w.mx(MxOptions::new("live.many.example.test")).await;
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@many.example.test"],
        &message("many", "b"),
    )
    .unwrap();
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_eq!(rows[0]["outcome"], "deferred", "{:#?}", rows[0]);
    let ev: serde_json::Value =
        serde_json::from_str(rows[0]["evidence"].as_str().unwrap()).unwrap();
    let hosts = ev["attempt"]["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 10, "{ev}");
    assert_eq!(hosts[0], "dead1.many.example.test", "most preferred first");
    assert!(mx.messages().is_empty());
}
