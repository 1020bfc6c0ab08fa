use sqlx::Connection;

use super::*;
use crate::queue::{QueueId, Spool, SpoolKey};

const MARKER: &[u8] = b"PATIENT-MARKER-7731 diagnosis";

/// A spool holding `content` as message content, and its reader.
struct Spooled {
    _dir: tempfile::TempDir,
    spool: Spool,
    id: QueueId,
}

impl Spooled {
    async fn new(content: &[u8]) -> Spooled {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("spool.key");
        SpoolKey::generate(&key_path).unwrap();
        let spool = Spool::open(
            &dir.path().join("spool"),
            SpoolKey::load(&key_path).unwrap(),
        )
        .unwrap();
        let id = QueueId::new();
        let mut w = spool.create_content(&id).await.unwrap();
        // Written in odd pieces, so chunk borders fall anywhere.
        for piece in content.chunks(7777) {
            w.write(piece).await.unwrap();
        }
        w.finish().await.unwrap();
        Spooled {
            _dir: dir,
            spool,
            id,
        }
    }

    async fn reader(&self) -> ContentReader {
        self.spool.open_content(&self.id).await.unwrap()
    }
}

fn content(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + MARKER.len());
    while out.len() < size {
        out.extend_from_slice(MARKER);
        out.extend_from_slice(format!(" line {}\r\n", out.len()).as_bytes());
    }
    out.truncate(size.max(MARKER.len()));
    out
}

fn deposit(days: i64) -> Deposit {
    Deposit {
        queue_id: "q1".into(),
        sender: "doctor@clinic.example".into(),
        recipient: "patient@mail.example".into(),
        expires_at: Utc::now() + chrono::Duration::days(days),
    }
}

async fn read_all(store: &PortalStore, msg: &Opened) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    let mut seq = 0;
    while let Some(c) = store.chunk(msg, seq).await? {
        assert!(c.len() <= CHUNK);
        out.extend_from_slice(&c);
        seq += 1;
    }
    Ok(out)
}

fn opened(p: Pickup) -> Opened {
    match p {
        Pickup::Open(o) => o,
        other => panic!("expected an open message, got {other:?}"),
    }
}

async fn sqlite_store(dir: &std::path::Path, link_bound: bool) -> (PortalStore, String) {
    let url = format!("sqlite://{}", dir.join("audit.db").display());
    let store = PortalStore::open(&url, vec![crate::util::random_bytes::<32>()], link_bound)
        .await
        .unwrap();
    (store, url)
}

/// Every size around the chunk borders comes back byte for byte, from a
/// store that holds no plaintext.
async fn round_trips(store: &PortalStore) {
    for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17] {
        let body = if size == 0 { Vec::new() } else { content(size) };
        let spooled = Spooled::new(&body).await;
        let stored = store
            .store(&deposit(30), spooled.reader().await)
            .await
            .unwrap();
        assert_eq!(stored.size, body.len() as u64);
        let msg = opened(store.pickup(&stored.token).await.unwrap());
        assert_eq!(msg.recipient, "patient@mail.example");
        assert_eq!(msg.size, body.len() as u64);
        assert_eq!(read_all(store, &msg).await.unwrap(), body, "size {size}");
    }
}

#[tokio::test]
async fn sqlite_stores_streams_and_holds_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite_store(dir.path(), false).await;
    round_trips(&store).await;
    assert!(matches!(
        store.pickup("no-such-token").await.unwrap(),
        Pickup::Unknown
    ));
    store.pool.close().await;
    let mut db = Vec::new();
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.to_string_lossy().contains("audit.db") {
            db.extend(std::fs::read(p).unwrap());
        }
    }
    assert!(!db.is_empty());
    assert!(
        !db.windows(14).any(|w| w == &MARKER[..14]),
        "plaintext in the database file"
    );
}

