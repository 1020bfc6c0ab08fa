//! `sealgate serve`: wires the stages together and runs them until a
//! signal stops the daemon.
//!
//! inbound → queue → (scheduler) → policy → outbound → audit, then the
//! queue applies the outcomes. Each stage hands the next a plain value.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Semaphore, watch};

use crate::audit::{AuditEvent, AuditSettings, Auditor};
use crate::config::Settings;
use crate::inbound::{self, InboundContext};
use crate::outbound::{Deliverer, RecipientReport};
use crate::policy::facts::{MessageFacts, ScanLimits};
use crate::policy::{Action, Decision, Envelope, Policy};
use crate::probe::keys::{Keyring, PgpProbe};
use crate::probe::smarthost::SmarthostProbe;
use crate::probe::static_caps::StaticCaps;
use crate::probe::tls_offered::TlsOffered;
use crate::probe::{Probe, Probes};
use crate::queue::{
    Queue, QueuedMessage, RecipientOutcome, RecipientStatus, Spool, SpoolKey, Verdict,
};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Spool(#[from] crate::queue::SpoolError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error(transparent)]
    Inbound(#[from] inbound::InboundError),
    #[error(transparent)]
    Connector(#[from] inbound::connector::ConnectorError),
    #[error(transparent)]
    Outbound(#[from] crate::outbound::OutboundError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Control(#[from] crate::queue::control::ControlError),
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
}

/// The policy in force and the probes it consults; the policy is swapped
/// whole on reload.
#[derive(Clone)]
pub struct Engine {
    policy: Arc<RwLock<Arc<Policy>>>,
    patterns: Arc<Vec<String>>,
    probes: Arc<Probes>,
    declared: StaticCaps,
}

impl Engine {
    /// Loads the policy and sets up the probes.
    pub fn new(
        settings: &Settings,
        deliverer: Arc<Deliverer>,
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
            Some(keyring) => probes.push(Arc::new(pgp_probe(settings, &deliverer, keyring))),
            None => probes.push(Arc::new(PendingPgp {
                settings: settings.clone(),
                deliverer: deliverer.clone(),
                opened: tokio::sync::OnceCell::new(),
                next_try: std::sync::Mutex::new(None),
            })),
        }
        if smarthost {
            probes.push(Arc::new(SmarthostProbe::new(deliverer)));
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
        })
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
fn pgp_probe(settings: &Settings, deliverer: &Deliverer, keyring: Arc<Keyring>) -> PgpProbe {
    deliverer.set_keyring(keyring.clone());
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
    opened: tokio::sync::OnceCell<PgpProbe>,
    /// When the next attempt may run, and why the last one failed.
    next_try: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl PendingPgp {
    async fn opened(&self) -> Result<&PgpProbe, String> {
        if let Some(p) = self.opened.get() {
            return Ok(p);
        }
        if let Some((when, why)) = self
            .next_try
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if std::time::Instant::now() < *when {
                return Err(why.clone());
            }
        }
        let opened = self
            .opened
            .get_or_try_init(|| async {
                // Those that queued behind a failed attempt do not retry.
                if let Some((when, why)) = self
                    .next_try
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                {
                    if std::time::Instant::now() < *when {
                        return Err(why.clone());
                    }
                }
                // Within the probe's own timeout, so the reason is recorded.
                let limit = self.settings.probe.timeout / 2;
                let k =
                    tokio::time::timeout(limit, try_open_keyring(&self.settings, &self.deliverer))
                        .await
                        .map_err(|_| format!("no answer within {}s", limit.as_secs_f32()))??;
                tracing::info!("OpenPGP key store reachable again");
                Ok::<_, String>(pgp_probe(&self.settings, &self.deliverer, k))
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

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> Result<(), ServerError> {
    let settings = Arc::new(settings);
    let key = SpoolKey::load(&settings.server.spool_key_file)?;
    let spool = Spool::open(&settings.server.spool_dir, key)?;
    // Before anything reads or cleans the spool, and held until the
    // process exits (not only until this returns: delivery tasks and
    // blocking writes may still run while the runtime shuts down). The
    // kernel releases an `flock` with the process.
    std::mem::forget(spool.lock()?);
    if let Err(e) = spool.record_key_in_use() {
        tracing::error!(error = %e, "cannot record the spool key in use; do not run `sealgate spool-key prune` until this start succeeds in recording it");
    }
    let (queue, recovered) = Queue::open(
        spool,
        settings.queue.clone(),
        settings.server.hostname.clone(),
    )?;
    if recovered.discarded > 0 {
        tracing::info!(
            files = recovered.discarded,
            "discarded half-received messages from the spool (their clients never got 250)"
        );
    }
    for d in &recovered.damaged {
        tracing::error!(detail = %d, "spool file could not be read; left in place for an operator");
    }
    let deliverer = Deliverer::new(settings.clone()).await?;
    // Announced MTA-STS policies that cannot be obtained count in TLS-RPT
    // (the daemon's probes only: `sealgate probe` reports nothing).
    deliverer
        .mta_sts()
        .report_failures_to(deliverer.tls_reporter());
    let keyring = open_keyring(&settings, &deliverer).await;
    let policy = Engine::new(&settings, deliverer.clone(), keyring)?;
    let auditor = Auditor::start(AuditSettings::new(
        settings.audit.database_url.clone(),
        settings.audit.journal_dir.clone(),
    ))
    .await?;

    reconcile(&queue, &auditor, &recovered.unresolved).await;

    let connectors = inbound::connector::Connectors::load(&settings.relay.connectors)?;
    let tls = match &settings.server.tls {
        Some(t) => Some(inbound::tls_acceptor(
            &t.cert,
            &t.key,
            connectors.client_verifier(),
        )?),
        None => None,
    };
    let listeners = inbound::bind(&settings).await?;
    let bound: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    let (stop_tx, stop_rx) = watch::channel(false);

    let ctx = Arc::new(InboundContext {
        settings: settings.clone(),
        queue: queue.clone(),
        tls,
        users: inbound::auth::Users::new(
            settings.server.users.clone(),
            settings.server.auth.max_verifications,
        ),
        lockout: inbound::auth::Lockout::new(settings.server.auth.clone()),
        connectors,
        auditor: auditor.clone(),
    });
    let reload_policy = policy.clone();
    let reload: crate::queue::control::ReloadFn = Arc::new(move || reload_policy.reload());
    let control = tokio::spawn(crate::queue::control::serve(
        settings.server.control_socket.clone(),
        queue.clone(),
        reload.clone(),
    ));
    let inbound_task = tokio::spawn(inbound::serve(ctx, listeners, stop_rx.clone()));
    let scanner = queue.start_scanner(stop_rx.clone());
    let scheduler = tokio::spawn(schedule(
        queue.clone(),
        deliverer.clone(),
        policy.clone(),
        auditor.clone(),
        stop_rx.clone(),
    ));
    let reporter = tokio::spawn(tls_reports(
        settings.clone(),
        deliverer.clone(),
        queue.clone(),
    ));
    // Cached MTA-STS policies are refreshed before they expire, also for
    // domains nobody is mailing now (RFC 8461 section 10.2).
    let sts_refresh = tokio::spawn(
        deliverer
            .mta_sts()
            .refresh_loop(settings.probe.mta_sts_refresh),
    );
    let reaper = {
        let d = deliverer.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                d.reap_idle();
            }
        })
    };
    tracing::info!(
        listen = %format!("[{}]", bound.join(",")),
        queued = queue.len(),
        policy_version = %policy.current().version(),
        "sealgate started"
    );

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServerError::Signal)?;
    let mut control = control;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { let _ = reload(); }
            r = &mut control => {
                match r {
                    Ok(Err(e)) => return Err(e.into()),
                    _ => tracing::error!("control socket stopped"),
                }
                break;
            }
        }
    }
    tracing::info!("shutting down: no new connections, finishing deliveries in progress");
    let _ = stop_tx.send(true);
    let _ = inbound_task.await;
    let _ = scheduler.await;
    let _ = scanner.await;
    reaper.abort();
    sts_refresh.abort();
    reporter.abort();
    deliverer.tls_reporter().flush();
    control.abort();
    let _ = std::fs::remove_file(&settings.server.control_socket);
    if !auditor.flush(Duration::from_secs(10)).await {
        tracing::warn!(
            pending = auditor.pending(),
            "audit database not reachable; events stay in the local journal and are written at next start"
        );
    }
    tracing::info!("sealgate stopped");
    Ok(())
}

/// Sends the RFC 8460 aggregate reports of finished periods to the
/// domains that publish `_smtp._tls` with an `rua`.
async fn tls_reports(settings: Arc<Settings>, deliverer: Arc<Deliverer>, queue: Queue) {
    let reporter = deliverer.tls_reporter();
    let every =
        (settings.tls_report.period / 2).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::time::sleep(every).await;
        reporter.flush();
        if !settings.tls_report.enabled {
            continue;
        }
        for period in reporter.due_periods() {
            for (domain, counts) in &period.domains {
                send_tls_report(
                    &settings,
                    &deliverer,
                    &queue,
                    domain,
                    counts,
                    period.start,
                    reporter.period(),
                )
                .await;
            }
            reporter.mark_sent(period.start);
        }
    }
}

