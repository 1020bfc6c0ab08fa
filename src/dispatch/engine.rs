//! The decision step of an attempt: the policy in force (swapped whole on
//! reload) and the probes it consults, message facts once per message and
//! probes concurrently per recipient.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::Settings;
use crate::encrypt::prepare::Encryptors;
use crate::outbound::Deliverer;
use crate::policy::facts::{MessageFacts, ScanLimits};
use crate::policy::{Decision, Envelope, Policy};
use crate::probe::keys::{Keyring, PgpProbe};
use crate::probe::smarthost::SmarthostProbe;
use crate::probe::static_caps::StaticCaps;
use crate::probe::tls_offered::TlsOffered;
use crate::probe::{Probe, Probes};
use crate::queue::{QueuedMessage, Spool};

/// The policy in force and the probes it consults (the policy is swapped
/// whole on reload), and the encryptors that get the keys the probes find.
#[derive(Clone)]
pub struct Engine {
    policy: Arc<RwLock<Arc<Policy>>>,
    patterns: Arc<Vec<String>>,
    probes: Arc<Probes>,
    declared: StaticCaps,
    encryptors: Arc<Encryptors>,
}

impl Engine {
    /// Loads the policy and sets up the probes.
    pub fn new(
        settings: &Settings,
        deliverer: Arc<Deliverer>,
        encryptors: Arc<Encryptors>,
        keyring: Option<Arc<Keyring>>,
    ) -> Result<Engine, crate::policy::PolicyError> {
        let policy = Policy::load(&settings.policy.files)?;
        let declared = StaticCaps::default();
        declared.set(policy.declared_capabilities());
        let mut probes: Vec<Arc<dyn Probe>> = vec![Arc::new(declared.clone())];
        // Through a smarthost the recipient's MX is not our hop: its DANE
        // and MTA-STS policies are the smarthost's business, and the TLS
        // floor is met by the smarthost itself (see `probe::smarthost`).
        let smarthost = settings.delivery.smarthost.is_some();
        if !smarthost {
            probes.push(Arc::new(crate::probe::dane::DaneProbe(deliverer.dane())));
            probes.push(Arc::new(crate::probe::mta_sts::MtaStsProbe(
                deliverer.mta_sts(),
            )));
        }
        match keyring {
            Some(keyring) => probes.push(Arc::new(pgp_probe(
                settings,
                &deliverer,
                &encryptors,
                keyring,
            ))),
            None => probes.push(Arc::new(PendingPgp {
                settings: settings.clone(),
                deliverer: deliverer.clone(),
                encryptors: encryptors.clone(),
                opened: tokio::sync::OnceCell::new(),
                next_try: std::sync::Mutex::new(None),
            })),
        }
        if smarthost {
            let dane = deliverer.dane();
            probes.push(Arc::new(SmarthostProbe::new(deliverer, dane)));
        } else {
            probes.push(Arc::new(TlsOffered::new(deliverer)));
        }
        Ok(Engine {
            policy: Arc::new(RwLock::new(Arc::new(policy))),
            patterns: Arc::new(settings.policy.files.clone()),
            probes: Arc::new(Probes::new(
                probes,
                settings.probe.timeout,
                settings.probe.cache_ttl,
            )),
            declared,
            encryptors,
        })
    }

    /// The encrypt stage's keys (signing keys, additional decryption key,
    /// the key store once open).
    pub fn encryptors(&self) -> &Encryptors {
        &self.encryptors
    }

    /// The policy now in force.
    pub fn current(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the policy files; on error the old policy stays.
    pub fn reload(&self) -> Result<String, String> {
        match Policy::load(&self.patterns) {
            Ok(p) => {
                let v = p.version().to_string();
                self.declared.set(p.declared_capabilities());
                *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
                self.probes.clear();
                tracing::info!(policy_version = %v, "policy reloaded");
                Ok(format!("policy reloaded, version {v}"))
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload failed; the previous policy stays in force");
                Err(format!("{e}\nthe previous policy stays in force"))
            }
        }
    }

    /// Decides for the given recipients of `msg` (index, address, released
    /// from hold): message facts once, probes concurrently per recipient.
    /// Mail sealgate generates itself (DSNs, TLS reports) is decided the
    /// same way: it carries no PHI, but the transport rules (DANE, MTA-STS,
    /// verified TLS) of its destination still apply.
    pub async fn decide(
        &self,
        msg: &QueuedMessage,
        spool: &Spool,
        recipients: &[(usize, String, bool)],
    ) -> Vec<(usize, Decision)> {
        let policy = self.current();
        let facts = if policy.needs_content() {
            let limit = policy.max_scan_size().min(usize::MAX as u64) as usize;
            match spool.read_content(&msg.id, limit).await {
                Ok(content) => {
                    let truncated = msg.size > limit as u64;
                    MessageFacts::scan(content, truncated, ScanLimits::default()).await
                }
                Err(e) => {
                    tracing::error!(queue_id = %msg.id, error = %e, "cannot read the message to apply the policy");
                    let reason = format!("the message could not be read from the spool: {e}");
                    return recipients
                        .iter()
                        .map(|(i, _, _)| (*i, unreadable(&policy, &reason)))
                        .collect();
                }
            }
        } else {
            MessageFacts::default()
        };
        let envelope = Envelope {
            sender: msg.sender.clone(),
            client_ip: msg.client.ip.parse().ok(),
            auth_user: msg.client.auth_user.clone(),
            size: msg.size,
            requiretls: msg.requiretls,
        };
        self.decide_facts(&policy, envelope, facts, recipients)
            .await
    }

    /// Decides for `recipients` of a message with the given facts.
    pub async fn decide_facts(
        &self,
        policy: &Policy,
        envelope: Envelope,
        facts: MessageFacts,
        recipients: &[(usize, String, bool)],
    ) -> Vec<(usize, Decision)> {
        let prepared = tokio::task::block_in_place(|| policy.prepare(envelope, facts));
        let jobs = recipients.iter().map(|(i, addr, released)| {
            let prepared = &prepared;
            async move {
                let eval = prepared.evaluate(addr, *released);
                let reports = self.probes.run(addr, |name| eval.wants_probe(name)).await;
                (*i, prepared.decide(&eval, reports))
            }
        });
        futures_util::future::join_all(jobs).await
    }
}

/// Opens the OpenPGP key store in the audit database. Without it the
/// engine registers [`PendingPgp`], which keeps trying.
pub async fn open_keyring(settings: &Settings, deliverer: &Deliverer) -> Option<Arc<Keyring>> {
    match try_open_keyring(settings, deliverer).await {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(error = %e, "OpenPGP key store unavailable; recipients whose rule names OpenPGP wait until it is reachable (tried again at most every {}s)", KEYRING_RETRY.as_secs());
            None
        }
    }
}

