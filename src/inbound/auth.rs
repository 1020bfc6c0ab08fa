//! AUTH PLAIN and LOGIN (RFC 4954) against argon2 hashes from the config,
//! with the two bounds that keep a flood of AUTH lines harmless:
//! [`Lockout`] limits failed attempts per client and overall, and
//! [`Users`] runs at most a configured number of argon2 checks at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::{AuthLimits, AuthUser};

/// A hash of a password nobody has, verified for unknown users so that a
/// failed login takes as long whether or not the user exists.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2VhbGdhdGVkdW1teQ$Xz3QK2Ttn8ZMdV8h1ks0Gq6QyD5Ns3O0qWyYv8n4m2s";

/// Longest a session waits for a free argon2 slot before it is told to
/// try later: under a flood, waiting longer only lets sessions pile up.
const VERIFY_QUEUE_WAIT: Duration = Duration::from_secs(30);

/// What a password check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The name and password match a configured user.
    Accepted,
    /// They do not.
    Refused,
    /// Every argon2 slot stayed busy; nothing was checked.
    Busy,
}

/// The configured users, and the bound on argon2 checks running at once.
#[derive(Clone)]
pub struct Users {
    users: Arc<Vec<AuthUser>>,
    slots: Arc<Semaphore>,
    queue_wait: Duration,
}

impl Default for Users {
    fn default() -> Self {
        Users::new(Vec::new(), 1)
    }
}

impl Users {
    /// Wraps the configured users; at most `max_verifications` argon2
    /// checks run at once (each costs about 19 MiB and a core).
    pub fn new(users: Vec<AuthUser>, max_verifications: usize) -> Users {
        Users {
            users: Arc::new(users),
            slots: Arc::new(Semaphore::new(max_verifications.max(1))),
            queue_wait: VERIFY_QUEUE_WAIT,
        }
    }

    /// How long a check may wait for a free slot before it is Busy.
    pub fn with_queue_wait(mut self, wait: Duration) -> Users {
        self.queue_wait = wait;
        self
    }

    /// Whether any user is configured (AUTH is advertised only then).
    pub fn any(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks a name and password; slow on purpose (argon2), so it runs on
    /// the blocking pool, holding one of the slots.
    pub async fn verify(&self, name: String, password: Vec<u8>) -> Check {
        let permit =
            match tokio::time::timeout(self.queue_wait, self.slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => return Check::Busy,
            };
        let users = self.users.clone();
        // The permit moves into the blocking task: a session dropped while
        // waiting does not free the slot before argon2 has finished.
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let hash = users
                .iter()
                .find(|u| u.name == name)
                .map(|u| u.password_hash.as_str());
            let known = hash.is_some();
            let Ok(parsed) = PasswordHash::new(hash.unwrap_or(DUMMY_HASH)) else {
                return false;
            };
            let ok = Argon2::default()
                .verify_password(&password, &parsed)
                .is_ok();
            ok && known
        })
        .await
        .unwrap_or(false);
        if ok { Check::Accepted } else { Check::Refused }
    }
}

/// A short, stable stand-in for a user name a client sent, for logs at
/// `info`: the name itself may be anything (a patient's address, a typo'd
/// password). `printf %s NAME | sha256sum` gives the same prefix.
pub fn user_tag(name: &str) -> String {
    let mut h = crate::util::sha256_hex(name.as_bytes());
    h.truncate(16);
    h
}

/// Which limit a lockout came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One client address (an IPv6 client by its /64).
    Client,
    /// Every client together.
    All,
}

impl Scope {
    /// Name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Client => "client",
            Scope::All => "all",
        }
    }
}

/// AUTH is refused until the lockout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    pub scope: Scope,
}

/// A lockout that has just begun (for the warn log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutStarted {
    pub scope: Scope,
    /// Failures that led to it.
    pub failures: u32,
    pub period: Duration,
}

/// Most client addresses whose failures are remembered; past that, only
/// the overall limit counts for new addresses (memory stays bounded
/// whatever the number of addresses an attacker has).
const MAX_TRACKED: usize = 100_000;

/// Failures within one lockout period.
#[derive(Debug, Default, Clone)]
struct Counter {
    failures: u32,
    /// Checks running now: counted as failures-to-be, so many sessions
    /// at once cannot get more guesses than the limit.
    in_flight: u32,
    since: Option<Instant>,
    locked_until: Option<Instant>,
}

