//! The in-memory schedule over the spool: which message is due when, which
//! are being delivered, and how delivery outcomes change recipient state.
//!
//! A bounded active window over a large deferred queue, as in Postfix's
//! queue manager: at most `[queue] max_window` messages are in memory,
//! indexed by due time; the others are on disk only, indexed by their
//! envelope file's mtime (see `spool`). New mail enters the window when it
//! has room, or pushes out a message that is not due yet; the listener
//! never waits for the window (a message that does not fit is durable on
//! disk already and is found by the scanner). The scanner (`scan.rs`)
//! walks the folder when the window has room and a message on disk may be
//! due, and loads the due ones, soonest first. A backlog of a million
//! deferred messages costs a directory walk when one of them may be due,
//! not a million envelopes in memory.
//!
//! The envelope on disk is the truth; the window is a cache of it with
//! two kinds of in-memory-only change, neither of which ever leaves the
//! window by eviction: a failure backoff (`failures > 0`) and `flush`
//! (due now).

mod scan;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::attempts::{AttemptLog, AttemptTicket};
use super::spool::{Recovered, Spool, SpoolError};
use super::{QueueId, QueuedMessage, RecipientStatus};
use crate::config::QueueSettings;

/// Longest sleep of the schedule or the scanner without a wake-up: both
/// look at their state again at least this often.
const IDLE: Duration = Duration::from_secs(3600);

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("no message {0} in the queue")]
    NotFound(String),
    #[error("message {0} is being delivered right now; try again in a moment")]
    Busy(String),
}

/// How one delivery attempt ended for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The remote accepted the recipient and the message.
    Delivered,
    /// Try again later (4xx, network, DNS or TLS trouble, policy hold).
    Temporary,
    /// Will never work (5xx); bounce.
    Permanent,
    /// Quarantined by policy until an operator releases it.
    Held,
}

/// The outcome for one recipient, as the queue needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    pub verdict: Verdict,
    /// Remote reply or our own reason, one line.
    pub reply: String,
    /// Enhanced status code (`5.1.1`), when known.
    pub enhanced: Option<String>,
    /// The remote host it concerned, when any.
    pub remote: Option<String>,
}

impl RecipientOutcome {
    /// The outcome of a recipient whose lifetime in the queue ran out.
    pub fn expired(last: &RecipientOutcome) -> RecipientOutcome {
        RecipientOutcome {
            verdict: Verdict::Permanent,
            reply: format!("delivery time expired; last error: {}", last.reply),
            enhanced: Some("4.4.7".into()),
            remote: last.remote.clone(),
        }
    }
}

struct Slot {
    msg: QueuedMessage,
    in_flight: bool,
    /// Attempts in a row that failed on our side (journal, spool, a bug)
    /// since the state was last persisted: each backs off further.
    failures: u32,
    /// Outcomes are applied in memory but not yet on disk: write them at
    /// this time (even if no recipient is due then).
    persist_at: Option<DateTime<Utc>>,
    /// The key under which the message sits in `due`, if scheduled.
    due_key: Option<(DateTime<Utc>, QueueId)>,
    /// Whether the message sits in `parked` (idle, nothing due by time).
    parked: bool,
}

impl Slot {
    fn new(msg: QueuedMessage) -> Slot {
        Slot {
            msg,
            in_flight: false,
            failures: 0,
            persist_at: None,
            due_key: None,
            parked: false,
        }
    }

    /// Whether the message may leave the window for the disk: its
    /// envelope holds all of its state.
    fn can_wait_on_disk(&self) -> bool {
        !self.in_flight && self.failures == 0 && self.persist_at.is_none()
    }
}

#[derive(Default)]
struct State {
    /// The window: messages in memory, at most `max_window`.
    messages: HashMap<QueueId, Slot>,
    due: BTreeSet<(DateTime<Utc>, QueueId)>,
    /// Idle messages in the window with nothing due by time (held
    /// recipients only): the first to make way for due mail.
    parked: BTreeSet<QueueId>,
    /// Committed messages, in the window or on disk only.
    queued: usize,
    /// A time from which a message on disk only may be due (a lower
    /// bound); `None` when no such message is known, and the scanner
    /// sleeps.
    disk_due: Option<DateTime<Utc>>,
    /// `queue flush` at this time: envelopes on disk last written before
    /// it are due now, until a scan has brought them all in.
    flush_before: Option<SystemTime>,
    /// Messages an operator command is changing or removing outside the
    /// window: the scanner leaves them alone.
    busy: HashSet<QueueId>,
    /// While a scan runs: messages whose envelope was rewritten or
    /// deleted since it began. The scan may have read the old file; it
    /// must not bring that stale copy into the window (a recipient already
    /// delivered would be tried again).
    changed_in_scan: Option<HashSet<QueueId>>,
    /// Envelopes that cannot be read: never loaded.
    damaged: HashSet<QueueId>,
}