#[tokio::test]
async fn a_bound_link_opens_with_its_token_only() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite_store(dir.path(), true).await;
    round_trips(&store).await;
    let spooled = Spooled::new(&content(1000)).await;
    let stored = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    // The stored row is marked bound; a token for another message finds
    // nothing, and a master-key-only unwrap fails.
    let row = sqlx::query(
        "SELECT wrapped_key, link_bound, token_hash, recipient, expires_at, size, chunks FROM portal_messages WHERE id = $1",
    )
    .bind(&stored.id)
    .fetch_one(&store.pool)
    .await
    .unwrap();
    let wrapped = hex::decode(row.get::<String, _>(0)).unwrap();
    assert_eq!(row.get::<i64, _>(1), 1);
    let (token_hash, recipient): (String, String) = (row.get(2), row.get(3));
    let binding = seal::Binding {
        id: &stored.id,
        token_hash: &token_hash,
        sender: "doctor@clinic.example",
        recipient: &recipient,
        expires_at: row.get(4),
        size: row.get::<i64, _>(5) as u64,
        chunks: row.get::<i64, _>(6) as u64,
    };
    assert!(seal::unwrap(&store.masters[0], None, &binding, &wrapped).is_err());
    assert!(seal::unwrap(&store.masters[0], Some(&stored.token), &binding, &wrapped).is_ok());
    // A token for another message finds nothing.
    assert!(matches!(
        store.pickup(&seal::new_token()).await.unwrap(),
        Pickup::Unknown
    ));
    // Turning the binding off in the row (to open it with the master key
    // alone) or naming another master key opens nothing.
    sqlx::query("UPDATE portal_messages SET link_bound = 0 WHERE id = $1")
        .bind(&stored.id)
        .execute(&store.pool)
        .await
        .unwrap();
    assert!(matches!(
        store.pickup(&stored.token).await,
        Err(StoreError::Sealed(..))
    ));
    sqlx::query("UPDATE portal_messages SET link_bound = 1, master_key_id = 'ffff' WHERE id = $1")
        .bind(&stored.id)
        .execute(&store.pool)
        .await
        .unwrap();
    assert!(matches!(
        store.pickup(&stored.token).await,
        Err(StoreError::UnknownMasterKey(_))
    ));
}