impl Counter {
    /// Forgets failures older than the period and a lockout that is over.
    fn age(&mut self, now: Instant, period: Duration) {
        if self.locked_until.is_some_and(|t| t <= now) {
            self.locked_until = None;
            self.failures = 0;
            self.since = None;
        }
        if self.since.is_some_and(|t| now.duration_since(t) >= period) {
            self.failures = 0;
            self.since = None;
        }
    }

    fn locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|t| t > now)
    }

    fn full(&self, max: u32) -> bool {
        self.failures.saturating_add(self.in_flight) >= max
    }

    /// Counts one failure; `true` if it starts a lockout.
    fn fail(&mut self, now: Instant, max: u32, period: Duration) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.since.get_or_insert(now);
        if self.failures >= max && !self.locked(now) {
            self.locked_until = Some(super::later(now, period));
            return true;
        }
        false
    }

    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0 && !self.locked(now) && self.failures == 0
    }
}

#[derive(Default)]
struct LockoutState {
    clients: HashMap<IpAddr, Counter>,
    all: Counter,
    /// Accounts that logged in successfully from a client (key) within
    /// [`PROVEN_FOR`]: the overall lockout does not apply when that client
    /// tries that account again, so that addresses an attacker can rent
    /// cannot lock out the accounts that really use AUTH (an application
    /// server, Google's relay route). Per account, not per address: a
    /// login to one account must not lift the overall limit for guesses
    /// at the others.
    proven: HashMap<IpAddr, Vec<(String, Instant)>>,
}

/// How long a successful login exempts its client and account from the
/// overall lockout.
const PROVEN_FOR: Duration = Duration::from_secs(24 * 3600);

impl LockoutState {
    /// Whether `key` logged in as `user` (any account for `None`) lately.
    fn proven(&self, key: &IpAddr, user: Option<&str>, now: Instant) -> bool {
        self.proven.get(key).is_some_and(|users| {
            users.iter().any(|(u, t)| {
                user.is_none_or(|want| want == u) && now.duration_since(*t) < PROVEN_FOR
            })
        })
    }

    fn prove(&mut self, key: IpAddr, user: &str, now: Instant) {
        if !self.proven.contains_key(&key) && self.proven.len() >= MAX_TRACKED {
            self.proven.retain(|_, users| {
                users.retain(|(_, t)| now.duration_since(*t) < PROVEN_FOR);
                !users.is_empty()
            });
            if self.proven.len() >= MAX_TRACKED {
                return;
            }
        }
        let users = self.proven.entry(key).or_default();
        users.retain(|(u, t)| u != user && now.duration_since(*t) < PROVEN_FOR);
        // A handful of accounts per client at most; never unbounded.
        if users.len() < 16 {
            users.push((user.to_string(), now));
        }
    }
}

/// Failed AUTH attempts per client address and overall; after too many
/// within the lockout period, AUTH is refused (without checking the
/// password) until the period has passed.
#[derive(Clone)]
pub struct Lockout {
    limits: AuthLimits,
    state: Arc<Mutex<LockoutState>>,
}

/// One password check in progress; dropping it without [`Attempt::finish`]
/// (the session went away) counts nothing.
pub struct Attempt {
    lockout: Lockout,
    key: IpAddr,
    /// The account tried (recorded as proven for `key` on success).
    user: String,
    tracked: bool,
}