impl State {
    fn schedule(&mut self, id: &QueueId) {
        let Some(slot) = self.messages.get_mut(id) else {
            return;
        };
        if let Some(key) = slot.due_key.take() {
            self.due.remove(&key);
        }
        if std::mem::take(&mut slot.parked) {
            self.parked.remove(id);
        }
        if slot.in_flight {
            return;
        }
        let at = match (slot.msg.next_due(), slot.persist_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match at {
            Some(at) => {
                let key = (at, id.clone());
                self.due.insert(key.clone());
                slot.due_key = Some(key);
            }
            None => {
                self.parked.insert(id.clone());
                slot.parked = true;
            }
        }
    }

    /// Takes message `id` out of the window and its indexes.
    fn take(&mut self, id: &QueueId) -> Option<Slot> {
        let slot = self.messages.remove(id)?;
        if let Some(key) = &slot.due_key {
            self.due.remove(key);
        }
        if slot.parked {
            self.parked.remove(id);
        }
        Some(slot)
    }

    /// Message `id` has left the queue for good (its files are gone).
    fn deleted(&mut self, id: &QueueId) {
        self.take(id);
        self.queued = self.queued.saturating_sub(1);
        self.damaged.remove(id);
        self.written(id);
    }

    /// The envelope of `id` has just been written (under the lock, after
    /// the write): a scan that read it before must not use its copy.
    fn written(&mut self, id: &QueueId) {
        if let Some(changed) = self.changed_in_scan.as_mut() {
            changed.insert(id.clone());
        }
    }

    /// A message on disk only may be due from `at` on.
    fn on_disk_due(&mut self, at: DateTime<Utc>) {
        self.disk_due = Some(self.disk_due.map_or(at, |d| d.min(at)));
    }

    /// Messages in the window that could make way for due mail, latest
    /// first: held-only ones, then those not due before `now`.
    fn waiting(&self, now: DateTime<Utc>) -> impl Iterator<Item = &QueueId> {
        let later = self
            .due
            .iter()
            .rev()
            .take_while(move |(at, _)| *at > now)
            .map(|(_, id)| id);
        self.parked
            .iter()
            .chain(later)
            .filter(move |id| self.messages.get(*id).is_some_and(Slot::can_wait_on_disk))
    }

    /// How many due messages the window could take in now.
    fn capacity(&self, window: usize, now: DateTime<Utc>) -> usize {
        window.saturating_sub(self.messages.len()) + self.waiting(now).count()
    }

    /// Puts `msg` into the window if it has room, or if `msg` is due and a
    /// message that is not makes way (back to disk only, where its
    /// envelope already is). Otherwise `msg` stays on disk only, for the
    /// scanner. Returns whether it is in the window.
    fn admit(&mut self, msg: QueuedMessage, window: usize, now: DateTime<Utc>) -> bool {
        if self.messages.contains_key(&msg.id) {
            return true;
        }
        let due = msg.next_due();
        if self.messages.len() >= window {
            let victim = match due {
                Some(at) if at <= now => self.waiting(now).next().cloned(),
                _ => None,
            };
            let Some(victim) = victim else {
                if let Some(at) = due {
                    self.on_disk_due(at);
                }
                return false;
            };
            if let Some(at) = self.take(&victim).and_then(|s| s.msg.next_due()) {
                self.on_disk_due(at);
            }
        }
        let id = msg.id.clone();
        self.messages.insert(id.clone(), Slot::new(msg));
        self.schedule(&id);
        true
    }
}

/// Makes every open recipient of `msg` due now (held ones stay held).
fn flush_recipients(msg: &mut QueuedMessage) {
    for r in msg.recipients.iter_mut().filter(|r| !r.status.is_final()) {
        r.next_attempt = None;
    }
}

/// Releases the held recipients of `msg`; returns how many there were.
fn release_recipients(msg: &mut QueuedMessage) -> usize {
    let mut n = 0;
    for r in msg
        .recipients
        .iter_mut()
        .filter(|r| r.status == RecipientStatus::Held)
    {
        r.status = RecipientStatus::Pending;
        r.released = true;
        r.next_attempt = None;
        n += 1;
    }
    n
}

fn not_found(e: &SpoolError) -> bool {
    matches!(e, SpoolError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

struct Inner {
    spool: Spool,
    attempts: AttemptLog,
    settings: QueueSettings,
    hostname: String,
    state: Mutex<State>,
    /// Wakes `next_due`: something may be due sooner.
    wake: Notify,
    /// Wakes the scanner: room in the window, or mail on disk may be due.
    scan_wake: Notify,
}

/// The queue handle, cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl Queue {
    /// Opens the queue over `spool`: recovers the spool, reading into the
    /// window only the messages due soonest (the others stay on disk), and
    /// finds the attempts a crash left without an outcome.
    pub fn open(
        spool: Spool,
        settings: QueueSettings,
        hostname: String,
    ) -> Result<(Queue, Recovered), QueueError> {
        let window = settings.max_window.max(1);
        let mut recovered = spool.recover(window)?;
        let (attempts, unresolved) = AttemptLog::open(&spool.root().join("attempts"))?;
        recovered.unresolved = unresolved;
        let mut st = State {
            queued: recovered.queued,
            damaged: recovered.damaged_ids.iter().cloned().collect(),
            ..State::default()
        };
        if let Some(at) = recovered.on_disk_due {
            st.on_disk_due(DateTime::<Utc>::from(at));
        }
        let now = Utc::now();
        for msg in recovered.messages.drain(..) {
            st.admit(msg, window, now);
        }
        let queue = Queue {
            inner: Arc::new(Inner {
                spool,
                attempts,
                settings,
                hostname,
                state: Mutex::new(st),
                wake: Notify::new(),
                scan_wake: Notify::new(),
            }),
        };
        Ok((queue, recovered))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-changed
        // in a way that loses mail (the spool is the truth), so go on.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn window(&self) -> usize {
        self.inner.settings.max_window.max(1)
    }

    /// The spool under this queue.
    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    /// The queue settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.inner.settings
    }

    /// Commits a received message (its content already fsynced): writes the
    /// envelope, which makes it durable, then schedules it at once if the
    /// window can take it; otherwise the scanner brings it in later. Never
    /// waits for room.
    ///
    /// If the envelope cannot be written (a full disk, a failed folder
    /// fsync after the rename) both files are removed before this returns
    /// the error, and the scanner, which may already see the envelope,
    /// leaves the message alone meanwhile: the client is told to try
    /// again, so the message must not also be delivered.
    pub async fn enqueue(&self, msg: QueuedMessage) -> Result<(), QueueError> {
        let id = msg.id.clone();
        self.lock().busy.insert(id.clone());
        if let Err(e) = self.inner.spool.write_envelope(&msg).await {
            let removed = self.inner.spool.remove(&id).await;
            let mut st = self.lock();
            st.busy.remove(&id);
            st.written(&id);
            drop(st);
            if let Err(r) = removed {
                tracing::error!(queue_id = %id, error = %r, "cannot remove a message whose envelope could not be written; it stays on disk and may be delivered although the client was told to try again");
                self.lock().on_disk_due(Utc::now());
            }
            return Err(e.into());
        }
        {
            let mut st = self.lock();
            st.busy.remove(&id);
            st.written(&id);
            st.queued += 1;
            st.admit(msg, self.window(), Utc::now());
        }
        self.inner.wake.notify_one();
        self.inner.scan_wake.notify_one();
        Ok(())
    }

    /// Waits until a message is due and hands it out, marked in flight.
    /// Returns `None` when `stop` resolves first.
    pub async fn next_due(
        &self,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<QueuedMessage> {
        loop {
            let notified = self.inner.wake.notified();
            let wait = {
                let mut st = self.lock();
                let now = Utc::now();
                match st.due.first().cloned() {
                    Some((at, id)) if at <= now => {
                        st.due.remove(&(at, id.clone()));
                        if let Some(slot) = st.messages.get_mut(&id) {
                            slot.due_key = None;
                            slot.in_flight = true;
                            return Some(slot.msg.clone());
                        }
                        continue;
                    }
                    Some((at, _)) => (at - now).to_std().unwrap_or(Duration::ZERO).min(IDLE),
                    None => IDLE,
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return None,
            }
            if *stop.borrow() {
                return None;
            }
        }
    }

    /// Applies the outcomes of one delivery attempt, persists the new state
    /// (or removes the message when every recipient is final), queues a DSN
    /// for bounced recipients, and reschedules what is left.
    ///
    /// `outcomes` must already be settled with [`Queue::settle`].
    pub async fn complete(
        &self,
        mut msg: QueuedMessage,
        outcomes: &[(usize, RecipientOutcome)],
    ) -> Result<(), QueueError> {
        self.apply(&mut msg, outcomes);
        if let Err(e) = self.persist(&mut msg).await {
            self.keep_unsaved(msg);
            return Err(e);
        }
        Ok(())
    }

    /// The state transitions of one attempt's outcomes.
    fn apply(&self, msg: &mut QueuedMessage, outcomes: &[(usize, RecipientOutcome)]) {
        let now = Utc::now();
        for (idx, out) in outcomes {
            let Some(r) = msg.recipients.get_mut(*idx) else {
                continue;
            };
            r.attempts = r.attempts.saturating_add(1);
            r.last_error = Some(out.reply.clone());
            r.last_status = out.enhanced.clone();
            r.last_remote = out.remote.clone();
            r.next_attempt = None;
            r.status = match out.verdict {
                Verdict::Delivered => {
                    r.last_error = None;
                    RecipientStatus::Delivered
                }
                Verdict::Permanent => RecipientStatus::Bounced,
                Verdict::Held => RecipientStatus::Held,
                Verdict::Temporary => {
                    r.next_attempt = Some(later(now, self.backoff(r.attempts)));
                    RecipientStatus::Deferred
                }
            };
        }
    }

    /// Writes the state (or removes a finished message), queueing DSNs
    /// first, and reschedules.
    async fn persist(&self, msg: &mut QueuedMessage) -> Result<(), QueueError> {
        self.send_dsns(msg).await?;
        let id = msg.id.clone();
        if msg.is_done() {
            self.inner.spool.remove(&id).await?;
            self.lock().deleted(&id);
        } else {
            self.inner.spool.write_envelope(msg).await?;
            let mut st = self.lock();
            st.written(&id);
            if let Some(slot) = st.messages.get_mut(&id) {
                slot.msg = msg.clone();
                slot.in_flight = false;
                slot.failures = 0;
                slot.persist_at = None;
                st.schedule(&id);
            }
        }
        // Room, or a message that can now wait on disk: the scanner may
        // have due mail to bring in.
        self.inner.wake.notify_one();
        self.inner.scan_wake.notify_one();
        Ok(())
    }

    /// Keeps a state that could not be written in memory, so that nobody
    /// who already has the message gets it again and no DSN is queued
    /// twice, and backs off before writing it again.
    fn keep_unsaved(&self, msg: QueuedMessage) {
        let id = msg.id.clone();
        {
            let mut st = self.lock();
            if let Some(slot) = st.messages.get_mut(&id) {
                slot.msg = msg;
            }
        }
        self.back_off(&id, true);
    }

    /// Applies an attempt's outcomes in memory only (their audit events
    /// could not be journaled yet), and backs off.
    pub fn keep_outcomes_unsaved(
        &self,
        mut msg: QueuedMessage,
        outcomes: &[(usize, RecipientOutcome)],
    ) {
        self.apply(&mut msg, outcomes);
        self.keep_unsaved(msg);
    }

    /// Whether a message has state in memory that is not on disk yet.
    pub fn needs_persist(&self, id: &QueueId) -> bool {
        self.lock()
            .messages
            .get(id)
            .is_some_and(|s| s.persist_at.is_some())
    }

    /// Returns a message to the schedule unchanged (delivery could not even
    /// start, e.g. shutdown).
    pub fn release(&self, id: &QueueId) {
        let mut st = self.lock();
        if let Some(slot) = st.messages.get_mut(id) {
            slot.in_flight = false;
        }
        st.schedule(id);
        drop(st);
        self.inner.wake.notify_one();
        self.inner.scan_wake.notify_one();
    }

    /// Returns a message whose attempt failed on our side (the attempt log,
    /// the audit journal or the spool could not be written, or the
    /// delivery task failed): nothing of its state changes on disk, but it
    /// is not due again before a backoff that grows with every such
    /// failure. A failure is never a fast path.
    pub fn release_after_failure(&self, id: &QueueId) {
        self.back_off(id, false);
    }

    fn back_off(&self, id: &QueueId, unsaved: bool) {
        let now = Utc::now();
        let mut st = self.lock();
        if let Some(slot) = st.messages.get_mut(id) {
            slot.in_flight = false;
            slot.failures = slot.failures.saturating_add(1);
            let tried = slot.msg.open_recipients().map(|(_, r)| r.attempts).max();
            let at = later(
                now,
                self.backoff(tried.unwrap_or(0).saturating_add(slot.failures)),
            );
            if unsaved || slot.persist_at.is_some() {
                slot.persist_at = Some(at);
            }
            for r in slot.msg.recipients.iter_mut() {
                if !r.status.is_final() && r.status != RecipientStatus::Held {
                    r.next_attempt = Some(r.next_attempt.map_or(at, |t| t.max(at)));
                }
            }
        }
        st.schedule(id);
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Logs durably that recipients `indices` of `msg` are about to be
    /// tried; nothing may be sent unless this succeeded.
    pub async fn begin_attempt(
        &self,
        msg: &QueuedMessage,
        rcpts: Vec<super::attempts::AttemptRecipient>,
    ) -> Result<AttemptTicket, QueueError> {
        Ok(self.inner.attempts.begin(msg, rcpts).await?)
    }

    /// The attempt's outcome is in the spool ([`Queue::complete`] returned).
    pub fn finish_attempt(&self, ticket: AttemptTicket) {
        self.inner.attempts.finish(ticket);
    }

    /// The unresolved attempts found at start are in the audit trail: the
    /// attempt log written before this start can go.
    pub fn forget_attempts_before_start(&self) -> Result<(), QueueError> {
        Ok(self.inner.attempts.forget_before_start()?)
    }

    /// A copy of message `id`, if queued: from the window, or read from
    /// disk (blocking, one small file).
    pub fn get(&self, id: &QueueId) -> Option<QueuedMessage> {
        if let Some(slot) = self.lock().messages.get(id) {
            return Some(slot.msg.clone());
        }
        match self.inner.spool.read_envelope(id) {
            Ok(m) => Some(m),
            Err(e) if not_found(&e) => None,
            Err(e) => {
                tracing::warn!(queue_id = %id, error = %e, "envelope cannot be read");
                None
            }
        }
    }

    /// Turns temporary failures of recipients older than `max_age` into
    /// permanent ones (RFC 5321 section 4.5.4.1: give up, tell the sender).
    pub fn settle(
        &self,
        msg: &QueuedMessage,
        outcomes: Vec<(usize, RecipientOutcome)>,
    ) -> Vec<(usize, RecipientOutcome)> {
        let age = (Utc::now() - msg.received_at).to_std().unwrap_or_default();
        let expired = age >= self.inner.settings.max_age;
        outcomes
            .into_iter()
            .map(|(i, o)| {
                if expired && o.verdict == Verdict::Temporary {
                    (i, RecipientOutcome::expired(&o))
                } else {
                    (i, o)
                }
            })
            .collect()
    }

    /// Delay before attempt `attempts + 1`: exponential from `retry_base`,
    /// capped at `retry_max`, with ±20 % jitter so retries do not align.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let s = &self.inner.settings;
        let exp = attempts.saturating_sub(1).min(30);
        let base = s.retry_base.saturating_mul(1u32 << exp).min(s.retry_max);
        base.mul_f64(0.8 + fastrand::f64() * 0.4)
    }

    async fn send_dsns(&self, msg: &mut QueuedMessage) -> Result<(), QueueError> {
        let newly: Vec<usize> = msg
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == RecipientStatus::Bounced && !r.dsn_sent)
            .map(|(i, _)| i)
            .collect();
        if newly.is_empty() {
            return Ok(());
        }
        // Never a DSN about a DSN (null sender), RFC 5321 section 4.5.5.
        if !msg.sender.is_empty() {
            let headers = self
                .inner
                .spool
                .read_content(&msg.id, 256 * 1024)
                .await
                .unwrap_or_default();
            let bounced: Vec<&super::Recipient> = newly
                .iter()
                .filter_map(|&i| msg.recipients.get(i))
                .collect();
            let dsn = super::dsn::build(&self.inner.hostname, msg, &bounced, &headers);
            let id = self
                .enqueue_local(
                    "",
                    &msg.sender,
                    &dsn.content,
                    Some(dsn.message_id.clone()),
                    msg.smtputf8 || msg.body_8bit,
                    msg.smtputf8,
                )
                .await?;
            tracing::info!(queue_id = %msg.id, dsn_id = %id, recipients = bounced.len(), "bounce: delivery status notification queued for the sender");
        }
        for i in newly {
            if let Some(r) = msg.recipients.get_mut(i) {
                r.dsn_sent = true;
            }
        }
        Ok(())
    }

    /// Queues a message sealgate itself generated (a DSN, a TLS report):
    /// written and fsynced like received mail.
    pub async fn enqueue_local(
        &self,
        sender: &str,
        recipient: &str,
        content: &[u8],
        message_id: Option<String>,
        body_8bit: bool,
        smtputf8: bool,
    ) -> Result<QueueId, QueueError> {
        let mut out = QueuedMessage {
            id: QueueId::new(),
            received_at: Utc::now(),
            sender: sender.to_string(),
            recipients: vec![super::Recipient::new(recipient.to_string())],
            message_id,
            size: 0,
            content_sha256: String::new(),
            body_8bit,
            smtputf8,
            client: super::ClientInfo {
                ip: "127.0.0.1".into(),
                helo: self.inner.hostname.clone(),
                auth_user: None,
                tls: false,
                connector: None,
            },
            local: true,
            requiretls: false,
        };
        let id = out.id.clone();
        let stored = async {
            let mut w = self.inner.spool.create_content(&out.id).await?;
            w.write(content).await?;
            let (size, sha) = w.finish().await?;
            out.size = size;
            out.content_sha256 = sha;
            self.enqueue(out).await
        }
        .await;
        if let Err(e) = stored {
            // No orphan left behind on a full disk.
            let _ = self.inner.spool.remove(&id).await;
            return Err(e);
        }
        Ok(id)
    }

    /// Calls `each` with every queued message and whether it is in flight,
    /// in directory order: messages in the window as they are in memory,
    /// the others as read from disk. Blocking (it walks the folder); the
    /// schedule's lock is held for one lookup at a time, so deliveries and
    /// new mail go on meanwhile. `each` returns `false` to stop. Returns
    /// how many were listed and how many envelopes could not be read.
    pub fn list_each(
        &self,
        mut each: impl FnMut(QueuedMessage, bool) -> bool,
    ) -> Result<(usize, usize), QueueError> {
        let (mut listed, mut unreadable) = (0, 0);
        self.inner.spool.walk_envelopes(|id, _| {
            let in_window = self
                .lock()
                .messages
                .get(&id)
                .map(|s| (s.msg.clone(), s.in_flight));
            let (msg, in_flight) = match in_window {
                Some(found) => found,
                None => match self.inner.spool.read_envelope(&id) {
                    Ok(m) => (m, false),
                    // Delivered or removed since the walk saw it.
                    Err(e) if not_found(&e) => return true,
                    Err(e) => {
                        tracing::debug!(queue_id = %id, error = %e, "envelope cannot be read; not listed");
                        unreadable += 1;
                        return true;
                    }
                },
            };
            listed += 1;
            each(msg, in_flight)
        })?;
        Ok((listed, unreadable))
    }

    /// Number of messages in the queue, in the window or on disk.
    pub fn len(&self) -> usize {
        self.lock().queued
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every deferred recipient due now: those in the window at
    /// once; those on disk only as the scanner brings them in (every
    /// envelope last written before now counts as due). Returns the number
    /// of messages queued.
    pub fn flush(&self) -> usize {
        let mut st = self.lock();
        let ids: Vec<QueueId> = st.messages.keys().cloned().collect();
        for id in &ids {
            if let Some(slot) = st.messages.get_mut(id) {
                flush_recipients(&mut slot.msg);
            }
            st.schedule(id);
        }
        if st.queued > st.messages.len() {
            st.flush_before = Some(SystemTime::now());
            st.on_disk_due(Utc::now());
        }
        let n = st.queued;
        drop(st);
        self.inner.wake.notify_one();
        self.inner.scan_wake.notify_one();
        n
    }

    /// Releases held recipients of a message (an operator's decision):
    /// they are tried at once, and hold rules no longer apply to them. A
    /// message on disk only is read, changed, written and brought into the
    /// window.
    pub async fn release_held(&self, id: &QueueId) -> Result<usize, QueueError> {
        let in_window = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let taken = match st.messages.get_mut(id) {
                Some(s) if s.in_flight => return Err(QueueError::Busy(id.0.clone())),
                Some(s) => match release_recipients(&mut s.msg) {
                    0 => return Ok(0),
                    // In flight while its envelope is written: not handed
                    // out to a delivery whose own write could land first
                    // and then be overwritten by this older state.
                    _ => {
                        s.in_flight = true;
                        Some(s.msg.clone())
                    }
                },
                None if !st.busy.insert(id.clone()) => {
                    return Err(QueueError::Busy(id.0.clone()));
                }
                None => None,
            };
            if taken.is_some() {
                st.schedule(id);
            }
            taken
        };
        let Some(msg) = in_window else {
            return self.release_on_disk(id).await;
        };
        let written = self.inner.spool.write_envelope(&msg).await;
        let mut st = self.lock();
        if let Some(slot) = st.messages.get_mut(id) {
            slot.in_flight = false;
        }
        st.written(id);
        st.schedule(id);
        drop(st);
        self.inner.wake.notify_one();
        written?;
        Ok(msg
            .recipients
            .iter()
            .filter(|r| r.released && r.status == RecipientStatus::Pending)
            .count())
    }

    /// `release_held` of a message outside the window, marked busy.
    async fn release_on_disk(&self, id: &QueueId) -> Result<usize, QueueError> {
        let changed = async {
            let mut msg = self.load(id).await?;
            let n = release_recipients(&mut msg);
            if n > 0 {
                self.inner.spool.write_envelope(&msg).await?;
            }
            Ok::<_, QueueError>((n, msg))
        }
        .await;
        let mut st = self.lock();
        st.busy.remove(id);
        let (n, msg) = changed?;
        if n > 0 {
            st.written(id);
            st.admit(msg, self.window(), Utc::now());
            drop(st);
            self.inner.wake.notify_one();
            self.inner.scan_wake.notify_one();
        }
        Ok(n)
    }

    /// Reads the envelope of a message outside the window.
    async fn load(&self, id: &QueueId) -> Result<QueuedMessage, QueueError> {
        match self.inner.spool.load_envelope(id).await {
            Ok(m) => Ok(m),
            Err(e) if not_found(&e) => Err(QueueError::NotFound(id.0.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a message without delivering it (an operator's decision),
    /// in the window or on disk only.
    pub async fn remove(&self, id: &QueueId) -> Result<(), QueueError> {
        let taken = {
            let mut st = self.lock();
            if st.messages.get(id).is_some_and(|s| s.in_flight) || st.busy.contains(id) {
                return Err(QueueError::Busy(id.0.clone()));
            }
            // Busy until the files are gone, so the scanner cannot bring
            // it back in meanwhile.
            st.busy.insert(id.clone());
            st.take(id)
        };
        let removed = if taken.is_some() || self.inner.spool.has_envelope(id) {
            self.inner.spool.remove(id).await.map_err(QueueError::from)
        } else {
            Err(QueueError::NotFound(id.0.clone()))
        };
        let mut st = self.lock();
        st.busy.remove(id);
        match &removed {
            Ok(()) => st.deleted(id),
            // Still on disk: the scanner brings it back when due.
            Err(_) => {
                if let Some(at) = taken.and_then(|s| s.msg.next_due()) {
                    st.on_disk_due(at);
                }
            }
        }
        removed
    }

    /// Starts the scanner task (see `scan.rs`); it ends when `stop`
    /// changes.
    pub fn start_scanner(
        &self,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(scan::run(self.clone(), stop))
    }
}

/// `now + delay`, saturating at the far future rather than overflowing.
fn later(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::SpoolKey;

    fn settings() -> QueueSettings {
        QueueSettings {
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_age: Duration::from_secs(5 * 86400),
            max_active: 10,
            max_window: 10_000,
            scan_interval: Duration::from_secs(5),
        }
    }

    /// A tiny window, scanned often.
    fn small(window: usize) -> QueueSettings {
        QueueSettings {
            max_window: window,
            scan_interval: Duration::from_millis(10),
            ..settings()
        }
    }

    impl Queue {
        fn in_window(&self, id: &QueueId) -> bool {
            self.lock().messages.contains_key(id)
        }

        fn window_len(&self) -> usize {
            self.lock().messages.len()
        }
    }

    /// Every queued message, sorted by id.
    fn listed(q: &Queue) -> Vec<(QueuedMessage, bool)> {
        let mut all = Vec::new();
        q.list_each(|m, f| {
            all.push((m, f));
            true
        })
        .unwrap();
        all.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        all
    }

    async fn with_content(spool: &Spool, msg: &QueuedMessage) {
        let mut w = spool.create_content(&msg.id).await.unwrap();
        w.write(b"Subject: t\r\n\r\nbody\r\n").await.unwrap();
        w.finish().await.unwrap();
    }

    /// A message written to the spool directly, as a queue that stopped
    /// would have left it.
    async fn stored(spool: &Spool, msg: &QueuedMessage) {
        with_content(spool, msg).await;
        spool.write_envelope(msg).await.unwrap();
    }

    fn deferred_until(at: DateTime<Utc>) -> QueuedMessage {
        let mut m = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
        m.received_at = Utc::now() - chrono::Duration::seconds(600);
        m.recipients[0].status = RecipientStatus::Deferred;
        m.recipients[0].attempts = 1;
        m.recipients[0].next_attempt = Some(at);
        m
    }

    fn outcome(verdict: Verdict) -> RecipientOutcome {
        RecipientOutcome {
            verdict,
            reply: "250 ok".into(),
            enhanced: None,
            remote: None,
        }
    }

    /// Runs a scanner until the returned sender is dropped or sent `true`.
    fn scanner(
        q: &Queue,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = q.start_scanner(rx);
        (tx, task)
    }

    async fn stop_scanner(
        s: (
            tokio::sync::watch::Sender<bool>,
            tokio::task::JoinHandle<()>,
        ),
    ) {
        s.0.send(true).unwrap();
        s.1.await.unwrap();
    }

    #[tokio::test]
    async fn a_tiny_window_delivers_twenty_messages_in_due_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let (q, _) = Queue::open(spool.clone(), small(3), "gw.example.test".into()).unwrap();
        let base = Utc::now() - chrono::Duration::seconds(100);
        let mut want = Vec::new();
        for i in 0..20 {
            let mut m = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
            m.received_at = base + chrono::Duration::milliseconds(i * 10);
            with_content(&spool, &m).await;
            want.push(m.id.clone());
            q.enqueue(m).await.unwrap();
        }
        assert_eq!(q.len(), 20);
        assert_eq!(q.window_len(), 3, "the rest waits on disk");
        let scan = scanner(&q);
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        let mut got = Vec::new();
        while got.len() < 20 {
            let m = q.next_due(&mut stop).await.unwrap();
            assert!(q.window_len() <= 3);
            got.push(m.id.clone());
            q.complete(m, &[(0, outcome(Verdict::Delivered))])
                .await
                .unwrap();
        }
        assert_eq!(got, want, "due order, across the window and the disk");
        assert!(q.is_empty());
        stop_scanner(scan).await;
        assert!(spool.list_ids().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_message_deferred_far_ahead_stays_on_disk_until_due() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let now = Utc::now();
        let new = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
        let soon = deferred_until(now + chrono::Duration::seconds(1));
        let far = deferred_until(now + chrono::Duration::hours(1));
        for m in [&new, &soon, &far] {
            stored(&spool, m).await;
        }
        let (q, _) = Queue::open(spool.clone(), small(1), "gw.example.test".into()).unwrap();
        assert_eq!(q.len(), 3);
        assert!(q.in_window(&new.id), "the one due soonest is read at start");
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        let first = q.next_due(&mut stop).await.unwrap();
        assert_eq!(first.id, new.id);
        q.complete(first, &[(0, outcome(Verdict::Delivered))])
            .await
            .unwrap();
        // Room now, but nothing on disk is due yet.
        assert_eq!(q.scan(&stop).unwrap(), 0);
        assert_eq!(q.window_len(), 0);
        let scan = scanner(&q);
        let next = q.next_due(&mut stop).await.unwrap();
        assert_eq!(next.id, soon.id);
        assert!(
            Utc::now() >= soon.next_due().unwrap(),
            "brought in when due"
        );
        q.complete(next, &[(0, outcome(Verdict::Delivered))])
            .await
            .unwrap();
        stop_scanner(scan).await;
        assert_eq!(q.scan(&stop).unwrap(), 0);
        assert!(!q.in_window(&far.id), "an hour ahead: still on disk only");
        assert_eq!(q.len(), 1);
        assert_eq!(q.get(&far.id).unwrap(), far, "read from disk");
        let all = listed(&q);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, far);
    }

    #[tokio::test]
    async fn new_mail_displaces_deferred_mail_from_a_full_window() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let (q, _) = Queue::open(spool.clone(), small(2), "gw.example.test".into()).unwrap();
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        for _ in 0..2 {
            let m = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
            with_content(&spool, &m).await;
            q.enqueue(m).await.unwrap();
            let due = q.next_due(&mut stop).await.unwrap();
            q.complete(due, &[(0, outcome(Verdict::Temporary))])
                .await
                .unwrap();
        }
        assert_eq!(q.window_len(), 2, "both deferred, both in memory");
        let latest = listed(&q)
            .into_iter()
            .map(|(m, _)| m)
            .max_by_key(|m| m.next_due())
            .unwrap();
        let new = QueuedMessage::for_test("a@example.test", &["c@example.test"]);
        with_content(&spool, &new).await;
        q.enqueue(new.clone()).await.unwrap();
        assert!(q.in_window(&new.id));
        assert!(!q.in_window(&latest.id), "the one due last made way");
        assert_eq!(q.window_len(), 2);
        assert_eq!(q.len(), 3);
        assert_eq!(q.lock().disk_due, latest.next_due());
        let mtime = std::fs::metadata(dir.path().join(format!("queue/{}.env", latest.id)))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(mtime, SystemTime::from(latest.next_due().unwrap()));
        // Due at once, with no scanner running.
        assert_eq!(q.next_due(&mut stop).await.unwrap().id, new.id);
    }

    #[tokio::test]
    async fn flush_brings_messages_on_disk_in() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let later = Utc::now() + chrono::Duration::hours(1);
        let mut ids = BTreeSet::new();
        for i in 0..5 {
            let m = deferred_until(later + chrono::Duration::seconds(i));
            stored(&spool, &m).await;
            ids.insert(m.id);
        }
        let (q, _) = Queue::open(spool.clone(), small(2), "gw.example.test".into()).unwrap();
        assert_eq!((q.len(), q.window_len()), (5, 2));
        assert_eq!(q.flush(), 5);
        let scan = scanner(&q);
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        let mut got = BTreeSet::new();
        while got.len() < 5 {
            let m = q.next_due(&mut stop).await.unwrap();
            got.insert(m.id.clone());
            q.complete(m, &[(0, outcome(Verdict::Delivered))])
                .await
                .unwrap();
        }
        assert_eq!(got, ids);
        assert!(q.is_empty());
        stop_scanner(scan).await;
        q.scan(&stop).unwrap();
        assert!(q.lock().flush_before.is_none(), "nothing flushed is left");
    }

    #[tokio::test]
    async fn remove_and_release_work_on_messages_outside_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let now = Utc::now();
        let mut due = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
        due.received_at = now - chrono::Duration::seconds(60);
        let far = deferred_until(now + chrono::Duration::hours(1));
        let mut held = QueuedMessage::for_test("a@example.test", &["h@example.test"]);
        held.recipients[0].status = RecipientStatus::Held;
        for m in [&due, &far, &held] {
            stored(&spool, m).await;
        }
        let (q, _) = Queue::open(spool.clone(), small(1), "gw.example.test".into()).unwrap();
        assert!(q.in_window(&due.id) && !q.in_window(&far.id) && !q.in_window(&held.id));

        q.remove(&far.id).await.unwrap();
        assert!(!spool.has_envelope(&far.id));
        assert_eq!(q.len(), 2);
        assert!(matches!(
            q.remove(&far.id).await,
            Err(QueueError::NotFound(_))
        ));
        assert!(matches!(
            q.release_held(&far.id).await,
            Err(QueueError::NotFound(_))
        ));
        assert_eq!(q.release_held(&due.id).await.unwrap(), 0);

        assert_eq!(q.release_held(&held.id).await.unwrap(), 1);
        let on_disk = spool.read_envelope(&held.id).unwrap();
        assert_eq!(on_disk.recipients[0].status, RecipientStatus::Pending);
        assert!(on_disk.recipients[0].released);
        assert!(!q.in_window(&held.id), "the window is full of due mail");

        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        let first = q.next_due(&mut stop).await.unwrap();
        assert_eq!(first.id, due.id);
        assert!(matches!(q.remove(&due.id).await, Err(QueueError::Busy(_))));
        assert!(matches!(
            q.release_held(&due.id).await,
            Err(QueueError::Busy(_))
        ));
        q.complete(first, &[(0, outcome(Verdict::Delivered))])
            .await
            .unwrap();
        assert_eq!(q.scan(&stop).unwrap(), 1, "released: due now");
        let second = q.next_due(&mut stop).await.unwrap();
        assert_eq!(second.id, held.id);
        assert!(second.recipients[0].released);
    }

    #[tokio::test]
    async fn a_restart_with_more_messages_than_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let base = Utc::now() - chrono::Duration::seconds(100);
        let mut msgs = Vec::new();
        {
            let (q, _) = Queue::open(spool.clone(), small(3), "gw.example.test".into()).unwrap();
            for i in 0..10 {
                let mut m = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
                m.received_at = base + chrono::Duration::milliseconds(i * 10);
                with_content(&spool, &m).await;
                q.enqueue(m.clone()).await.unwrap();
                msgs.push(m);
            }
            // An attempt on a message outside the window that a crash cut
            // short: nothing reached its envelope.
            assert!(!q.in_window(&msgs[7].id));
            let rcpt = crate::queue::attempts::AttemptRecipient {
                index: 0,
                address: "b@example.test".into(),
                method: "tls".into(),
                tls: "verified".into(),
                rule: "default".into(),
                policy_version: "v".into(),
            };
            let _lost = q.begin_attempt(&msgs[7], vec![rcpt]).await.unwrap();
        }
        let (q, rec) = Queue::open(spool.clone(), small(3), "gw.example.test".into()).unwrap();
        assert_eq!(q.len(), 10);
        assert_eq!(q.window_len(), 3);
        for m in &msgs[..3] {
            assert!(q.in_window(&m.id), "the three due soonest are read");
        }
        assert_eq!(rec.unresolved.len(), 1);
        assert_eq!(
            (&rec.unresolved[0].id, rec.unresolved[0].rcpts[0].index),
            (&msgs[7].id, 0)
        );
        assert_eq!(listed(&q).len(), 10);
        let scan = scanner(&q);
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        let mut got = Vec::new();
        while got.len() < 10 {
            let m = q.next_due(&mut stop).await.unwrap();
            got.push(m.id.clone());
            q.complete(m, &[(0, outcome(Verdict::Delivered))])
                .await
                .unwrap();
        }
        let want: Vec<QueueId> = msgs.iter().map(|m| m.id.clone()).collect();
        assert_eq!(got, want);
        stop_scanner(scan).await;
        assert!(spool.list_ids().unwrap().is_empty());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let (q, _) = Queue::open(spool, settings(), "gw.example.test".into()).unwrap();
        let cases = [
            (1, 60.0),
            (2, 120.0),
            (3, 240.0),
            (10, 3600.0),
            (40, 3600.0),
        ];
        for (attempts, want) in cases {
            let got = q.backoff(attempts).as_secs_f64();
            assert!(
                got >= want * 0.8 - 0.001 && got <= want * 1.2 + 0.001,
                "attempt {attempts}: {got}"
            );
        }
    }

    #[tokio::test]
    async fn deferred_then_delivered_removes_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let (q, _) = Queue::open(spool.clone(), settings(), "gw.example.test".into()).unwrap();
        let msg = QueuedMessage::for_test("a@example.test", &["b@example.test", "c@example.test"]);
        let mut w = spool.create_content(&msg.id).await.unwrap();
        w.write(b"Subject: t\r\n\r\nbody\r\n").await.unwrap();
        w.finish().await.unwrap();
        q.enqueue(msg.clone()).await.unwrap();
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        let due = q.next_due(&mut stop).await.unwrap();
        let temp = RecipientOutcome {
            verdict: Verdict::Temporary,
            reply: "451 4.3.0 later".into(),
            enhanced: Some("4.3.0".into()),
            remote: None,
        };
        let ok = RecipientOutcome {
            verdict: Verdict::Delivered,
            reply: "250 ok".into(),
            enhanced: None,
            remote: None,
        };
        q.complete(due, &[(0, ok.clone()), (1, temp)])
            .await
            .unwrap();
        let list = listed(&q);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].0.recipients[1].status, RecipientStatus::Deferred);
        // Survives a restart with its state.
        let (q2, rec) = Queue::open(spool.clone(), settings(), "gw.example.test".into()).unwrap();
        assert_eq!(rec.messages.len(), 0, "drained into the schedule");
        assert_eq!(
            listed(&q2)[0].0.recipients[0].status,
            RecipientStatus::Delivered
        );
        q2.flush();
        let due = q2.next_due(&mut stop).await.unwrap();
        q2.complete(due, &[(1, ok)]).await.unwrap();
        assert!(q2.is_empty());
        assert!(spool.list_ids().unwrap().is_empty());
    }

    /// A failure on our side (journal, spool, a panic) is never a fast path:
    /// the message is not due again before a backoff that grows.
    #[tokio::test]
    async fn a_failed_attempt_backs_off_and_each_failure_longer() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let (q, _) = Queue::open(spool.clone(), settings(), "gw.example.test".into()).unwrap();
        let msg = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
        let mut w = spool.create_content(&msg.id).await.unwrap();
        w.write(b"Subject: t\r\n\r\nbody\r\n").await.unwrap();
        w.finish().await.unwrap();
        q.enqueue(msg.clone()).await.unwrap();
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        let mut last = Utc::now();
        for failures in 1..=3u32 {
            let due = tokio::time::timeout(Duration::from_secs(1), q.next_due(&mut stop)).await;
            if failures == 1 {
                assert!(due.unwrap().is_some());
            } else {
                assert!(due.is_err(), "not handed out again before its backoff");
                q.lock().messages.get_mut(&msg.id).unwrap().in_flight = true;
            }
            q.release_after_failure(&msg.id);
            let next = q.get(&msg.id).unwrap().next_due().unwrap();
            let wait = (next - Utc::now()).num_seconds();
            let base = 60i64 << (failures - 1);
            assert!(
                wait as f64 >= base as f64 * 0.8 - 1.0,
                "failure {failures}: {wait}s"
            );
            assert!(next >= last);
            last = next;
        }
        // Nothing of it reached the disk: the envelope is as it was.
        assert_eq!(spool.read_envelope(&msg.id).unwrap(), msg);
    }

    #[tokio::test]
    async fn bounce_queues_a_dsn_to_the_sender_but_never_to_null_sender() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let (q, _) = Queue::open(spool.clone(), settings(), "gw.example.test".into()).unwrap();
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        let perm = RecipientOutcome {
            verdict: Verdict::Permanent,
            reply: "550 5.1.1 no such user".into(),
            enhanced: Some("5.1.1".into()),
            remote: Some("mx.example.test".into()),
        };
        for sender in ["", "a@example.test"] {
            let msg = QueuedMessage::for_test(sender, &["b@example.test"]);
            let mut w = spool.create_content(&msg.id).await.unwrap();
            w.write(b"Subject: secret\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n")
                .await
                .unwrap();
            w.finish().await.unwrap();
            q.enqueue(msg).await.unwrap();
            let due = q.next_due(&mut stop).await.unwrap();
            q.complete(due, &[(0, perm.clone())]).await.unwrap();
        }
        let list = listed(&q);
        assert_eq!(list.len(), 1, "one DSN, for the non-null sender");
        let dsn = &list[0].0;
        assert_eq!(dsn.sender, "");
        assert_eq!(dsn.recipients[0].address, "a@example.test");
        let body =
            String::from_utf8(spool.read_content(&dsn.id, usize::MAX).await.unwrap()).unwrap();
        assert!(body.contains("multipart/report"));
        assert!(body.contains("Final-Recipient: rfc822;b@example.test"));
        assert!(!body.contains("secret"), "no subject (PHI) in the DSN");
    }
}
