//! The stored row and its hash: pure logic, no I/O.
//!
//! Each row's `row_hash` is the lowercase hex SHA-256 of this byte string:
//!
//! ```text
//! "sealgate-audit-row-v1"
//! field(prev_hash)
//! seq as 8 bytes, big-endian two's complement
//! field(event_id) field(ts) field(queue_id) field(message_id) field(sender)
//! field(recipient) field(outcome) field(method) field(tls_requirement)
//! field(policy_rule) field(policy_version) field(remote_host) field(remote_ip)
//! field(tls_version) field(tls_cipher) field(smtp_reply) field(body_sha256)
//! field(evidence)
//!
//! field(absent)  = 0x00
//! field(present) = 0x01, length of the UTF-8 bytes as 8 bytes big-endian, the bytes
//! ```
//!
//! Every field is length-prefixed and absent differs from empty, so no two
//! different rows share an encoding. `prev_hash` is the previous row's
//! `row_hash` ([`GENESIS_HASH`] for the first row), which chains the rows:
//! editing a row breaks its own hash, deleting one breaks the `seq` sequence
//! and the next row's `prev_hash`.

use chrono::{DateTime, SecondsFormat, Utc};
use ring::digest;
use serde::{Deserialize, Serialize};

use super::AuditEvent;

/// `prev_hash` of the first row: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation so a row hash cannot be mistaken for any other SHA-256.
const HASH_DOMAIN: &[u8] = b"sealgate-audit-row-v1";

/// The columns of `audit_log`, in table, hash, CSV and JSON order.
pub const COLUMNS: [&str; 21] = [
    "seq",
    "event_id",
    "ts",
    "queue_id",
    "message_id",
    "sender",
    "recipient",
    "outcome",
    "method",
    "tls_requirement",
    "policy_rule",
    "policy_version",
    "remote_host",
    "remote_ip",
    "tls_version",
    "tls_cipher",
    "smtp_reply",
    "body_sha256",
    "evidence",
    "prev_hash",
    "row_hash",
];

/// One row of `audit_log`, exactly as stored (text columns are not
/// re-parsed, so the hash can be recomputed byte for byte). Serialises to
/// the JSON export's row objects and back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRow {
    /// Position in the chain, starting at 1, without gaps.
    pub seq: i64,
    /// The event's unique id.
    pub event_id: String,
    /// When the attempt finished: RFC 3339, UTC, milliseconds
    /// (`2025-01-31T12:00:00.000Z`), so text order is time order.
    pub ts: String,
    /// Spool id of the message.
    pub queue_id: String,
    /// Message-ID header, if any.
    pub message_id: Option<String>,
    /// Envelope sender (empty for `<>`).
    pub sender: String,
    /// Envelope recipient.
    pub recipient: String,
    /// `delivered`, `deferred`, `bounced` or `held`.
    pub outcome: String,
    /// Protection applied.
    pub method: String,
    /// TLS requirement for the hop.
    pub tls_requirement: String,
    /// Policy rule that decided.
    pub policy_rule: String,
    /// Hash of the loaded policy files.
    pub policy_version: String,
    /// Remote MX or smarthost name.
    pub remote_host: Option<String>,
    /// Remote IP address.
    pub remote_ip: Option<String>,
    /// Negotiated TLS version.
    pub tls_version: Option<String>,
    /// Negotiated cipher suite.
    pub tls_cipher: Option<String>,
    /// Final SMTP reply or our error text.
    pub smtp_reply: Option<String>,
    /// SHA-256 (hex) of the delivered body.
    pub body_sha256: Option<String>,
    /// Evidence behind the decision, as JSON text.
    pub evidence: String,
    /// `row_hash` of the row before (or [`GENESIS_HASH`]).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this row (see the module docs).
    pub row_hash: String,
}

impl StoredRow {
    /// Builds the row that records `event` at position `seq` after a row
    /// whose hash is `prev_hash`, and computes its `row_hash`.
    ///
    /// NUL characters are replaced by U+FFFD: PostgreSQL refuses them in
    /// text, and a remote server's reply must not be able to wedge the
    /// audit writer.
    pub fn from_event(seq: i64, prev_hash: &str, event: &AuditEvent) -> StoredRow {
        let clean = |s: &str| s.replace('\0', "\u{FFFD}");
        let clean_opt = |s: &Option<String>| s.as_deref().map(clean);
        let mut row = StoredRow {
            seq,
            event_id: clean(&event.event_id),
            ts: format_ts(&event.timestamp),
            queue_id: clean(&event.queue_id),
            message_id: clean_opt(&event.message_id),
            sender: clean(&event.sender),
            recipient: clean(&event.recipient),
            outcome: clean(&event.outcome),
            method: clean(&event.method),
            tls_requirement: clean(&event.tls_requirement),
            policy_rule: clean(&event.policy_rule),
            policy_version: clean(&event.policy_version),
            remote_host: clean_opt(&event.remote_host),
            remote_ip: clean_opt(&event.remote_ip),
            tls_version: clean_opt(&event.tls_version),
            tls_cipher: clean_opt(&event.tls_cipher),
            smtp_reply: clean_opt(&event.smtp_reply),
            body_sha256: clean_opt(&event.body_sha256),
            // serde_json escapes NUL inside strings as \u0000.
            evidence: event.evidence.to_string(),
            prev_hash: prev_hash.to_string(),
            row_hash: String::new(),
        };
        row.row_hash = row.compute_hash();
        row
    }