#[tokio::test]
async fn revoked_and_expired_messages_show_nothing_and_lose_their_content() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite_store(dir.path(), false).await;
    let spooled = Spooled::new(&content(3 * CHUNK + 5)).await;
    let a = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    let b = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    let c = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    let chunks_of = |id: String| {
        let pool = store.pool.clone();
        async move {
            sqlx::query("SELECT COUNT(*) FROM portal_chunks WHERE message_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get::<i64, _>(0)
        }
    };
    assert_eq!(chunks_of(a.id.clone()).await, 4);

    // Revoked: the key at once, the content with it; twice is a no-op.
    assert!(store.revoke(&a.id).await.unwrap());
    assert!(!store.revoke(&a.id).await.unwrap());
    assert!(matches!(
        store.pickup(&a.token).await.unwrap(),
        Pickup::Revoked
    ));
    assert_eq!(chunks_of(a.id.clone()).await, 0);
    assert!(!store.revoke("no-such-id").await.unwrap());

    // A message opened before it was revoked reads no further.
    let open_b = opened(store.pickup(&b.token).await.unwrap());
    assert!(store.chunk(&open_b, 0).await.unwrap().is_some());
    store.revoke(&b.id).await.unwrap();
    assert!(matches!(
        store.chunk(&open_b, 1).await,
        Err(StoreError::Damaged { .. })
    ));

    // Expired: past its time it shows as expired even before the sweep;
    // the sweep destroys the key, then the content.
    let later = Utc::now() + chrono::Duration::days(31);
    let swept = store.sweep(later).await.unwrap();
    assert_eq!(swept.expired, 1);
    assert_eq!(swept.purged, 1);
    assert!(matches!(
        store.pickup(&c.token).await.unwrap(),
        Pickup::Expired
    ));
    assert_eq!(chunks_of(c.id.clone()).await, 0);
    let key: Option<String> = sqlx::query("SELECT wrapped_key FROM portal_messages WHERE id = $1")
        .bind(&c.id)
        .fetch_one(&store.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(key, None);
    assert_eq!(store.sweep(later).await.unwrap(), Swept::default());

    let short = Deposit {
        expires_at: Utc::now() - chrono::Duration::seconds(1),
        ..deposit(0)
    };
    // A deposit that would be born expired is refused...
    assert!(matches!(
        store.store(&short, spooled.reader().await).await,
        Err(StoreError::Expiry(_))
    ));
    // ...and one that expires while it is open reads no further.
    let d = store
        .store(&deposit(1), spooled.reader().await)
        .await
        .unwrap();
    let open = opened(store.pickup(&d.token).await.unwrap());
    // Past its expiry by the clock, though the row does not say so yet.
    let in_memory = Opened {
        expires_at: Utc::now() - chrono::Duration::seconds(1),
        ..opened(store.pickup(&d.token).await.unwrap())
    };
    assert!(store.chunk(&in_memory, 0).await.is_err());
    assert!(store.chunk(&open, 0).await.unwrap().is_some());
    sqlx::query("UPDATE portal_messages SET expires_at = $1 WHERE id = $2")
        .bind((Utc::now() - chrono::Duration::seconds(1)).timestamp())
        .bind(&d.id)
        .execute(&store.pool)
        .await
        .unwrap();
    assert!(matches!(
        store.pickup(&d.token).await.unwrap(),
        Pickup::Expired
    ));
    assert!(store.chunk(&open, 0).await.is_err());
}

#[tokio::test]
async fn altered_moved_or_missing_chunks_are_errors_never_short_content() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite_store(dir.path(), false).await;
    let spooled = Spooled::new(&content(3 * CHUNK + 5)).await;
    let s = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    let t = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    let exec = |sql: String| {
        let pool = store.pool.clone();
        async move { sqlx::query(&sql).execute(&pool).await.unwrap() }
    };
    // Chunk 0 and 1 swapped.
    exec(format!(
        "UPDATE portal_chunks SET seq = 99 WHERE message_id = '{}' AND seq = 0",
        s.id
    ))
    .await;
    exec(format!(
        "UPDATE portal_chunks SET seq = 0 WHERE message_id = '{}' AND seq = 1",
        s.id
    ))
    .await;
    exec(format!(
        "UPDATE portal_chunks SET seq = 1 WHERE message_id = '{}' AND seq = 99",
        s.id
    ))
    .await;
    let msg = opened(store.pickup(&s.token).await.unwrap());
    assert!(matches!(
        store.chunk(&msg, 0).await,
        Err(StoreError::Sealed(..))
    ));
    // The last chunk deleted: the one before it is not taken for the end.
    exec(format!(
        "DELETE FROM portal_chunks WHERE message_id = '{}' AND seq = 3",
        t.id
    ))
    .await;
    let msg = opened(store.pickup(&t.token).await.unwrap());
    assert!(read_all(&store, &msg).await.is_err());
    // A chunk count lowered in the row: the key is bound to the count, and
    // the new last chunk would fail its own check too.
    exec(format!(
        "UPDATE portal_messages SET chunks = 2 WHERE id = '{}'",
        t.id
    ))
    .await;
    assert!(matches!(
        store.pickup(&t.token).await,
        Err(StoreError::Sealed(..))
    ));
    let sealed_second: Vec<u8> =
        sqlx::query("SELECT data FROM portal_chunks WHERE message_id = $1 AND seq = 1")
            .bind(&t.id)
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .get(0);
    assert!(seal::open_chunk(&msg.key, &t.id, 1, true, sealed_second).is_err());
    exec(format!(
        "UPDATE portal_messages SET chunks = 4 WHERE id = '{}'",
        t.id
    ))
    .await;
    // Another message's wrapped key copied in: refused.
    exec(format!(
        "UPDATE portal_messages SET wrapped_key = (SELECT wrapped_key FROM portal_messages WHERE id = '{}') WHERE id = '{}'",
        s.id, t.id
    ))
    .await;
    assert!(matches!(
        store.pickup(&t.token).await,
        Err(StoreError::Sealed(..))
    ));
}

#[tokio::test]
async fn a_rotated_master_key_file_still_opens_older_messages() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let old = crate::util::random_bytes::<32>();
    let store = PortalStore::open(&url, vec![old], false).await.unwrap();
    let spooled = Spooled::new(&content(100)).await;
    let s = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    let new = crate::util::random_bytes::<32>();
    let rotated = PortalStore::open(&url, vec![new, old], false)
        .await
        .unwrap();
    let msg = opened(rotated.pickup(&s.token).await.unwrap());
    assert_eq!(read_all(&rotated, &msg).await.unwrap(), content(100));
    let lost = PortalStore::open(&url, vec![new], false).await.unwrap();
    assert!(matches!(
        lost.pickup(&s.token).await,
        Err(StoreError::UnknownMasterKey(_))
    ));
}

