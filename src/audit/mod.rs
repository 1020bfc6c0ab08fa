//! Audit: one hash-chained row per delivery attempt per recipient, and
//! one per listener event that concerns no message (an AUTH lockout).
//!
//! Only this module writes audit rows. Every event is first appended to a
//! local journal (fsynced) and then written to the database (SQLite by
//! default, PostgreSQL in production) by a single writer task; when the
//! database is unreachable the journal keeps the events until it comes back,
//! so mail keeps flowing and no record is lost.
//!
//! Code map: `writer` holds [`Auditor`] (the handle used by the delivery
//! path) and the writer task; `journal` the on-disk journal; `db` the SQL
//! shared by SQLite and PostgreSQL; `chain` the row hash; `quarantine` the
//! journal lines that could not be read (kept, never deleted); `verify`,
//! `export` and `read_quarantine` serve the `sealgate audit` subcommands.
//!
//! Invariants: a row's `seq` is the previous row's plus one and its
//! `prev_hash` is the previous row's `row_hash`; rows are only ever
//! appended; an `event_id` is stored at most once, so replaying the journal
//! is harmless; a journal segment is deleted only after all its events are
//! committed.

mod chain;
mod db;
mod error;
mod export;
mod journal;
mod quarantine;
mod verify;
mod writer;

pub use chain::{COLUMNS, GENESIS_HASH, StoredRow};
pub use error::{AuditError, redact_url};
pub use export::{ExportFormat, ExportSummary, export, rows_for_queue_id};
pub use quarantine::{Quarantine, QuarantinedLine, read as read_quarantine};
pub use verify::{ChainBreak, VerifyReport, verify};
pub use writer::{AuditSettings, Auditor};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What happened to one recipient on one delivery attempt.
///
/// Holds metadata and evidence only, never message content (invariant 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unique id of this event (32 lowercase hex characters); makes journal
    /// replay idempotent.
    pub event_id: String,
    /// When the attempt finished.
    #[serde(with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
    /// Spool id of the message.
    pub queue_id: String,
    /// The message's Message-ID header, if it had one.
    pub message_id: Option<String>,
    /// Envelope sender (empty for the null sender `<>`).
    pub sender: String,
    /// Envelope recipient.
    pub recipient: String,
    /// `delivered`, `deferred`, `bounced`, `held` or `unknown` (delivered
    /// or not known: a stop interrupted the attempt); for listener events
    /// that concern no message, the event's name (`auth_lockout`).
    pub outcome: String,
    /// Protection applied: `tls`, `plaintext` (later `pgp`, `smime`, `portal`).
    pub method: String,
    /// TLS requirement for the hop: `dane`, `mta-sts`, `verified`, `opportunistic`.
    pub tls_requirement: String,
    /// Name of the policy rule that decided.
    pub policy_rule: String,
    /// Hash of the loaded policy files.
    pub policy_version: String,
    /// Remote MX or smarthost name.
    pub remote_host: Option<String>,
    /// Remote IP address.
    pub remote_ip: Option<String>,
    /// Negotiated TLS version, e.g. `TLSv1.3`.
    pub tls_version: Option<String>,
    /// Negotiated cipher suite.
    pub tls_cipher: Option<String>,
    /// The remote's final SMTP reply for this recipient, or our error text.
    pub smtp_reply: Option<String>,
    /// SHA-256 (hex) of the message body as delivered.
    pub body_sha256: Option<String>,
    /// Everything else behind the decision (certificate verification, MX
    /// set, probe results), as a JSON object.
    pub evidence: serde_json::Value,
}

impl AuditEvent {
    /// A fresh random event id: 32 lowercase hex characters from the
    /// system's secure random source, unique across nodes.
    pub fn new_id() -> String {
        // No time-and-counter fallback: ids come from the same source as
        // keys, and if it fails the process stops (see `util::random_bytes`).
        crate::util::random_hex_id()
    }

    /// A listener event that concerns no message (e.g. `auth_lockout`):
    /// `outcome` names the event, queue id, sender and recipient are empty,
    /// `method`, `tls_requirement` and `policy_rule` are `none`, and the
    /// client's address is `remote_ip`. `reply` is what the client is
    /// told from now on; `evidence` holds the event's details.
    pub fn listener(
        outcome: &str,
        remote_ip: std::net::IpAddr,
        reply: &str,
        evidence: serde_json::Value,
    ) -> AuditEvent {
        AuditEvent {
            event_id: AuditEvent::new_id(),
            timestamp: Utc::now(),
            queue_id: String::new(),
            message_id: None,
            sender: String::new(),
            recipient: String::new(),
            outcome: outcome.into(),
            method: "none".into(),
            tls_requirement: "none".into(),
            policy_rule: "none".into(),
            policy_version: String::new(),
            remote_host: None,
            remote_ip: Some(remote_ip.to_string()),
            tls_version: None,
            tls_cipher: None,
            smtp_reply: Some(reply.into()),
            body_sha256: None,
            evidence,
        }
    }
}

/// RFC 3339 (de)serialisation for the journal, the same text chrono's own
/// `serde` feature writes, without needing that feature.
mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ts.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(D::Error::custom)
    }
}