    /// Recomputes this row's hash from its stored `prev_hash` and columns
    /// (ignores the stored `row_hash`).
    pub fn compute_hash(&self) -> String {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(HASH_DOMAIN);
        field(&mut ctx, Some(&self.prev_hash));
        ctx.update(&self.seq.to_be_bytes());
        for value in [
            Some(self.event_id.as_str()),
            Some(self.ts.as_str()),
            Some(self.queue_id.as_str()),
            self.message_id.as_deref(),
            Some(self.sender.as_str()),
            Some(self.recipient.as_str()),
            Some(self.outcome.as_str()),
            Some(self.method.as_str()),
            Some(self.tls_requirement.as_str()),
            Some(self.policy_rule.as_str()),
            Some(self.policy_version.as_str()),
            self.remote_host.as_deref(),
            self.remote_ip.as_deref(),
            self.tls_version.as_deref(),
            self.tls_cipher.as_deref(),
            self.smtp_reply.as_deref(),
            self.body_sha256.as_deref(),
            Some(self.evidence.as_str()),
        ] {
            field(&mut ctx, value);
        }
        hex::encode(ctx.finish().as_ref())
    }

    /// The `ts` column parsed back, or `None` if it was altered into
    /// something that is not RFC 3339.
    pub fn timestamp(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.ts)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The columns as text in [`COLUMNS`] order (`None` for SQL NULL).
    pub fn values(&self) -> [Option<String>; 21] {
        [
            Some(self.seq.to_string()),
            Some(self.event_id.clone()),
            Some(self.ts.clone()),
            Some(self.queue_id.clone()),
            self.message_id.clone(),
            Some(self.sender.clone()),
            Some(self.recipient.clone()),
            Some(self.outcome.clone()),
            Some(self.method.clone()),
            Some(self.tls_requirement.clone()),
            Some(self.policy_rule.clone()),
            Some(self.policy_version.clone()),
            self.remote_host.clone(),
            self.remote_ip.clone(),
            self.tls_version.clone(),
            self.tls_cipher.clone(),
            self.smtp_reply.clone(),
            self.body_sha256.clone(),
            Some(self.evidence.clone()),
            Some(self.prev_hash.clone()),
            Some(self.row_hash.clone()),
        ]
    }
}

