use std::net::IpAddr;

use super::*;
use crate::portal::store::PortalStore;
use sqlx::Row;

const HOME: &str = "192.0.2.10";
const ELSEWHERE: &str = "198.51.100.7";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn store() -> (tempfile::TempDir, PortalStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let store = PortalStore::open(&url, vec![crate::util::random_bytes::<32>()], false)
        .await
        .unwrap();
    (dir, store)
}

/// Now, to the second (the store keeps seconds).
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
}

fn wrong(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

#[tokio::test]
async fn codes_are_rate_limited_per_link() {
    let (_d, s) = store().await;
    let a = s.access().unwrap();
    let t0 = now();
    let code = a.issue_code("m1", t0).await.unwrap().unwrap();
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(
        a.issue_code("m1", t0 + chrono::Duration::seconds(30))
            .await
            .unwrap(),
        Err(CodeRefused::RateLimited(t0 + RESEND_INTERVAL))
    );
    // Another link is not held up.
    assert!(a.issue_code("m2", t0).await.unwrap().is_ok());
    let mut t = t0;
    for _ in 1..CODES_PER_HOUR {
        t += RESEND_INTERVAL;
        assert!(a.issue_code("m1", t).await.unwrap().is_ok());
    }
    t += RESEND_INTERVAL;
    assert!(matches!(
        a.issue_code("m1", t).await.unwrap(),
        Err(CodeRefused::RateLimited(_))
    ));
    assert!(
        a.issue_code("m1", t0 + chrono::Duration::minutes(61))
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test]
async fn a_code_works_once_from_the_address_it_was_sent_for_and_not_after_ten_minutes() {
    let (_d, s) = store().await;
    let a = s.access().unwrap();
    let t0 = now();
    let code = a.issue_code("m1", t0).await.unwrap().unwrap();
    // Not for another message.
    assert!(!matches!(
        a.verify_code("m2", &code, ip(HOME), t0).await.unwrap(),
        Verified::Session(_)
    ));
    let Verified::Session(token) = a
        .verify_code(
            "m1",
            &format!(" {} {} ", &code[..3], &code[3..]),
            ip(HOME),
            t0,
        )
        .await
        .unwrap()
    else {
        panic!("the right code, spaces around, opens a session");
    };
    assert_eq!(
        a.verify_code("m1", &code, ip(HOME), t0).await.unwrap(),
        Verified::NoCode
    );
    assert!(a.session("m1", &token, ip(HOME), t0).await.unwrap());

    let t1 = t0 + chrono::Duration::minutes(2);
    let late = a.issue_code("m1", t1).await.unwrap().unwrap();
    assert_eq!(
        a.verify_code("m1", &late, ip(HOME), t1 + CODE_LIFETIME)
            .await
            .unwrap(),
        Verified::NoCode
    );
    // The database holds no code and no session token.
    let rows: Vec<String> = sqlx::query("SELECT COALESCE(code_hash, '') FROM portal_access")
        .fetch_all(&s.pool_for_tests())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let sessions: Vec<String> = sqlx::query("SELECT token_hash FROM portal_sessions")
        .fetch_all(&s.pool_for_tests())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for v in rows.iter().chain(&sessions) {
        assert!(!v.contains(&late) && !v.contains(&token), "{v}");
    }
}

#[tokio::test]
async fn five_wrong_codes_lock_the_link_and_the_right_one_is_then_refused() {
    let (_d, s) = store().await;
    let a = s.access().unwrap();
    let t0 = now();
    let code = a.issue_code("m1", t0).await.unwrap().unwrap();
    for left in (1..MAX_FAILURES).rev() {
        assert_eq!(
            a.verify_code("m1", &wrong(&code), ip(HOME), t0)
                .await
                .unwrap(),
            Verified::Wrong { left }
        );
    }
    assert_eq!(
        a.verify_code("m1", &wrong(&code), ip(HOME), t0)
            .await
            .unwrap(),
        Verified::NowLocked(t0 + LOCK_TIME)
    );
    // The sixth, right or not, is not compared; no new code is sent.
    assert_eq!(
        a.verify_code("m1", &code, ip(HOME), t0).await.unwrap(),
        Verified::Locked(t0 + LOCK_TIME)
    );
    assert_eq!(
        a.issue_code("m1", t0 + RESEND_INTERVAL).await.unwrap(),
        Err(CodeRefused::Locked(t0 + LOCK_TIME))
    );
    // After the lock: a new code, and the old one is gone.
    let t1 = t0 + LOCK_TIME;
    assert_eq!(
        a.verify_code("m1", &code, ip(HOME), t1).await.unwrap(),
        Verified::NoCode
    );
    let fresh = a.issue_code("m1", t1).await.unwrap().unwrap();
    assert!(matches!(
        a.verify_code("m1", &fresh, ip(HOME), t1).await.unwrap(),
        Verified::Session(_)
    ));
}

/// Wrong codes sent in parallel get no more comparisons than the limit
/// (at most MAX_FAILURES - 1 answers "wrong", the one reaching the limit
/// locks), the link ends up locked (never counted past the limit with no
/// lock) and the lock is reported once, and after it a new code works.
async fn parallel_guesses(s: PortalStore) {
    let a = std::sync::Arc::new(s.access().unwrap());
    let t0 = now();
    let code = a.issue_code("m1", t0).await.unwrap().unwrap();
    let guesses: Vec<_> = (0..24)
        .map(|i| {
            let a = a.clone();
            let guess = format!("{:06}", (code.parse::<u32>().unwrap() + 1 + i) % 1_000_000);
            tokio::spawn(async move { a.verify_code("m1", &guess, ip(HOME), t0).await.unwrap() })
        })
        .collect();
    let mut wrong = 0;
    let mut locks = 0;
    for g in guesses {
        match g.await.unwrap() {
            Verified::Wrong { .. } => wrong += 1,
            Verified::NowLocked(_) => locks += 1,
            Verified::Locked(_) | Verified::NoCode => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(wrong < MAX_FAILURES, "{wrong} guesses were answered wrong");
    assert_eq!(locks, 1, "exactly one request set the lock");
    let locked_until: Option<i64> =
        sqlx::query("SELECT locked_until FROM portal_access WHERE message_id = 'm1'")
            .fetch_one(&a.pool)
            .await
            .unwrap()
            .get(0);
    assert_eq!(locked_until, Some((t0 + LOCK_TIME).timestamp()));
    assert!(matches!(
        a.verify_code("m1", &code, ip(HOME), t0).await.unwrap(),
        Verified::Locked(_)
    ));
    let t1 = t0 + LOCK_TIME;
    let fresh = a.issue_code("m1", t1).await.unwrap().unwrap();
    assert!(matches!(
        a.verify_code("m1", &fresh, ip(HOME), t1).await.unwrap(),
        Verified::Session(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_are_counted_before_they_are_compared() {
    let (_d, s) = store().await;
    parallel_guesses(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_guesses_are_counted_before_they_are_compared_on_postgres() {
    crate::portal::store::tests::on_fresh_postgres(|url| async move {
        let s = PortalStore::open(&url, vec![crate::util::random_bytes::<32>()], false)
            .await
            .unwrap();
        parallel_guesses(s).await;
    })
    .await;
}

#[tokio::test]
async fn sessions_end_idle_at_their_limit_elsewhere_and_on_revocation() {
    let (_d, s) = store().await;
    let a = s.access().unwrap();
    let t0 = now();
    let code = a.issue_code("m1", t0).await.unwrap().unwrap();
    let Verified::Session(token) = a.verify_code("m1", &code, ip(HOME), t0).await.unwrap() else {
        panic!()
    };
    assert!(!a.session("m1", &token, ip(ELSEWHERE), t0).await.unwrap());
    assert!(!a.session("m2", &token, ip(HOME), t0).await.unwrap());
    assert!(!a.session("m1", "forged", ip(HOME), t0).await.unwrap());
    // Kept alive by use, every 20 minutes, until the absolute limit.
    let mut t = t0;
    while t + chrono::Duration::minutes(20) < t0 + SESSION_MAX {
        t += chrono::Duration::minutes(20);
        assert!(a.session("m1", &token, ip(HOME), t).await.unwrap(), "{t}");
    }
    assert!(
        !a.session("m1", &token, ip(HOME), t0 + SESSION_MAX)
            .await
            .unwrap()
    );

    // Idle for longer than the limit: ended.
    let t1 = t0 + chrono::Duration::minutes(5);
    let code = a.issue_code("m1", t1).await.unwrap().unwrap();
    let Verified::Session(idle) = a.verify_code("m1", &code, ip(HOME), t1).await.unwrap() else {
        panic!()
    };
    assert!(
        !a.session("m1", &idle, ip(HOME), t1 + SESSION_IDLE)
            .await
            .unwrap()
    );

    // Revoking the message ends its sessions.
    let t2 = t1 + chrono::Duration::minutes(5);
    let code = a.issue_code("m1", t2).await.unwrap().unwrap();
    let Verified::Session(live) = a.verify_code("m1", &code, ip(HOME), t2).await.unwrap() else {
        panic!()
    };
    assert!(a.session("m1", &live, ip(HOME), t2).await.unwrap());
    s.revoke("m1").await.unwrap();
    assert!(!a.session("m1", &live, ip(HOME), t2).await.unwrap());
}

/// Without a live code nothing is compared or counted: someone holding
/// the link cannot lock the recipient out before a code is sent, or
/// after it expired.
#[tokio::test]
async fn guesses_without_a_live_code_do_not_lock_the_link() {
    let (_d, s) = store().await;
    let a = s.access().unwrap();
    let t0 = now();
    for _ in 0..3 * MAX_FAILURES {
        assert_eq!(
            a.verify_code("m1", "123456", ip(ELSEWHERE), t0)
                .await
                .unwrap(),
            Verified::NoCode
        );
    }
    let code = a.issue_code("m1", t0).await.unwrap().unwrap();
    let late = t0 + CODE_LIFETIME;
    for _ in 0..3 * MAX_FAILURES {
        assert_eq!(
            a.verify_code("m1", &wrong(&code), ip(ELSEWHERE), late)
                .await
                .unwrap(),
            Verified::NoCode
        );
    }
    let fresh = a.issue_code("m1", late).await.unwrap().unwrap();
    assert!(matches!(
        a.verify_code("m1", &fresh, ip(HOME), late).await.unwrap(),
        Verified::Session(_)
    ));
}