async fn send_tls_report(
    settings: &Settings,
    deliverer: &Deliverer,
    queue: &Queue,
    domain: &str,
    counts: &std::collections::BTreeMap<String, crate::outbound::tlsrpt::PolicyCounts>,
    start: i64,
    period: i64,
) {
    use crate::outbound::tlsrpt;
    let name = format!("_smtp._tls.{domain}.");
    let records: Vec<String> = match deliverer.resolver().txt_lookup(name).await {
        Ok(l) => l
            .iter()
            .map(|t| {
                t.txt_data()
                    .iter()
                    .map(|d| String::from_utf8_lossy(d).into_owned())
                    .collect()
            })
            .collect(),
        Err(_) => return,
    };
    let rua = tlsrpt::parse_rua(&records);
    if rua.is_empty() {
        return;
    }
    let tr = &settings.tls_report;
    let report = tlsrpt::report_json(domain, counts, start, period, &tr.organization, &tr.contact);
    let json = serde_json::to_vec(&report).unwrap_or_default();
    let gz = tlsrpt::gzip(&json);
    let report_id = report["report-id"].as_str().unwrap_or_default().to_string();
    for target in rua {
        if let Some(addr) = target.strip_prefix("mailto:") {
            let host = &settings.server.hostname;
            let content = tls_report_mail(
                host,
                &tr.organization,
                domain,
                &report_id,
                &addr,
                start,
                period,
                &gz,
            );
            let sender = format!("postmaster@{host}");
            match queue
                .enqueue_local(&sender, addr, &content, None, false, false)
                .await
            {
                Ok(id) => tracing::info!(domain, queue_id = %id, "TLS report queued"),
                Err(e) => tracing::warn!(domain, error = %e, "cannot queue the TLS report"),
            }
        } else if let Some(rest) = target.strip_prefix("https://") {
            let (host, path) = rest
                .split_once('/')
                .map(|(h, p)| (h, format!("/{p}")))
                .unwrap_or((rest, "/".into()));
            let tls = deliverer.tls_clients().verified.clone();
            match crate::probe::https::post(
                deliverer.resolver(),
                tls,
                host,
                &path,
                "application/tlsrpt+gzip",
                &gz,
                settings.probe.timeout,
            )
            .await
            {
                Ok(f) if (200..300).contains(&f.status) => {
                    tracing::info!(domain, url = %target, "TLS report posted")
                }
                Ok(f) => {
                    tracing::warn!(domain, url = %target, status = f.status, "TLS report refused")
                }
                Err(e) => tracing::warn!(domain, error = %e, "cannot post the TLS report"),
            }
        }
    }
}