/// A crash between the row and the key leaves a half-stored message: no
/// link opens it, and the sweep removes it after a day.
#[tokio::test]
async fn half_stored_messages_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite_store(dir.path(), false).await;
    let spooled = Spooled::new(&content(100)).await;
    let s = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    sqlx::query("UPDATE portal_messages SET state = 'storing', wrapped_key = NULL WHERE id = $1")
        .bind(&s.id)
        .execute(&store.pool)
        .await
        .unwrap();
    assert!(matches!(
        store.pickup(&s.token).await.unwrap(),
        Pickup::Unknown
    ));
    assert_eq!(store.sweep(Utc::now()).await.unwrap().abandoned, 0);
    let swept = store
        .sweep(Utc::now() + chrono::Duration::days(2))
        .await
        .unwrap();
    assert_eq!(swept.abandoned, 1);
    let left: i64 = sqlx::query("SELECT COUNT(*) FROM portal_chunks")
        .fetch_one(&store.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let root = base.rsplit_once('/').map_or(base, |(r, _)| r);
    format!("{root}/{name}{query}")
}

/// Runs `body` on the URL of a fresh PostgreSQL database, dropped after
/// it, whatever `body` did. Fails when PostgreSQL is not reachable.
pub(in crate::portal) async fn on_fresh_postgres<F, Fut>(body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    sqlx::any::install_default_drivers();
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let mut admin = sqlx::AnyConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at DATABASE_URL is required for this test: {e}"));
    let name = format!(
        "sealgate_portal_{}",
        hex::encode(crate::util::random_bytes::<6>())
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let outcome = tokio::spawn(body(with_database(&admin_url, &name))).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The same against PostgreSQL (a fresh database), and `pg_dump` of it
/// holds no plaintext. Fails when PostgreSQL is not reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_streams_and_a_dump_holds_no_plaintext() {
    on_fresh_postgres(|url| async move {
        let store = PortalStore::open(&url, vec![crate::util::random_bytes::<32>()], false)
            .await
            .unwrap();
        round_trips(&store).await;
        let spooled = Spooled::new(&content(2 * CHUNK)).await;
        let s = store
            .store(&deposit(30), spooled.reader().await)
            .await
            .unwrap();
        assert!(store.revoke(&s.id).await.unwrap());
        assert!(matches!(
            store.pickup(&s.token).await.unwrap(),
            Pickup::Revoked
        ));
        store.pool.close().await;
        let dump = std::process::Command::new("pg_dump")
            .arg(&url)
            .output()
            .expect("pg_dump (postgresql-client) is installed");
        assert!(
            dump.status.success(),
            "{}",
            String::from_utf8_lossy(&dump.stderr)
        );
        assert!(String::from_utf8_lossy(&dump.stdout).contains("portal_chunks"));
        // bytea is dumped as hex: neither form of the marker is there.
        assert!(!dump.stdout.windows(14).any(|w| w == &MARKER[..14]));
        let text = String::from_utf8_lossy(&dump.stdout).to_ascii_lowercase();
        assert!(!text.contains(&hex::encode(&MARKER[..14])));
    })
    .await;
}

/// Whether `needle` is in any file of `dir` (the database, its WAL and
/// shared memory), read while the database is still open.
fn in_files(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| {
            std::fs::read(p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        })
        .collect()
}

/// In WAL mode, as the audit database runs: a revoked key is gone from
/// every file at once, on every connection of the pool. The control (the
/// same with `secure_delete` off, outside the store) shows the search
/// finds what deleting leaves behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_overwritten_in_the_database_file() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("audit.db").display()
    );
    {
        let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let (store, _) = sqlite_store(dir.path(), false).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = store.pool.acquire().await.unwrap();
        let on: i64 = sqlx::query("PRAGMA secure_delete")
            .fetch_one(&mut *c)
            .await
            .unwrap()
            .get(0);
        assert_eq!(on, 1, "secure_delete on every connection");
        held.push(c);
    }
    drop(held);
    let spooled = Spooled::new(&content(100)).await;
    let s = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    let wrapped: String = sqlx::query("SELECT wrapped_key FROM portal_messages WHERE id = $1")
        .bind(&s.id)
        .fetch_one(&store.pool)
        .await
        .unwrap()
        .get(0);
    assert!(!in_files(dir.path(), wrapped.as_bytes()).is_empty());
    assert!(store.revoke(&s.id).await.unwrap());
    let left = in_files(dir.path(), wrapped.as_bytes());
    assert!(left.is_empty(), "the destroyed key is still in {left:?}");
    store.pool.close().await;

    // Control: the same delete with secure_delete off leaves the value.
    let control = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        control.path().join("c.db").display()
    );
    let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
    for stmt in [
        "PRAGMA journal_mode = WAL",
        "PRAGMA secure_delete = OFF",
        "CREATE TABLE t (v TEXT)",
    ] {
        sqlx::query(stmt).execute(&mut c).await.unwrap();
    }
    for v in ["a".repeat(200), wrapped.clone(), "b".repeat(200)] {
        sqlx::query("INSERT INTO t VALUES ($1)")
            .bind(v)
            .execute(&mut c)
            .await
            .unwrap();
    }
    sqlx::query("DELETE FROM t WHERE v = $1")
        .bind(&wrapped)
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut c)
        .await
        .unwrap();
    assert!(!in_files(control.path(), wrapped.as_bytes()).is_empty());
}

