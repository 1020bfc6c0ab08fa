//! `sealgate serve`: wires the stages together and runs them until a
//! signal stops the daemon.
//!
//! inbound → queue → dispatch (scheduler: policy and probes decide,
//! outbound delivers) → audit, then the queue applies the outcomes. Each
//! stage hands the next a plain value; the attempt itself is in
//! `dispatch`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::audit::{AuditSettings, Auditor};
use crate::config::Settings;
use crate::dispatch::{Engine, open_keyring, reconcile, schedule};
use crate::encrypt::prepare::Encryptors;
use crate::inbound::{self, InboundContext};
use crate::outbound::Deliverer;
use crate::outbound::tlsrpt::send::tls_reports;
use crate::queue::{Queue, Spool, SpoolKey};

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
    Keys(#[from] crate::encrypt::prepare::KeyError),
    #[error(transparent)]
    Control(#[from] crate::queue::control::ControlError),
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
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
    let encryptors = Arc::new(Encryptors::load(&settings)?);
    let keyring = open_keyring(&settings, &deliverer).await;
    let policy = Engine::new(&settings, deliverer.clone(), encryptors, keyring)?;
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
    // Expired portal messages lose their keys, then their content.
    let portal_expiry = settings.portal.as_ref().map(|_| {
        tokio::spawn(crate::portal::expiry_loop(
            settings.audit.database_url.clone(),
        ))
    });
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
    if let Some(t) = portal_expiry {
        t.abort();
    }
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