/// The report mail of RFC 8460 section 5.3.
#[allow(clippy::too_many_arguments)]
fn tls_report_mail(
    host: &str,
    org: &str,
    domain: &str,
    report_id: &str,
    to: &str,
    start: i64,
    period: i64,
    gz: &[u8],
) -> Vec<u8> {
    use base64::Engine;
    let boundary = format!("sealgate-tlsrpt-{}", crate::util::random_hex_id());
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let mut body = String::new();
    for chunk in b64.as_bytes().chunks(76) {
        body.push_str(&String::from_utf8_lossy(chunk));
        body.push_str("\r\n");
    }
    let filename = format!("{org}!{domain}!{start}!{}.json.gz", start + period - 1);
    format!(
        "From: TLS reporting <postmaster@{host}>\r\nTo: <{to}>\r\nSubject: Report Domain: {domain} Submitter: {org} Report-ID: <{report_id}>\r\n\
         TLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {org}\r\nDate: {date}\r\nMessage-ID: <{mid}@{host}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThis is an aggregate TLS report from {org} for {domain}.\r\n\r\n\
         --{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\r\n{body}\r\n--{boundary}--\r\n",
        date = Utc::now().to_rfc2822(),
        mid = crate::util::random_hex_id(),
    )
    .into_bytes()
}