async fn try_open_keyring(
    settings: &Settings,
    deliverer: &Deliverer,
) -> Result<Arc<Keyring>, String> {
    Keyring::open(
        &settings.audit.database_url,
        Some(deliverer.resolver().clone()),
        Some(deliverer.tls_clients().verified.clone()),
        settings.probe.timeout,
    )
    .await
    .map(Arc::new)
    .map_err(|e| e.to_string())
}

/// The OpenPGP probe over an open key store, and delivery given the same.
fn pgp_probe(
    settings: &Settings,
    deliverer: &Deliverer,
    encryptors: &Encryptors,
    keyring: Arc<Keyring>,
) -> PgpProbe {
    encryptors.set_keyring(keyring.clone());
    keyring.set_dane(deliverer.dane());
    if let Some(host) = &settings.pgp.keyserver {
        keyring.set_keyserver(host.clone());
    }
    PgpProbe {
        keyring,
        sources: settings.pgp.sources.clone(),
        hold_changed: settings.pgp.hold_changed,
    }
}

/// How long [`PendingPgp`] waits between attempts to open the key store.
const KEYRING_RETRY: Duration = Duration::from_secs(30);

/// The OpenPGP probe while the key store could not be opened (at start):
/// it tries again, at most every [`KEYRING_RETRY`], and until the store
/// opens it fails, so that a recipient whose rule names OpenPGP waits
/// rather than losing a stored key to an outage and going with less.
struct PendingPgp {
    settings: Settings,
    deliverer: Arc<Deliverer>,
    encryptors: Arc<Encryptors>,
    opened: tokio::sync::OnceCell<PgpProbe>,
    /// When the next attempt may run, and why the last one failed.
    next_try: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl PendingPgp {
    /// Why the last attempt failed, while the next may not run yet.
    fn backing_off(&self) -> Option<String> {
        let next = self.next_try.lock().unwrap_or_else(|p| p.into_inner());
        next.as_ref()
            .filter(|(when, _)| std::time::Instant::now() < *when)
            .map(|(_, why)| why.clone())
    }

    async fn opened(&self) -> Result<&PgpProbe, String> {
        if let Some(p) = self.opened.get() {
            return Ok(p);
        }
        if let Some(why) = self.backing_off() {
            return Err(why);
        }
        let opened = self
            .opened
            .get_or_try_init(|| async {
                // Those that queued behind a failed attempt do not retry.
                if let Some(why) = self.backing_off() {
                    return Err(why);
                }
                // Within the probe's own timeout, so the reason is recorded.
                let limit = self.settings.probe.timeout / 2;
                let k =
                    tokio::time::timeout(limit, try_open_keyring(&self.settings, &self.deliverer))
                        .await
                        .map_err(|_| format!("no answer within {}s", limit.as_secs_f32()))??;
                tracing::info!("OpenPGP key store reachable again");
                Ok::<_, String>(pgp_probe(
                    &self.settings,
                    &self.deliverer,
                    &self.encryptors,
                    k,
                ))
            })
            .await;
        if let Err(e) = &opened {
            let why = format!(
                "the OpenPGP key store is unreachable ({e}); waiting rather than choosing a weaker method"
            );
            *self.next_try.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((std::time::Instant::now() + KEYRING_RETRY, why.clone()));
            return Err(why);
        }
        opened
    }
}

impl Probe for PendingPgp {
    fn name(&self) -> &'static str {
        "pgp"
    }

    fn cache_key(&self, recipient: &str) -> String {
        recipient.to_lowercase()
    }

    fn probe<'a>(&'a self, recipient: &'a str) -> crate::probe::ProbeFuture<'a> {
        Box::pin(async move {
            match self.opened().await {
                Ok(p) => p.probe(recipient).await,
                Err(why) => crate::probe::ProbeAnswer {
                    result: Err(why),
                    evidence: serde_json::json!({ "key_store": "unreachable" }),
                },
            }
        })
    }
}

/// A decision that keeps the recipient queued because the policy could not
/// be applied.
fn unreadable(policy: &Policy, reason: &str) -> Decision {
    let mut d = Decision::notification(policy.version());
    d.action = crate::policy::Action::Wait;
    d.rule = "default".into();
    d.reason = reason.to_string();
    d
}