impl Lockout {
    /// A lockout with the configured limits.
    pub fn new(limits: AuthLimits) -> Lockout {
        Lockout {
            limits,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LockoutState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a lockout is in force for `ip` (without starting a check).
    pub fn locked(&self, ip: IpAddr, now: Instant) -> Option<Locked> {
        let key = client_key(ip);
        let period = self.limits.lockout;
        let mut st = self.lock();
        st.all.age(now, period);
        if st.all.locked(now) && !st.proven(&key, None, now) {
            return Some(Locked { scope: Scope::All });
        }
        let c = st.clients.get_mut(&key)?;
        c.age(now, period);
        c.locked(now).then_some(Locked {
            scope: Scope::Client,
        })
    }

    /// Starts a password check of `user` for `ip`, or says AUTH is locked
    /// for it (a lockout, or as many checks running as failures are left).
    pub fn begin(&self, ip: IpAddr, user: &str, now: Instant) -> Result<Attempt, Locked> {
        let key = client_key(ip);
        let period = self.limits.lockout;
        let mut st = self.lock();
        st.all.age(now, period);
        let exempt = st.proven(&key, Some(user), now);
        if !exempt && (st.all.locked(now) || st.all.full(self.limits.max_failures_total)) {
            return Err(Locked { scope: Scope::All });
        }
        if !st.clients.contains_key(&key) && st.clients.len() >= MAX_TRACKED {
            st.clients.retain(|_, c| {
                c.age(now, period);
                !c.idle(now)
            });
        }
        let tracked = st.clients.len() < MAX_TRACKED || st.clients.contains_key(&key);
        if tracked {
            let c = st.clients.entry(key).or_default();
            c.age(now, period);
            if c.locked(now) || c.full(self.limits.max_failures) {
                return Err(Locked {
                    scope: Scope::Client,
                });
            }
            c.in_flight += 1;
        }
        st.all.in_flight += 1;
        Ok(Attempt {
            lockout: self.clone(),
            key,
            user: user.to_string(),
            tracked,
        })
    }
}

impl Attempt {
    /// Records the result; a failure may start a lockout, returned so the
    /// caller can log it.
    pub fn finish(self, ok: bool, now: Instant) -> Vec<LockoutStarted> {
        let mut started = Vec::new();
        if ok {
            // Successes do not reset the count: an attacker with one valid
            // account could otherwise clear its own failures between guesses.
            self.lockout.lock().prove(self.key, &self.user, now);
            return started;
        }
        let l = &self.lockout.limits;
        let mut st = self.lockout.lock();
        if self.tracked
            && let Some(c) = st.clients.get_mut(&self.key)
            && c.fail(now, l.max_failures, l.lockout)
        {
            started.push(LockoutStarted {
                scope: Scope::Client,
                failures: c.failures,
                period: l.lockout,
            });
        }
        if st.all.fail(now, l.max_failures_total, l.lockout) {
            started.push(LockoutStarted {
                scope: Scope::All,
                failures: st.all.failures,
                period: l.lockout,
            });
        }
        started
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let mut st = self.lockout.lock();
        st.all.in_flight = st.all.in_flight.saturating_sub(1);
        if self.tracked
            && let Some(c) = st.clients.get_mut(&self.key)
        {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }
}

/// The key a client's failures are counted under: its IPv4 address, or
/// the /64 of an IPv6 address (one host usually holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match crate::config::canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(seg.into())
        }
        v4 => v4,
    }
}

/// Hashes a password for the config (`sealgate hash-password`).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt_bytes = crate::util::try_random_bytes::<16>().map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Decodes an AUTH PLAIN response: `authzid NUL authcid NUL password`.
/// An authzid different from the authcid is refused (no proxy logins).
pub fn decode_plain(b64: &str) -> Option<(String, Vec<u8>)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let mut parts = raw.split(|&b| b == 0);
    let authz = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let user = String::from_utf8(user.to_vec()).ok()?;
    if !authz.is_empty() && authz != user.as_bytes() {
        return None;
    }
    Some((user, pass.to_vec()))
}

