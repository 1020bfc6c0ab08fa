//! The scanner: brings due messages that are on disk only into the
//! window.
//!
//! It sleeps while no message on disk may be due (`State::disk_due`) or
//! the window has no room (neither free slots nor messages that could make
//! way), and walks the folder at most every `[queue] scan_interval`. A walk
//! stats every `.env` (its mtime is the due time, see `spool`), keeps the
//! due ones not in the window in a heap bounded by the room there is, and
//! notes the earliest due time of everything else, so that it sleeps until
//! then. Memory stays bounded by the window whatever the queue holds.

use std::collections::{BinaryHeap, HashSet};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{IDLE, Queue, QueueError, not_found};
use crate::queue::QueueId;
use crate::queue::spool::{EnvelopeStat, due_mtime};

/// The scanner task.
pub(super) async fn run(queue: Queue, mut stop: watch::Receiver<bool>) {
    let interval = queue.settings().scan_interval;
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let notified = queue.inner.scan_wake.notified();
        if let Some(wait) = queue.scan_wait() {
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        if let Some(at) = last.map(|l| l + interval) {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = stop.changed() => return,
            }
        }
        last = Some(tokio::time::Instant::now());
        let (q, s) = (queue.clone(), stop.clone());
        let scanned = tokio::task::spawn_blocking(move || q.scan(&s)).await;
        let failed = match scanned {
            Ok(Ok(loaded)) => {
                if loaded > 0 {
                    tracing::debug!(
                        messages = loaded,
                        "due messages brought in from the spool folder"
                    );
                }
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(error = %failed, "cannot scan the spool folder for due messages; trying again");
        queue.scan_failed();
    }
}

/// What one walk found: the `room` due soonest (by the mtime index), and
/// the earliest due time of all the rest.
struct Pick {
    room: usize,
    now: SystemTime,
    flush_before: Option<SystemTime>,
    /// Max-heap on the due time: the latest is pushed out first.
    heap: BinaryHeap<(SystemTime, QueueId, bool)>,
    /// The earliest due time of what is left on disk.
    left: Option<SystemTime>,
    /// Whether a flushed message is left on disk.
    flush_left: bool,
}

impl Pick {
    fn new(room: usize, now: SystemTime, flush_before: Option<SystemTime>) -> Pick {
        Pick {
            room,
            now,
            flush_before,
            heap: BinaryHeap::new(),
            left: None,
            flush_left: false,
        }
    }

    fn note(&mut self, due: SystemTime) {
        self.left = Some(self.left.map_or(due, |l| l.min(due)));
    }

    fn offer(&mut self, id: QueueId, stat: EnvelopeStat) {
        if stat.parked() {
            return;
        }
        // Written before a flush: due now, whatever its index says.
        let flushed = self.flush_before.is_some_and(|t| stat.changed < t);
        if stat.due > self.now && !flushed {
            self.note(stat.due);
            return;
        }
        self.heap.push((stat.due, id, flushed));
        if self.heap.len() > self.room {
            if let Some((due, _, flushed)) = self.heap.pop() {
                self.note(due.min(self.now));
                self.flush_left |= flushed;
            }
        }
    }
}

impl Queue {
    /// How long the scanner may sleep, or `None` to scan now.
    fn scan_wait(&self) -> Option<std::time::Duration> {
        let st = self.lock();
        let now = Utc::now();
        match st.disk_due {
            None => Some(IDLE),
            Some(at) if at > now => Some((at - now).to_std().unwrap_or_default().min(IDLE)),
            Some(_) if st.capacity(self.window(), now) > 0 => None,
            Some(_) => Some(IDLE),
        }
    }

    /// A scan did not finish: forget its bookkeeping and try again later.
    fn scan_failed(&self) {
        let mut st = self.lock();
        st.deleted_in_scan = None;
        st.on_disk_due(Utc::now());
    }

    /// One scan (blocking): walks the folder and brings the due messages
    /// that are on disk only into the window, soonest first, as many as
    /// it can take. Returns how many it brought in.
    pub(super) fn scan(&self, stop: &watch::Receiver<bool>) -> Result<usize, QueueError> {
        let now = Utc::now();
        let (in_window, damaged, room, flush_before) = {
            let mut st = self.lock();
            st.deleted_in_scan = Some(HashSet::new());
            // Whatever this walk misses (a message that goes to disk while
            // it runs) lowers this again.
            st.disk_due = None;
            let in_window: HashSet<QueueId> = st.messages.keys().cloned().collect();
            let room = st.capacity(self.window(), now);
            (in_window, st.damaged.clone(), room, st.flush_before)
        };
        let mut pick = Pick::new(room, SystemTime::from(now), flush_before);
        let mut seen = 0u64;
        self.inner.spool.walk_envelopes(|id, stat| {
            if !in_window.contains(&id) && !damaged.contains(&id) {
                pick.offer(id, stat);
            }
            seen += 1;
            seen % 1024 != 0 || !*stop.borrow()
        })?;
        let mut loaded = 0;
        let mut flush_left = pick.flush_left;
        let mut left = pick.left.map(DateTime::<Utc>::from);
        for (_, id, flushed) in pick.heap.into_sorted_vec() {
            match self.bring_in(&id, flushed, now) {
                Brought::In => loaded += 1,
                Brought::Gone => {}
                Brought::NotDue(at) => {
                    left = match (left, at) {
                        (Some(l), Some(a)) => Some(l.min(a)),
                        (l, a) => l.or(a),
                    }
                }
                Brought::NoRoom => flush_left |= flushed,
            }
        }
        let mut st = self.lock();
        st.deleted_in_scan = None;
        if let Some(at) = left {
            st.on_disk_due(at);
        }
        if !flush_left && st.flush_before == flush_before {
            st.flush_before = None;
        }
        drop(st);
        if loaded > 0 {
            self.inner.wake.notify_one();
        }
        Ok(loaded)
    }

    /// Reads one message the walk found due and puts it into the window.
    fn bring_in(&self, id: &QueueId, flushed: bool, now: DateTime<Utc>) -> Brought {
        let mut msg = match self.inner.spool.read_envelope(id) {
            Ok(m) => m,
            Err(e) if not_found(&e) => return Brought::Gone,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "spool file could not be read; left in place for an operator");
                self.lock().damaged.insert(id.clone());
                return Brought::Gone;
            }
        };
        if flushed {
            super::flush_recipients(&mut msg);
        }
        match msg.next_due() {
            Some(at) if at <= now => {}
            not_yet => {
                // The index was wrong (an envelope written before mtimes
                // were due times, or restored from a backup): mend it, or
                // every walk would read this one again.
                if let Err(e) = self.inner.spool.set_due_hint(id, due_mtime(&msg)) {
                    tracing::debug!(queue_id = %id, error = %e, "cannot set the due time of an envelope");
                }
                return Brought::NotDue(not_yet);
            }
        }
        let mut st = self.lock();
        let gone = st.deleted_in_scan.as_ref().is_some_and(|d| d.contains(id));
        if gone || st.busy.contains(id) {
            return Brought::Gone;
        }
        if st.admit(msg, self.window(), now) {
            Brought::In
        } else {
            Brought::NoRoom
        }
    }
}

enum Brought {
    In,
    /// Deleted, being changed by an operator, or unreadable.
    Gone,
    /// Not due after all; due then (`None`: held only).
    NotDue(Option<DateTime<Utc>>),
    /// The window filled up meanwhile.
    NoRoom,
}