/// The `ts` column's format: RFC 3339, UTC, milliseconds, `Z`.
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn field(ctx: &mut digest::Context, value: Option<&str>) {
    match value {
        None => ctx.update(&[0]),
        Some(s) => {
            ctx.update(&[1]);
            ctx.update(&(s.len() as u64).to_be_bytes());
            ctx.update(s.as_bytes());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;

    /// A plausible event for tests; `n` makes ids and recipients distinct.
    pub(crate) fn sample_event(n: u32) -> AuditEvent {
        AuditEvent {
            event_id: format!("{n:032x}"),
            timestamp: Utc
                .with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
                .single()
                .unwrap_or_default()
                + chrono::Duration::milliseconds(i64::from(n)),
            queue_id: format!("Q{n}"),
            message_id: Some(format!("<m{n}@example.org>")),
            sender: "clinic@example.org".into(),
            recipient: format!("patient{n}@example.net"),
            outcome: "delivered".into(),
            method: "tls".into(),
            tls_requirement: "dane".into(),
            policy_rule: "default".into(),
            policy_version: "abc123".into(),
            remote_host: Some("mx.example.net".into()),
            remote_ip: Some("192.0.2.1".into()),
            tls_version: Some("TLSv1.3".into()),
            tls_cipher: Some("TLS13_AES_256_GCM_SHA384".into()),
            smtp_reply: Some("250 2.0.0 Ok, \"queued\"".into()),
            body_sha256: None,
            evidence: serde_json::json!({"tlsa": "3 1 1 abcd", "mx": ["mx.example.net"]}),
        }
    }

    #[test]
    fn hash_is_stable_and_covers_every_column() {
        let row = StoredRow::from_event(1, GENESIS_HASH, &sample_event(1));
        assert_eq!(row.row_hash, row.compute_hash());
        assert_eq!(row.ts, "2025-03-01T12:00:00.001Z");
        assert_eq!(row.row_hash.len(), 64);

        // Changing any single column (or NULL versus empty) changes the hash.
        let mut variants: Vec<StoredRow> = Vec::new();
        for i in 0..COLUMNS.len() - 1 {
            let mut r = row.clone();
            match i {
                0 => r.seq = 2,
                1 => r.event_id.push('x'),
                2 => r.ts.push('x'),
                3 => r.queue_id.push('x'),
                4 => r.message_id = None,
                5 => r.sender.push('x'),
                6 => r.recipient.push('x'),
                7 => r.outcome.push('x'),
                8 => r.method.push('x'),
                9 => r.tls_requirement.push('x'),
                10 => r.policy_rule.push('x'),
                11 => r.policy_version.push('x'),
                12 => r.remote_host = None,
                13 => r.remote_ip = None,
                14 => r.tls_version = None,
                15 => r.tls_cipher = None,
                16 => r.smtp_reply = None,
                17 => r.body_sha256 = Some(String::new()),
                18 => r.evidence.push(' '),
                _ => r.prev_hash = "1".repeat(64),
            }
            variants.push(r);
        }
        for (i, r) in variants.iter().enumerate() {
            assert_ne!(r.compute_hash(), row.row_hash, "column {}", COLUMNS[i]);
        }

        // Moving bytes between adjacent fields changes the hash too.
        let mut a = row.clone();
        a.sender = "ab".into();
        a.recipient = "c".into();
        let mut b = row.clone();
        b.sender = "a".into();
        b.recipient = "bc".into();
        assert_ne!(a.compute_hash(), b.compute_hash());
    }

    /// Golden vectors: row hashes computed outside sealgate (Python's
    /// `hashlib`, from the byte string in the module docs), so any change
    /// to the hashing (field order, length prefix, absent versus empty,
    /// `ts` format, evidence serialisation) fails here instead of
    /// silently breaking `audit verify` on existing databases.
    ///
    /// ```text
    /// import hashlib, struct
    /// def field(v):
    ///     if v is None: return b"\x00"
    ///     b = v.encode("utf-8"); return b"\x01" + struct.pack(">Q", len(b)) + b
    /// def row_hash(prev, seq, cols):
    ///     h = hashlib.sha256(b"sealgate-audit-row-v1" + field(prev) + struct.pack(">q", seq))
    ///     for c in cols: h.update(field(c))
    ///     return h.hexdigest()
    /// ```
    #[test]
    fn golden_row_hashes() {
        const ROW1: &str = "36909f22a8ba8eb84f278b0d0873b84a5ac08a29ddb627e72421bac07c8202f2";
        const ROW2: &str = "d79cf46e5def3ac221828f424d9f6009277120a302cee5112796d79cc04a1652";
        let at = |h: u32, m: u32, ms: i64| {
            Utc.with_ymd_and_hms(2026, 11, 29, h, m, 0)
                .single()
                .unwrap_or_default()
                + chrono::Duration::milliseconds(ms)
        };
        let first = AuditEvent {
            event_id: "0123456789abcdef0123456789abcdef".into(),
            timestamp: at(10, 0, 123),
            queue_id: "Q0001".into(),
            message_id: Some("<golden@clinic.example.test>".into()),
            sender: "dr.a@clinic.example.test".into(),
            recipient: "b@dane.example.test".into(),
            outcome: "delivered".into(),
            method: "tls".into(),
            tls_requirement: "dane".into(),
            policy_rule: "phi-dane".into(),
            policy_version: "0f1e2d3c".into(),
            remote_host: Some("mx.dane.example.test".into()),
            remote_ip: Some("127.0.0.1".into()),
            tls_version: Some("TLSv1.3".into()),
            tls_cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
            smtp_reply: Some("250 2.0.0 Ok: queued as 1A2B".into()),
            body_sha256: Some(
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            ),
            evidence: serde_json::json!({
                "dane_match": "3 1 1 ab",
                "mx": ["mx.dane.example.test"],
            }),
        };
        let row1 = StoredRow::from_event(1, GENESIS_HASH, &first);
        assert_eq!(
            row1.evidence,
            r#"{"dane_match":"3 1 1 ab","mx":["mx.dane.example.test"]}"#
        );
        assert_eq!(row1.row_hash, ROW1);

        // Absent versus empty, UTF-8 lengths in bytes, chained to the first.
        let second = AuditEvent {
            event_id: "fedcba9876543210fedcba9876543210".into(),
            timestamp: at(10, 5, 0),
            queue_id: "Q0002".into(),
            message_id: None,
            sender: String::new(),
            recipient: "j\u{fc}rgen@b\u{fc}cher.example.test".into(),
            outcome: "deferred".into(),
            method: "tls".into(),
            tls_requirement: "dane".into(),
            policy_rule: "default".into(),
            policy_version: "0f1e2d3c".into(),
            remote_host: None,
            remote_ip: None,
            tls_version: None,
            tls_cipher: None,
            smtp_reply: Some("DNSSEC validation failed (bogus)".into()),
            body_sha256: None,
            evidence: serde_json::json!({}),
        };
        let row2 = StoredRow::from_event(2, &row1.row_hash, &second);
        assert_eq!(row2.ts, "2026-11-29T10:05:00.000Z");
        assert_eq!(row2.row_hash, ROW2);
        assert_eq!(row2.compute_hash(), ROW2);
    }

    #[test]
    fn nul_is_replaced() {
        let mut ev = sample_event(2);
        ev.smtp_reply = Some("550 bad\0reply".into());
        let row = StoredRow::from_event(1, GENESIS_HASH, &ev);
        assert_eq!(row.smtp_reply.as_deref(), Some("550 bad\u{FFFD}reply"));
    }
}