/// Decodes one base64 line of AUTH LOGIN.
pub fn decode_b64(b64: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decoding() {
        assert_eq!(
            decode_plain("AGFsaWNlAHNlY3JldA=="),
            Some(("alice".into(), b"secret".to_vec()))
        );
        assert_eq!(
            decode_plain("YWxpY2UAYWxpY2UAc2VjcmV0"),
            Some(("alice".into(), b"secret".to_vec()))
        );
        assert_eq!(
            decode_plain("Ym9iAGFsaWNlAHNlY3JldA=="),
            None,
            "authzid bob != alice"
        );
        assert_eq!(decode_plain("not base64!"), None);
    }

    #[tokio::test]
    async fn verify_hashes() {
        let hash = hash_password("correct horse").unwrap();
        let users = Users::new(
            vec![AuthUser {
                name: "app".into(),
                password_hash: hash,
            }],
            2,
        );
        let check = |n: &str, p: &str| users.verify(n.into(), p.as_bytes().to_vec());
        assert_eq!(check("app", "correct horse").await, Check::Accepted);
        assert_eq!(check("app", "wrong").await, Check::Refused);
        assert_eq!(check("nobody", "correct horse").await, Check::Refused);
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    /// A check runs only in a free slot: with every slot held it waits,
    /// then gives up as Busy (nothing checked, not a failure); once a slot
    /// is free it runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn argon2_checks_wait_for_a_slot() {
        let users = Users::new(
            vec![AuthUser {
                name: "app".into(),
                password_hash: hash_password("pw").unwrap(),
            }],
            2,
        )
        .with_queue_wait(Duration::from_millis(200));
        let held = users.slots.clone().acquire_many_owned(2).await.unwrap();
        assert_eq!(
            users.verify("app".into(), b"pw".to_vec()).await,
            Check::Busy
        );
        let waiting = {
            let u = users.clone();
            tokio::spawn(async move { u.verify("app".into(), b"pw".to_vec()).await })
        };
        drop(held);
        assert_eq!(waiting.await.unwrap(), Check::Accepted);
        assert_eq!(users.slots.available_permits(), 2, "the slot is given back");
    }

    fn limits(per_client: u32, total: u32) -> AuthLimits {
        AuthLimits {
            max_failures: per_client,
            max_failures_total: total,
            lockout: Duration::from_secs(60),
            max_verifications: 1,
        }
    }

    fn fail(l: &Lockout, ip: &str, now: Instant) -> Result<Vec<LockoutStarted>, Locked> {
        Ok(l.begin(ip.parse().unwrap(), "u", now)?.finish(false, now))
    }

    #[test]
    fn a_client_is_locked_after_its_failures_and_freed_after_the_period() {
        let l = Lockout::new(limits(3, 100));
        let t0 = Instant::now();
        let a = "192.0.2.1";
        assert_eq!(fail(&l, a, t0), Ok(vec![]));
        assert_eq!(fail(&l, a, t0), Ok(vec![]));
        let started = fail(&l, a, t0).unwrap();
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].scope, Scope::Client);
        assert_eq!(started[0].failures, 3);
        let locked = Err(Locked {
            scope: Scope::Client,
        });
        assert_eq!(l.begin(a.parse().unwrap(), "u", t0).map(|_| ()), locked);
        let later = t0 + Duration::from_secs(59);
        assert_eq!(l.begin(a.parse().unwrap(), "u", later).map(|_| ()), locked);
        assert!(l.locked(a.parse().unwrap(), later).is_some());
        // Another client is not affected.
        assert!(l.begin("192.0.2.2".parse().unwrap(), "u", later).is_ok());
        // After the period: free again, with a fresh count.
        let after = t0 + Duration::from_secs(60);
        assert!(l.locked(a.parse().unwrap(), after).is_none());
        assert_eq!(fail(&l, a, after), Ok(vec![]));
        assert_eq!(fail(&l, a, after), Ok(vec![]));
        assert_eq!(fail(&l, a, after).unwrap().len(), 1);
    }

    #[test]
    fn failures_age_out_and_successes_do_not_reset_them() {
        let l = Lockout::new(limits(3, 100));
        let t0 = Instant::now();
        let a = "192.0.2.1";
        fail(&l, a, t0).unwrap();
        fail(&l, a, t0).unwrap();
        // A success in between does not clear the count.
        let ok = l.begin(a.parse().unwrap(), "u", t0).unwrap();
        assert!(ok.finish(true, t0).is_empty());
        assert_eq!(fail(&l, a, t0).unwrap().len(), 1, "third failure locks");
        // Failures older than the period are forgotten.
        let l = Lockout::new(limits(3, 100));
        fail(&l, a, t0).unwrap();
        fail(&l, a, t0).unwrap();
        let later = t0 + Duration::from_secs(61);
        assert_eq!(fail(&l, a, later), Ok(vec![]));
        assert_eq!(fail(&l, a, later), Ok(vec![]));
    }

    #[test]
    fn checks_in_flight_count_against_the_limit() {
        let l = Lockout::new(limits(2, 100));
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = l.begin(ip, "u", t0).unwrap();
        let second = l.begin(ip, "u", t0).unwrap();
        // Two guesses running: a third is refused before any argon2 work.
        assert!(l.begin(ip, "u", t0).is_err());
        // A check whose session went away counts nothing.
        drop(first);
        assert!(second.finish(false, t0).is_empty());
        assert!(l.begin(ip, "u", t0).is_ok());
    }

    #[test]
    fn the_overall_limit_locks_everyone() {
        let l = Lockout::new(limits(3, 4));
        let t0 = Instant::now();
        for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            assert_eq!(fail(&l, ip, t0), Ok(vec![]));
        }
        let started = fail(&l, "192.0.2.4", t0).unwrap();
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].scope, Scope::All);
        let all = Err(Locked { scope: Scope::All });
        assert_eq!(fail(&l, "198.51.100.9", t0), all);
        assert_eq!(
            l.locked("198.51.100.9".parse().unwrap(), t0),
            Some(Locked { scope: Scope::All })
        );
        assert!(
            l.begin(
                "198.51.100.9".parse().unwrap(),
                "u",
                t0 + Duration::from_secs(60)
            )
            .is_ok()
        );
    }

    /// Rented addresses can lock AUTH overall, but not for a client trying
    /// the account it logged in to within the last day (it keeps its own
    /// per-client limit). The exemption is per account: a login to one
    /// account lifts nothing for guesses at another. Checks in flight
    /// count overall, for everyone not exempt.
    #[test]
    fn the_overall_lockout_spares_a_client_on_its_own_account_only() {
        let l = Lockout::new(limits(3, 4));
        let t0 = Instant::now();
        let app: IpAddr = "198.51.100.1".parse().unwrap();
        l.begin(app, "app", t0).unwrap().finish(true, t0);
        let waiting: Vec<Attempt> = (1..=4)
            .map(|i| {
                l.begin(format!("192.0.2.{i}").parse().unwrap(), "app", t0)
                    .unwrap()
            })
            .collect();
        assert!(
            l.begin("203.0.113.1".parse().unwrap(), "app", t0).is_err(),
            "checks in flight must count overall"
        );
        assert!(
            l.begin(app, "app", t0).is_ok(),
            "checks in flight must not lock out the proven account"
        );
        drop(waiting);
        for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"] {
            fail(&l, ip, t0).unwrap();
        }
        let t1 = t0 + Duration::from_secs(10);
        let all = Err(Locked { scope: Scope::All });
        assert_eq!(
            l.begin("203.0.113.2".parse().unwrap(), "app", t1)
                .map(|_| ()),
            all
        );
        assert!(l.locked(app, t1).is_none());
        assert!(
            l.begin(app, "app", t1).is_ok(),
            "the proven account must not be locked out"
        );
        assert_eq!(
            l.begin(app, "other", t1).map(|_| ()),
            all,
            "only the proven account is exempt"
        );
        // A day later the exemption is gone.
        let l = Lockout::new(AuthLimits {
            lockout: Duration::from_secs(90_000),
            ..limits(3, 1)
        });
        l.begin(app, "app", t0).unwrap().finish(true, t0);
        fail(&l, "192.0.2.9", t0 + PROVEN_FOR).unwrap();
        assert!(l.begin(app, "app", t0 + PROVEN_FOR).is_err());
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_v4_as_v4() {
        let l = Lockout::new(limits(2, 100));
        let t0 = Instant::now();
        fail(&l, "2001:db8:1:2::1", t0).unwrap();
        assert_eq!(fail(&l, "2001:db8:1:2:ffff::9", t0).unwrap().len(), 1);
        assert!(
            l.begin("2001:db8:1:2::77".parse().unwrap(), "u", t0)
                .is_err()
        );
        assert!(l.begin("2001:db8:1:3::1".parse().unwrap(), "u", t0).is_ok());
        fail(&l, "192.0.2.7", t0).unwrap();
        fail(&l, "::ffff:192.0.2.7", t0).unwrap();
        assert!(l.begin("192.0.2.7".parse().unwrap(), "u", t0).is_err());
    }

    #[test]
    fn user_names_are_tagged_not_logged() {
        let tag = user_tag("patient.name@example.org");
        assert_eq!(tag.len(), 16);
        assert!(!tag.contains("patient"));
        assert_eq!(tag, user_tag("patient.name@example.org"));
        assert_ne!(tag, user_tag("patient.name@example.org "));
    }
}
