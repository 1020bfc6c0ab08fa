//! The mail path on a bad day: a full disk, SIGKILL under load, hostile
//! end-of-data sequences, with Postfix's smtp-sink as the next hop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{WAIT, World, message, python_send};
use crate::gateway::{Gateway, free_port, fresh_ip};
use crate::world::{Sink, SmtpClient};

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new().prefix("sgfull").tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system of `dir` with a filler file until fewer than
/// `leave` bytes are free (writes until ENOSPC, then gives `leave` back).
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
    let len = std::fs::metadata(&path).unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    path
}

async fn send_raw_message(addr: SocketAddr, body: &[u8]) -> (u16, String, u16) {
    let mut c = SmtpClient::connect(addr).await.unwrap();
    c.ehlo("client.example.test").await.unwrap();
    c.expect("MAIL FROM:<a@clinic.example.test>", 250)
        .await
        .unwrap();
    c.expect("RCPT TO:<b@example.test>", 250).await.unwrap();
    let r = c.cmd("DATA").await.unwrap();
    if r.0 != 354 {
        return (r.0, r.1, 0);
    }
    c.send_raw(body).await.unwrap();
    c.send_raw(b"\r\n.\r\n").await.unwrap();
    let end = c.read_reply().await.unwrap();
    (354, end.1, end.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_452_and_loses_nothing_already_queued() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let disk = Tmpfs::mount("6m");
    let mut opts = w.options();
    opts.spool_dir = Some(disk.path().join("spool"));
    opts.server_extra = "spool_reserve = \"512KB\"\n".into();
    let mut gw = Gateway::start(opts).unwrap();

    // Queued while the next hop is down: deferred, state on the tmpfs.
    for i in 0..3 {
        python_send(
            gw.addr,
            "a@clinic.example.test",
            &["b@example.test"],
            &message(&format!("queued {i}"), "x"),
        )
        .unwrap();
    }
    gw.wait_audit(WAIT, |r| {
        r.iter().filter(|r| r["outcome"] == "deferred").count() >= 3
    })
    .await
    .unwrap();

    // Room above the reserve but not for this message: refused at the end
    // of data, never a 250 for a message only half on disk.
    let filler = fill(disk.path(), 1_500_000);
    let line = format!("{}\r\n", "0123456789abcdef".repeat(4));
    let big = message("big", &line.repeat(40_000));
    let (first, text, end) = send_raw_message(gw.addr, &big).await;
    assert_eq!((first, end), (354, 452), "{text}\n{}", gw.log());
    assert!(text.starts_with("4.3.1"), "{text}");

    // Below the reserve: refused before 354.
    let _ = fill(disk.path(), 0);
    let (first, text, _) = send_raw_message(gw.addr, &message("small", "y")).await;
    assert_eq!(first, 452, "{text}");
    assert!(text.starts_with("4.3.1"), "{text}");

    // Retries of the queued mail run into the full disk for a while: the
    // failures are seen and logged, and the envelopes on disk stay good.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = gw.log();
    assert!(
        log.contains("No space left on device"),
        "the full disk was seen:\n{log}"
    );
    assert_eq!(gw.queue().unwrap().len(), 3, "{log}");

    // Space again, a crash for good measure, and the next hop is back:
    // everything that got 250 is delivered, nothing that got 452.
    std::fs::remove_file(&filler).unwrap();
    gw.kill();
    let sink = Sink::start(SocketAddr::from((w.ip, w.port))).unwrap();
    gw.spawn().unwrap();
    let got = sink.wait_for(3, WAIT).await.unwrap();
    gw.wait_queue_empty(WAIT).await.unwrap();
    let mut subjects: Vec<String> = got
        .iter()
        .filter_map(|m| {
            m.data
                .lines()
                .find(|l| l.starts_with("Subject:"))
                .map(String::from)
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(
        subjects,
        vec![
            "Subject: queued 0",
            "Subject: queued 1",
            "Subject: queued 2"
        ]
    );
    let log = gw.log();
    assert!(
        !log.contains("could not be read"),
        "no damaged spool file:\n{log}"
    );
}

/// Sends `per_thread` messages from each of `threads` Python smtplib
/// clients, reconnecting through restarts; every message that got `250`
/// is written to the ledger (its tag), nothing else.
fn load_with_ledger(
    addr: SocketAddr,
    threads: usize,
    per_thread: usize,
    ledger: &Path,
) -> std::process::Child {
    let script = r#"
import smtplib, sys, threading, time
host, port, threads, per, ledger = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
lock = threading.Lock()
out = open(ledger, 'a')
def run(t):
    n = 0
    s = None
    deadline = time.time() + 240
    while n < per and time.time() < deadline:
        tag = 'crash-%d-%d' % (t, n)
        msg = ('From: a@clinic.example.test\r\nTo: b@example.test\r\nSubject: %s\r\nMessage-ID: <%s@clinic.example.test>\r\n\r\n%s\r\n' % (tag, tag, 'x' * 2000)).encode()
        try:
            if s is None:
                s = smtplib.SMTP(host, port, timeout=10)
                s.ehlo('client.example.test')
            s.sendmail('a@clinic.example.test', ['b@example.test'], msg)
            with lock:
                out.write(tag + '\n'); out.flush()
            n += 1
        except Exception:
            try:
                s.close()
            except Exception:
                pass
            s = None
            time.sleep(0.05)
ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
[t.start() for t in ts]
[t.join() for t in ts]
"#;
    Command::new("python3")
        .args(["-c", script])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(threads.to_string())
        .arg(per_thread.to_string())
        .arg(ledger)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_that_got_250() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let sink = Sink::start(SocketAddr::from((w.ip, w.port))).unwrap();
    let ip = fresh_ip();
    let listen = SocketAddr::from((ip, free_port(ip)));
    let mut opts = w.options();
    opts.listen = Some(listen);
    let mut gw = Gateway::start(opts).unwrap();
    let ledger = gw.dir.path().join("ledger");
    // Enough load that the kills land while clients send and deliveries run.
    let mut load = load_with_ledger(listen, 5, 600, &ledger);

    // Kill at pseudo-random moments: during DATA, fsync, rename, delivery
    // and journal writes, whatever is running then.
    let mut rng = 0x9e37_79b9_u64;
    let mut kills = 0;
    while load.try_wait().unwrap().is_none() && kills < 20 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(150 + rng % 600)).await;
        gw.kill();
        kills += 1;
        gw.spawn().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while load.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "load generator never finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acked: Vec<String> = std::fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert!(acked.len() >= 200, "clients got few 250s: {}", acked.len());
    gw.wait_queue_empty(Duration::from_secs(120)).await.unwrap();

    let got = sink.messages();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for m in &got {
        if let Some(s) = m.data.lines().find_map(|l| l.strip_prefix("Subject: ")) {
            *seen.entry(s.trim().to_string()).or_default() += 1;
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|t| !seen.contains_key(*t)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let rows = gw.audit_rows().unwrap();
    let unknown = rows.iter().filter(|r| r["outcome"] == "unknown").count();
    eprintln!(
        "{kills} kills, {} acknowledged, {} delivered, {duplicates} duplicates (at least once allowed), {unknown} delivered-or-not-known audit rows",
        acked.len(),
        got.len()
    );
    // A copy delivered twice was cut short by a kill after the remote took
    // it: the trail says so with an "unknown" row.
    assert!(
        duplicates == 0 || unknown > 0,
        "{duplicates} duplicates but no unknown audit row"
    );
    // Nothing left that the daemon cannot read, and the trail is whole.
    let log = gw.log();
    assert!(
        !log.contains("could not be read"),
        "damaged spool file:\n{log}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(gw.spool_dir().join("queue"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "spool not empty: {leftovers:?}");
    let out = gw.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Every smuggling sequence at the start of a line, mid-line, after the
/// header block and after a bare CR, sent to the real daemon; the next hop
/// is smtp-sink, which reads bare LF as a line end, so anything that left
/// without dot-stuffing or normalising would be cut short or split there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_sequences_reach_an_independent_next_hop_as_content() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    w.domain("victim.example.test", "mx.example.test");
    let sink = Sink::start(SocketAddr::from((w.ip, w.port))).unwrap();
    let gw = w.gateway().unwrap();
    let sequences = [
        "\n.\n",
        "\n.\r\n",
        "\r\n.\n",
        "\r.\r",
        "\r\n.\r",
        "\r.\r\n",
        "\n.\r",
        "\r.\n",
        "\r\n\n.\r\n",
    ];
    let places = [
        ("mid-line", "Subject: s\r\n\r\nhello"),
        ("line start", "Subject: s\r\n\r\nhello\r\n"),
        ("after headers", "Subject: s\r\n\r\n"),
        ("after bare CR", "Subject: s\r\n\r\nhello\r"),
    ];
    let mut sent = 0;
    for seq in sequences {
        for (place, prefix) in places {
            if prefix.ends_with('\r') && seq.starts_with('\n') {
                continue; // CR + LF: a real line end, not smuggling
            }
            let mut c = SmtpClient::connect(gw.addr).await.unwrap();
            c.ehlo("client.example.test").await.unwrap();
            c.expect("MAIL FROM:<a@clinic.example.test>", 250)
                .await
                .unwrap();
            c.expect("RCPT TO:<b@example.test>", 250).await.unwrap();
            assert_eq!(c.cmd("DATA").await.unwrap().0, 354);
            let payload = format!(
                "{prefix}{seq}MAIL FROM:<ceo@victim.example.test>\r\nRCPT TO:<x@victim.example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
            );
            c.send_raw(payload.as_bytes()).await.unwrap();
            let r = c.read_reply().await.unwrap();
            assert_eq!(r.0, 250, "{seq:?} {place}: {r:?}");
            // Exactly one reply: had the smuggled commands run, their replies
            // would be waiting here.
            c.timeout = Duration::from_millis(300);
            assert!(
                c.read_reply().await.is_err(),
                "{seq:?} {place}: the smuggled commands got replies"
            );
            c.timeout = Duration::from_secs(10);
            assert_eq!(c.cmd("NOOP").await.unwrap().0, 250);
            sent += 1;
        }
    }
    let got = sink.wait_for(sent, WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got_now = sink.messages();
    assert_eq!(
        got_now.len(),
        sent,
        "one message per session at the next hop"
    );
    for m in &got {
        assert_eq!(m.mail_from, "a@clinic.example.test");
        assert_eq!(m.rcpt_to, vec!["b@example.test"]);
        assert!(
            m.data.contains("MAIL FROM:<ceo@victim.example.test>") && m.data.contains("evil"),
            "the whole content arrived as content: {:?}",
            m.data
        );
    }
}

/// A second daemon started on a spool that is in use stops at once with
/// a clear error, and touches nothing: the first one's message still
/// streaming in (content, no envelope yet) is not cleaned up as a leftover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_spool_refuses_to_start() {
    let w = World::new().await;
    let gw = w.gateway().unwrap();
    let streaming = gw
        .spool_dir()
        .join("queue")
        .join("0123456789ABCDEF0123456.msg");
    std::fs::write(&streaming, b"half a message").unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_sealgate"))
        .args(["serve", "--config"])
        .arg(&gw.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            second.kill().unwrap();
            panic!("a second daemon runs on the same spool");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = second.wait_with_output().unwrap();
    let stderr =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!status.success());
    assert!(
        stderr.contains("in use by another sealgate process"),
        "{stderr}"
    );
    assert!(
        streaming.exists(),
        "the running daemon's message was deleted"
    );
    // The first daemon still takes mail.
    let (_, _, code) = send_raw_message(gw.addr, b"Subject: x\r\n\r\nstill here\r\n").await;
    assert_eq!(code, 250, "{}", gw.log());
}