/// Hands due messages to delivery, at most `queue.max_active` at once.
async fn schedule(
    queue: Queue,
    deliverer: Arc<Deliverer>,
    policy: Engine,
    auditor: Auditor,
    mut stop: watch::Receiver<bool>,
) {
    let active = Arc::new(Semaphore::new(queue.settings().max_active));
    let mut running = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = active.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let Some(msg) = queue.next_due(&mut stop).await else {
            break;
        };
        let queue_for_release = queue.clone();
        let (q, d, p, a) = (
            queue.clone(),
            deliverer.clone(),
            policy.clone(),
            auditor.clone(),
        );
        running.spawn(async move {
            let id = msg.id.clone();
            // A bug in one delivery must not strand the message in flight.
            let task = tokio::spawn(async move { attempt(&q, &d, &p, &a, msg).await });
            if let Err(e) = task.await {
                tracing::error!(queue_id = %id, error = %e, "delivery task failed; the message stays queued and is tried again after a backoff");
                queue_for_release.release_after_failure(&id);
            }
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    // Deliveries in progress finish (bounded); what they do not finish
    // stays in the spool and is tried again at the next start.
    let drain = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        running.abort_all();
    }
}

/// One delivery attempt of one message: decide, deliver, audit, apply.
pub async fn attempt(
    queue: &Queue,
    deliverer: &Deliverer,
    engine: &Engine,
    auditor: &Auditor,
    msg: QueuedMessage,
) {
    let now = Utc::now();
    let due: Vec<(usize, String, bool)> = msg
        .open_recipients()
        .filter(|(_, r)| r.status != RecipientStatus::Held)
        .filter(|(_, r)| r.next_attempt.is_none_or(|t| t <= now))
        .map(|(i, r)| (i, r.address.clone(), r.released))
        .collect();
    if due.is_empty() {
        if queue.needs_persist(&msg.id) {
            // Outcomes kept in memory after a failed write: write them now.
            if let Err(e) = queue.complete(msg.clone(), &[]).await {
                tracing::error!(queue_id = %msg.id, error = %e, "cannot write the queue state yet; tried again after a backoff");
            }
        } else {
            queue.release(&msg.id);
        }
        return;
    }
    let decisions = engine.decide(&msg, queue.spool(), &due).await;
    let mut work = Vec::new();
    let mut reports = Vec::new();
    for (index, decision) in decisions {
        let outcome = match decision.action {
            Action::Deliver => {
                work.push((index, decision));
                continue;
            }
            Action::Reject => RecipientOutcome {
                verdict: Verdict::Permanent,
                reply: format!("rejected by policy: {}", decision.reason),
                enhanced: Some("5.7.1".into()),
                remote: None,
            },
            Action::Hold => RecipientOutcome {
                verdict: Verdict::Held,
                reply: decision.reason.clone(),
                enhanced: Some("4.7.0".into()),
                remote: None,
            },
            Action::Wait => RecipientOutcome {
                verdict: Verdict::Temporary,
                reply: decision.reason.clone(),
                enhanced: Some("4.7.5".into()),
                remote: None,
            },
        };
        tracing::info!(queue_id = %msg.id, recipient_index = index, rule = %decision.rule, action = ?decision.action, "policy decision");
        reports.push(RecipientReport {
            index,
            decision,
            outcome,
            evidence: Default::default(),
        });
    }
    let mut ticket = None;
    if !work.is_empty() {
        let rcpts = work
            .iter()
            .map(|(i, d)| crate::queue::attempts::AttemptRecipient {
                index: *i,
                address: msg
                    .recipients
                    .get(*i)
                    .map(|r| r.address.clone())
                    .unwrap_or_default(),
                method: d.method.as_str().to_string(),
                tls: d.tls.as_str().to_string(),
                rule: d.rule.clone(),
                policy_version: d.policy_version.clone(),
            })
            .collect();
        match queue.begin_attempt(&msg, rcpts).await {
            Ok(t) => ticket = Some(t),
            Err(e) => {
                tracing::error!(queue_id = %msg.id, error = %e, "cannot log the delivery attempt; nothing was sent, the message waits and is tried again after a backoff");
                queue.release_after_failure(&msg.id);
                return;
            }
        }
        reports.extend(deliverer.deliver(&msg, queue.spool(), work).await);
    }
    let settled = queue.settle(
        &msg,
        reports
            .iter()
            .map(|r| (r.index, r.outcome.clone()))
            .collect(),
    );
    let mut events = reports
        .iter()
        .zip(&settled)
        .map(|(report, (_, outcome))| audit_event(&msg, report, outcome))
        .collect::<std::collections::VecDeque<_>>();
    while let Some(event) = events.front() {
        if let Err(e) = auditor.record(event.clone()).await {
            // The outcomes are real (a remote may have said 250): keep them
            // in memory so nobody gets the message twice, and journal the
            // rest as soon as the journal takes them.
            tracing::error!(queue_id = %msg.id, error = %e, "cannot journal the audit event; the outcome is kept in memory and journaled when possible");
            queue.keep_outcomes_unsaved(msg, &settled);
            tokio::spawn(journal_later(
                queue.clone(),
                auditor.clone(),
                events,
                ticket,
            ));
            return;
        }
        events.pop_front();
    }
    if let Err(e) = queue.complete(msg.clone(), &settled).await {
        // The state stays in memory and is written after a backoff; the
        // attempt itself is fully audited.
        tracing::error!(queue_id = %msg.id, error = %e, "cannot update the spool after delivery; the state is kept in memory and written after a backoff");
    }
    if let Some(t) = ticket {
        queue.finish_attempt(t);
    }
}

/// Journals audit events that the journal refused, retrying with a growing
/// pause; the attempt is done once they are in. If the daemon stops first,
/// the attempt log turns the attempt into "unknown" rows at the next start.
async fn journal_later(
    queue: Queue,
    auditor: Auditor,
    mut events: std::collections::VecDeque<AuditEvent>,
    ticket: Option<crate::queue::AttemptTicket>,
) {
    let mut pause = Duration::from_secs(1);
    while let Some(event) = events.front() {
        match auditor.record(event.clone()).await {
            Ok(()) => {
                events.pop_front();
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
    }
    if let Some(t) = ticket {
        queue.finish_attempt(t);
    }
}

/// Records, for each attempt whose audit events a crash lost, that its
/// recipients may or may not have received the message (those still queued
/// are delivered again: at least once). Then the old attempt log can go.
async fn reconcile(queue: &Queue, auditor: &Auditor, unresolved: &[crate::queue::Unresolved]) {
    let mut recipients = 0;
    for attempt in unresolved {
        for r in &attempt.rcpts {
            let event = AuditEvent {
                event_id: AuditEvent::new_id(),
                timestamp: Utc::now(),
                queue_id: attempt.id.0.clone(),
                message_id: attempt.message_id.clone(),
                sender: attempt.sender.clone(),
                recipient: r.address.clone(),
                outcome: "unknown".into(),
                method: r.method.clone(),
                tls_requirement: r.tls.clone(),
                policy_rule: r.rule.clone(),
                policy_version: r.policy_version.clone(),
                remote_host: None,
                remote_ip: None,
                tls_version: None,
                tls_cipher: None,
                smtp_reply: Some(
                    "delivered or not known: sealgate stopped after this attempt began and before its outcome was journaled".into(),
                ),
                body_sha256: None,
                evidence: serde_json::json!({
                    "attempt": attempt.attempt,
                    "attempt_started": attempt.at.to_rfc3339(),
                    "still_queued": queue.get(&attempt.id).is_some(),
                }),
            };
            if let Err(e) = auditor.record(event).await {
                tracing::error!(error = %e, "cannot journal an interrupted delivery attempt; the attempt log is kept and read again at the next start");
                return;
            }
            recipients += 1;
        }
    }
    if recipients > 0 {
        tracing::warn!(
            recipients,
            "delivery attempts interrupted by a stop were recorded as delivered-or-not-known; recipients still queued are tried again"
        );
    }
    if let Err(e) = queue.forget_attempts_before_start() {
        tracing::warn!(error = %e, "cannot remove the old attempt log; its attempts are reported again at the next start");
    }
}

fn audit_event(
    msg: &QueuedMessage,
    report: &RecipientReport,
    outcome: &crate::queue::RecipientOutcome,
) -> AuditEvent {
    let ev = &report.evidence;
    let method = if ev.method.is_empty() {
        report.decision.method.as_str().to_string()
    } else {
        ev.method.clone()
    };
    AuditEvent {
        event_id: AuditEvent::new_id(),
        timestamp: Utc::now(),
        queue_id: msg.id.0.clone(),
        message_id: msg.message_id.clone(),
        sender: msg.sender.clone(),
        recipient: msg
            .recipients
            .get(report.index)
            .map(|r| r.address.clone())
            .unwrap_or_default(),
        outcome: match outcome.verdict {
            Verdict::Delivered => "delivered",
            Verdict::Temporary => "deferred",
            Verdict::Permanent => "bounced",
            Verdict::Held => "held",
        }
        .into(),
        method,
        tls_requirement: report.decision.tls.as_str().into(),
        policy_rule: report.decision.rule.clone(),
        policy_version: report.decision.policy_version.clone(),
        remote_host: ev.remote_host.clone(),
        remote_ip: ev.remote_ip.clone(),
        tls_version: ev.tls.as_ref().map(|t| t.version.clone()),
        tls_cipher: ev.tls.as_ref().map(|t| t.cipher.clone()),
        smtp_reply: Some(outcome.reply.clone()),
        body_sha256: ev.body_sha256.clone(),
        evidence: serde_json::json!({
            "decision": report.decision,
            "attempt": ev,
            "status": outcome.enhanced,
            "cert_verified": ev.tls.as_ref().map(|t| t.cert_verified),
        }),
    }
}