#[tokio::test]
async fn rows_changed_in_the_database_open_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite_store(dir.path(), false).await;
    let spooled = Spooled::new(&content(100)).await;
    let a = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    let b = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    let exec = |sql: String| {
        let pool = store.pool.clone();
        async move { sqlx::query(&sql).execute(&pool).await.unwrap() }
    };
    // B's message given A's link (a writer without the master key picking
    // which message a link opens): refused.
    let hash_a = seal::token_hash(&a.token);
    exec(format!(
        "UPDATE portal_messages SET token_hash = 'x' WHERE id = '{}'",
        a.id
    ))
    .await;
    exec(format!(
        "UPDATE portal_messages SET token_hash = '{hash_a}' WHERE id = '{}'",
        b.id
    ))
    .await;
    assert!(matches!(
        store.pickup(&a.token).await,
        Err(StoreError::Sealed(..))
    ));
    exec(format!(
        "UPDATE portal_messages SET token_hash = '{}' WHERE id = '{}'",
        seal::token_hash(&b.token),
        b.id
    ))
    .await;
    let open_b = opened(store.pickup(&b.token).await.unwrap());
    // Another recipient or sender, a later expiry, another size.
    for change in [
        "recipient = 'attacker@evil.example'",
        "sender = 'phisher@evil.example'",
        "expires_at = expires_at + 86400",
        "size = size + 1",
    ] {
        let before: (String, i64, i64, String) = {
            let r = sqlx::query(
                "SELECT recipient, expires_at, size, sender FROM portal_messages WHERE id = $1",
            )
            .bind(&b.id)
            .fetch_one(&store.pool)
            .await
            .unwrap();
            (r.get(0), r.get(1), r.get(2), r.get(3))
        };
        exec(format!(
            "UPDATE portal_messages SET {change} WHERE id = '{}'",
            b.id
        ))
        .await;
        assert!(store.pickup(&b.token).await.is_err(), "{change}");
        exec(format!(
            "UPDATE portal_messages SET recipient = '{}', expires_at = {}, size = {}, sender = '{}' WHERE id = '{}'",
            before.0, before.1, before.2, before.3, b.id
        ))
        .await;
        assert!(store.pickup(&b.token).await.is_ok(), "{change} restored");
    }
    // A message opened before it expired reads no further once it has.
    exec(format!(
        "UPDATE portal_messages SET expires_at = 1 WHERE id = '{}'",
        b.id
    ))
    .await;
    assert!(matches!(
        store.chunk(&open_b, 0).await,
        Err(StoreError::Damaged { .. })
    ));
}

#[tokio::test]
async fn destroyed_rows_are_forgotten_after_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite_store(dir.path(), false).await;
    let spooled = Spooled::new(&content(100)).await;
    let s = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    store.revoke(&s.id).await.unwrap();
    let soon = store
        .sweep(Utc::now() + chrono::Duration::days(1))
        .await
        .unwrap();
    assert_eq!(soon.forgotten, 0);
    assert!(matches!(
        store.pickup(&s.token).await.unwrap(),
        Pickup::Revoked
    ));
    let later = Utc::now() + chrono::Duration::days(31);
    assert_eq!(store.sweep(later).await.unwrap().forgotten, 1);
    assert!(matches!(
        store.pickup(&s.token).await.unwrap(),
        Pickup::Unknown
    ));
    // Revoking works without the master key (a keyless store), and a
    // keyless store stores and opens nothing.
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let keyless = PortalStore::open_keyless(&url).await.unwrap();
    let t = store
        .store(&deposit(30), spooled.reader().await)
        .await
        .unwrap();
    assert!(matches!(
        keyless.pickup(&t.token).await,
        Err(StoreError::UnknownMasterKey(_))
    ));
    assert!(matches!(
        keyless.store(&deposit(30), spooled.reader().await).await,
        Err(StoreError::MasterKey(_))
    ));
    assert!(keyless.revoke(&t.id).await.unwrap());
    assert!(matches!(
        store.pickup(&t.token).await.unwrap(),
        Pickup::Revoked
    ));
}
