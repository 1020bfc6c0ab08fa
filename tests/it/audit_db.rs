//! Audit rows on SQLite and PostgreSQL, tamper detection, and a database
//! outage during delivery (through a TCP proxy the test can cut).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::Connection;

use crate::common::{WAIT, World, message, python_send};
use crate::gateway::Gateway;
use crate::world::MxOptions;

/// `DATABASE_URL`, or the local default. A test that cannot reach it fails.
fn pg_base() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh database on the PostgreSQL server, dropped on drop.
struct PgDb {
    name: String,
    base: String,
}

impl PgDb {
    async fn create() -> PgDb {
        let base = pg_base();
        let name = unique_db_name();
        let mut c = sqlx::PgConnection::connect(&base)
            .await
            .expect("PostgreSQL must be reachable at DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .unwrap();
        PgDb { name, base }
    }

    /// URL of this database on `host:port` (for the proxy) or the server.
    fn url_via(&self, hostport: Option<String>) -> String {
        let (scheme_auth, rest) = self.base.split_once('@').unwrap();
        let server = rest.split('/').next().unwrap();
        format!(
            "{scheme_auth}@{}/{}",
            hostport.unwrap_or_else(|| server.to_string()),
            self.name
        )
    }

    async fn count(&self) -> i64 {
        let mut c = sqlx::PgConnection::connect(&self.url_via(None))
            .await
            .unwrap();
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM audit_log")
            .fetch_one(&mut c)
            .await
            .unwrap_or(0)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let base = self.base.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&base).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A database name no other test, here or in another process, can have:
/// 64 random bits from the OS, the process id and a per-process counter
/// (a clock-derived number once gave two tests the same name).
fn unique_db_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let random = u64::from_be_bytes(sealgate::util::random_bytes::<8>());
    format!(
        "sealgate_it_{}_{}_{random:016x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[test]
fn test_database_names_never_repeat() {
    let names: std::collections::HashSet<String> = (0..10_000).map(|_| unique_db_name()).collect();
    assert_eq!(names.len(), 10_000);
    // PostgreSQL truncates identifiers at 63 bytes.
    assert!(
        names
            .iter()
            .all(|n| n.len() <= 63 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rows_verify_and_an_edit_is_caught() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let gw = w.gateway().unwrap();
    for i in 0..3 {
        python_send(
            gw.addr,
            "a@clinic.example.test",
            &[&format!("r{i}@example.test")],
            &message("s", "b"),
        )
        .unwrap();
    }
    mx.wait_for(3, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 3).await.unwrap();
    for r in &rows {
        for field in [
            "queue_id",
            "message_id",
            "sender",
            "recipient",
            "method",
            "policy_rule",
            "policy_version",
            "remote_host",
            "smtp_reply",
            "body_sha256",
            "ts",
            "row_hash",
            "prev_hash",
        ] {
            assert!(r[field].is_string(), "{field} in {r}");
        }
    }
    let out = gw.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // CSV export too.
    let out = gw.cli(&["audit", "export", "--format", "csv"]);
    assert!(out.status.success());
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.lines().next().unwrap().contains("row_hash"));
    assert_eq!(
        csv.lines()
            .filter(|l| l.contains("r1@example.test"))
            .count(),
        1
    );
    // An insider edits row 2.
    let db = gw.spool_dir().join("audit.db");
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET recipient = 'someone-else@example.test' WHERE seq = 2")
        .execute(&mut c)
        .await
        .unwrap();
    let out = gw.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BROKEN at row 2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_holds_the_same_rows() {
    let db = PgDb::create().await;
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let mut opts = w.options();
    opts.database_url = Some(db.url_via(None));
    let gw = Gateway::start(opts).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@example.test", "c@example.test"],
        &message("pg", "b"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    assert!(rows.iter().all(|r| r["outcome"] == "delivered"));
    assert_eq!(db.count().await, 2);
    let out = gw.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The OpenPGP key store lives in the same database.
    let key = w.dir.path().join("k.asc");
    {
        use sequoia_openpgp::cert::prelude::*;
        use sequoia_openpgp::serialize::SerializeInto;
        let (cert, _) = CertBuilder::general_purpose(Some("<pg@example.test>"))
            .generate()
            .unwrap();
        std::fs::write(&key, cert.armored().to_vec().unwrap()).unwrap();
    }
    let out = gw.cli(&["keys", "import", key.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&gw.cli(&["keys", "list"]).stdout).into_owned();
    assert!(list.contains("pg@example.test"), "{list}");
    let mut c = sqlx::PgConnection::connect(&db.url_via(None))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pgp_keys")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1);
    sqlx::query("DELETE FROM audit_log WHERE seq = 1")
        .execute(&mut c)
        .await
        .unwrap();
    let out = gw.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "a deleted row is caught");
}

/// A TCP proxy to PostgreSQL that the test can cut and restore.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, gen_rx) = tokio::sync::watch::channel(0u64);
        let up2 = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let mut cut = gen_rx.clone();
                cut.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            up,
            generation,
            task,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_loses_no_row_and_mail_keeps_flowing() {
    let db = PgDb::create().await;
    let server = pg_base()
        .split_once('@')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let proxy = Proxy::start(server).await;
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let mut opts = w.options();
    opts.database_url = Some(db.url_via(Some(format!("127.0.0.1:{}", proxy.port))));
    let mut gw = Gateway::start(opts).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["one@example.test"],
        &message("1", "b"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    assert!(wait_count(&db, 1).await, "{}", gw.log());

    proxy.cut();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["two@example.test"],
        &message("2", "b"),
    )
    .unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["three@example.test"],
        &message("3", "b"),
    )
    .unwrap();
    mx.wait_for(3, WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        db.count().await,
        1,
        "database unreachable: rows wait in the journal"
    );

    // The daemon dies during the outage; the journal survives it.
    gw.kill();
    proxy.restore();
    gw.spawn().unwrap();
    if !wait_count(&db, 3).await {
        panic!("rows lost or not replayed; log:\n{}", gw.log());
    }
    let out = gw.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let rows = gw.audit_rows().unwrap();
    let mut rcpts: Vec<_> = rows
        .iter()
        .map(|r| r["recipient"].as_str().unwrap().to_string())
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec!["one@example.test", "three@example.test", "two@example.test"]
    );
}

async fn wait_count(db: &PgDb, n: i64) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let c = db.count().await;
        if c == n {
            return true;
        }
        if std::time::Instant::now() > deadline {
            eprintln!("audit rows in PostgreSQL: {c}, want {n}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One journal line as the daemon writes it (checked against the real type).
fn journal_line(n: u32) -> String {
    let v = serde_json::json!({
        "event_id": format!("{:032x}", 0xfeed_0000u64 + n as u64),
        "timestamp": format!("2026-11-29T10:00:0{n}Z"),
        "queue_id": format!("JOURNALQ{n}"),
        "message_id": null,
        "sender": "a@clinic.example.test",
        "recipient": format!("r{n}@example.test"),
        "outcome": "delivered",
        "method": "tls",
        "tls_requirement": "opportunistic",
        "policy_rule": "default",
        "policy_version": "0000",
        "remote_host": "mx.example.test",
        "remote_ip": "127.0.0.1",
        "tls_version": null,
        "tls_cipher": null,
        "smtp_reply": "250 ok",
        "body_sha256": null,
        "evidence": {}
    });
    serde_json::from_value::<sealgate::audit::AuditEvent>(v.clone())
        .expect("the test's event is a real audit event");
    v.to_string()
}

/// A journal left with a garbled line and a torn last line: the good events
/// reach the database, the garbled line is quarantined (not lost, not in the
/// log), `audit check` names it and fails; the CSV export defuses a sender
/// that a spreadsheet would run as a formula.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_journal_lines_are_quarantined_and_shown() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let mut gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "=1+1@clinic.example.test",
        &["b@example.test"],
        &message("s", "b"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    let out = gw.cli(&["audit", "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no quarantined lines"));

    let out = gw.cli(&["audit", "export", "--format", "csv"]);
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.contains(",\"'=1+1@clinic.example.test\","), "{csv}");
    assert!(!csv.contains(",=1+1@"), "{csv}");

    gw.stop().unwrap();
    let journal = gw.spool_dir().join("audit-journal");
    let torn = journal_line(3);
    let text = format!(
        "{}\n{{\"event_id\": \"PATIENT-NAME-SECRET\", garbled\n{}\n{}",
        journal_line(1),
        journal_line(2),
        &torn[..torn.len() / 2]
    );
    std::fs::write(journal.join("000000000999.jsonl"), text).unwrap();
    gw.spawn().unwrap();
    let rows = gw
        .wait_audit(WAIT, |r| {
            ["JOURNALQ1", "JOURNALQ2"]
                .iter()
                .all(|q| r.iter().any(|row| row["queue_id"] == *q))
        })
        .await
        .unwrap();
    assert!(
        !rows.iter().any(|r| r["queue_id"] == "JOURNALQ3"),
        "torn line dropped"
    );
    assert_eq!(rows.len(), 3);

    let out = gw.cli(&["audit", "check"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("1 quarantined line"), "{report}");
    assert!(report.contains("000000000999.jsonl line 2 "), "{report}");
    assert!(!report.contains("PATIENT-NAME-SECRET"), "{report}");
    let q = std::fs::read_to_string(journal.join("quarantine.jsonl")).unwrap();
    assert!(
        q.contains("PATIENT-NAME-SECRET"),
        "the line itself is kept: {q}"
    );
    let log = gw.log();
    assert!(log.contains("moved to quarantine"), "{log}");
    assert!(
        !log.contains("PATIENT-NAME-SECRET"),
        "no content in the log"
    );
    let out = gw.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
