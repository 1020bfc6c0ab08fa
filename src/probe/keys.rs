//! OpenPGP keys: the key store (in the audit database, so every node of a
//! cluster sees the same keys), discovery (local store, WKD), validation,
//! and the record of which key was last used for each address, so that a
//! changed key is noticed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use sequoia_openpgp::Cert;
use serde::Serialize;
use serde_json::json;
use sqlx::Row;
use sqlx::any::AnyPoolOptions;

use super::{Capability, Probe, ProbeAnswer, ProbeFuture};
use crate::encrypt::pgp;

/// A stored key, as `sealgate keys list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredKey {
    pub fingerprint: String,
    pub address: String,
    pub source: String,
    pub added_at: String,
}

/// Errors of the key store.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key store database {0}: {1}")]
    Database(String, String),
    #[error("{0}")]
    Invalid(String),
}

/// The key store and the discovered-key cache.
pub struct Keyring {
    pool: sqlx::AnyPool,
    url: String,
    /// Certificates seen by probes, by fingerprint, for delivery.
    certs: Mutex<HashMap<String, Cert>>,
    resolver: Option<hickory_resolver::TokioResolver>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    /// The validating resolver, for DNS OPENPGPKEY records.
    dane: std::sync::OnceLock<Arc<crate::net::dane::Dane>>,
    /// A VKS keyserver host (e.g. keys.openpgp.org), for the `keyserver` source.
    keyserver: std::sync::OnceLock<String>,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS pgp_keys (fingerprint TEXT NOT NULL, address TEXT NOT NULL, cert TEXT NOT NULL, source TEXT NOT NULL, added_at TEXT NOT NULL, PRIMARY KEY (fingerprint, address))",
    "CREATE INDEX IF NOT EXISTS pgp_keys_address ON pgp_keys (address)",
    "CREATE TABLE IF NOT EXISTS pgp_trust (address TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, source TEXT NOT NULL, confirmed_at TEXT NOT NULL)",
];

impl Keyring {
    /// Opens the key store in `database_url` (the audit database).
    pub async fn open(
        database_url: &str,
        resolver: Option<hickory_resolver::TokioResolver>,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Keyring, KeyError> {
        sqlx::any::install_default_drivers();
        let shown = crate::audit::redact_url(database_url);
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(database_url)
            .await
            .map_err(|e| KeyError::Database(shown.clone(), e.to_string()))?;
        for stmt in SCHEMA {
            sqlx::query(stmt)
                .execute(&pool)
                .await
                .map_err(|e| KeyError::Database(shown.clone(), e.to_string()))?;
        }
        Ok(Keyring {
            pool,
            url: shown,
            certs: Mutex::new(HashMap::new()),
            resolver,
            tls,
            timeout,
            dane: std::sync::OnceLock::new(),
            keyserver: std::sync::OnceLock::new(),
        })
    }

    fn db(&self, e: sqlx::Error) -> KeyError {
        KeyError::Database(self.url.clone(), e.to_string())
    }

    /// Imports certificates (armored or binary); returns what was stored,
    /// for each address a certificate carries.
    pub async fn import(&self, data: &[u8]) -> Result<Vec<Imported>, KeyError> {
        let certs = pgp::parse_certs(data)
            .map_err(|e| KeyError::Invalid(format!("not an OpenPGP certificate: {e}")))?;
        if certs.is_empty() {
            return Err(KeyError::Invalid("no OpenPGP certificate found".into()));
        }
        let mut stored = Vec::new();
        for cert in certs {
            let cert = cert.strip_secret_key_material();
            let armored = pgp::armor(&cert).map_err(KeyError::Invalid)?;
            let fpr = cert.fingerprint().to_hex();
            let addresses: Vec<String> = cert
                .userids()
                .filter_map(|u| u.userid().email_normalized().ok().flatten())
                .collect();
            if addresses.is_empty() {
                return Err(KeyError::Invalid(format!(
                    "certificate {fpr} has no user ID with an e-mail address"
                )));
            }
            // Stored all the same (an update that revokes a stored key must
            // replace it), but the operator is told that nobody can
            // encrypt to it, rather than finding out at the first message.
            let unusable = addresses
                .iter()
                .find_map(|a| pgp::check_key(&cert, a).err().map(|p| p.to_string()));
            for addr in addresses {
                sqlx::query("DELETE FROM pgp_keys WHERE fingerprint = $1 AND address = $2")
                    .bind(&fpr)
                    .bind(&addr)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| self.db(e))?;
                sqlx::query("INSERT INTO pgp_keys (fingerprint, address, cert, source, added_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(&fpr)
                    .bind(&addr)
                    .bind(&armored)
                    .bind("local")
                    .bind(Utc::now().to_rfc3339())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| self.db(e))?;
                stored.push(Imported {
                    fingerprint: fpr.clone(),
                    address: addr,
                    unusable: unusable.clone(),
                });
            }
        }
        Ok(stored)
    }

    /// Every stored key.
    pub async fn list(&self) -> Result<Vec<StoredKey>, KeyError> {
        let rows = sqlx::query("SELECT fingerprint, address, source, added_at FROM pgp_keys ORDER BY address, fingerprint").fetch_all(&self.pool).await.map_err(|e| self.db(e))?;
        rows.iter()
            .map(|r| {
                Ok(StoredKey {
                    fingerprint: r.try_get(0).map_err(|e| self.db(e))?,
                    address: r.try_get(1).map_err(|e| self.db(e))?,
                    source: r.try_get(2).map_err(|e| self.db(e))?,
                    added_at: r.try_get(3).map_err(|e| self.db(e))?,
                })
            })
            .collect()
    }

    /// Removes a key (all its addresses); returns rows removed.
    pub async fn remove(&self, fingerprint: &str) -> Result<u64, KeyError> {
        let fpr = fingerprint.replace(' ', "").to_ascii_uppercase();
        let r = sqlx::query("DELETE FROM pgp_keys WHERE fingerprint = $1")
            .bind(&fpr)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(r.rows_affected())
    }

    /// Confirms `fingerprint` as the key for `address` (after a change).
    pub async fn trust(
        &self,
        address: &str,
        fingerprint: &str,
        source: &str,
    ) -> Result<(), KeyError> {
        let addr = address.to_ascii_lowercase();
        let fpr = fingerprint.replace(' ', "").to_ascii_uppercase();
        sqlx::query("DELETE FROM pgp_trust WHERE address = $1")
            .bind(&addr)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        sqlx::query("INSERT INTO pgp_trust (address, fingerprint, source, confirmed_at) VALUES ($1, $2, $3, $4)")
            .bind(&addr)
            .bind(&fpr)
            .bind(source)
            .bind(Utc::now().to_rfc3339())
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The key last used (or confirmed) for `address`.
    pub async fn trusted(&self, address: &str) -> Result<Option<String>, KeyError> {
        let row = sqlx::query("SELECT fingerprint FROM pgp_trust WHERE address = $1")
            .bind(address.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        row.map(|r| r.try_get::<String, _>(0).map_err(|e| self.db(e)))
            .transpose()
    }

    async fn local(&self, address: &str) -> Result<Vec<Cert>, KeyError> {
        let rows = sqlx::query("SELECT cert FROM pgp_keys WHERE address = $1")
            .bind(address.to_ascii_lowercase())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for r in rows {
            let text: String = r.try_get(0).map_err(|e| self.db(e))?;
            out.extend(pgp::parse_certs(text.as_bytes()).unwrap_or_default());
        }
        Ok(out)
    }

    /// Enables the `dns` source (OPENPGPKEY under DNSSEC).
    pub fn set_dane(&self, dane: Arc<crate::net::dane::Dane>) {
        let _ = self.dane.set(dane);
    }

    /// Enables the `keyserver` source: a VKS server (`/vks/v1/by-email/`).
    pub fn set_keyserver(&self, host: String) {
        let _ = self.keyserver.set(host);
    }

    async fn vks(&self, address: &str) -> Result<Vec<Cert>, String> {
        let (Some(host), Some(resolver), Some(tls)) =
            (self.keyserver.get(), &self.resolver, &self.tls)
        else {
            return Ok(Vec::new());
        };
        let path = format!("/vks/v1/by-email/{}", percent(address));
        match crate::net::https::get(resolver, tls.clone(), host, &path, self.timeout, 256 * 1024)
            .await
        {
            Ok(f) if f.status == 200 => {
                pgp::parse_certs(&f.body).map_err(|e| format!("https://{host}{path}: {e}"))
            }
            Ok(f) if f.status == 404 => Ok(Vec::new()),
            Ok(f) => Err(format!("https://{host}{path}: HTTP {}", f.status)),
            Err(e) => Err(e),
        }
    }

    async fn dns(&self, address: &str) -> Result<Vec<Cert>, String> {
        let Some(dane) = self.dane.get() else {
            return Ok(Vec::new());
        };
        let mut certs = Vec::new();
        for data in dane.openpgpkey(address).await?.unwrap_or_default() {
            certs.extend(pgp::parse_certs(&data).unwrap_or_default());
        }
        Ok(certs)
    }

    /// A certificate seen by a probe (for delivery).
    pub fn cert(&self, fingerprint: &str) -> Option<Cert> {
        self.certs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(fingerprint)
            .cloned()
    }

    fn remember(&self, cert: &Cert) {
        self.certs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cert.fingerprint().to_hex(), cert.clone());
    }

    /// WKD (draft-koch-openpgp-webkey-service): the advanced method, then
    /// the direct one.
    async fn wkd(&self, address: &str) -> Result<Vec<Cert>, String> {
        let (Some(resolver), Some(tls)) = (&self.resolver, &self.tls) else {
            return Ok(Vec::new());
        };
        let (local, domain) = address.rsplit_once('@').ok_or("not an address")?;
        // The hash is of the local part with ASCII letters lowercased (and
        // nothing else: `É` stays `É`); `?l=` carries it as given, so a
        // server that keys by the exact name can still find it.
        let hash = zbase32(ring_sha1(local.to_ascii_lowercase().as_bytes()).as_slice());
        let l = percent(local);
        let tries = [
            (
                format!("openpgpkey.{domain}"),
                format!("/.well-known/openpgpkey/{domain}/hu/{hash}?l={l}"),
            ),
            (
                domain.to_string(),
                format!("/.well-known/openpgpkey/hu/{hash}?l={l}"),
            ),
        ];
        let mut errors = Vec::new();
        for (host, path) in tries {
            match crate::net::https::get(
                resolver,
                tls.clone(),
                &host,
                &path,
                self.timeout,
                256 * 1024,
            )
            .await
            {
                Ok(f) if f.status == 200 => {
                    return pgp::parse_certs(&f.body)
                        .map_err(|e| format!("https://{host}{path}: {e}"));
                }
                Ok(f) if f.status == 404 => errors.push(format!("https://{host}{path}: not found")),
                Ok(f) => errors.push(format!("https://{host}{path}: HTTP {}", f.status)),
                Err(e) => errors.push(e),
            }
        }
        if errors.iter().all(|e| {
            e.ends_with("not found")
                || e.contains("no address records")
                || e.contains("does not exist")
        }) {
            Ok(Vec::new())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// SHA-1 for the WKD hash only (a name, not a security function).
fn ring_sha1(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .to_vec()
}

impl crate::encrypt::prepare::Certificates for Keyring {
    fn cert(&self, fingerprint: &str) -> Option<Cert> {
        Keyring::cert(self, fingerprint)
    }
}

/// z-base-32 (RFC 6189 section 5.1.6), as WKD uses it.
pub fn zbase32(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ybndrfg8ejkmcpqxot1uwisza345h769";
    let mut out = String::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buffer = (buffer << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The OpenPGP probe: keys from the configured sources, validated for the
/// exact address, with key changes held for confirmation when they come
/// from a directory.
pub struct PgpProbe {
    pub keyring: Arc<Keyring>,
    /// Sources in order: `local`, `wkd`, `dns`.
    pub sources: Vec<String>,
    /// Hold a changed key from a directory until confirmed (`sealgate keys trust`).
    pub hold_changed: bool,
}

/// One certificate stored for one address by `import`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub fingerprint: String,
    pub address: String,
    /// Why nobody can encrypt to it (revoked, expired, no encryption
    /// subkey...), if so: it is stored, and never used.
    pub unusable: Option<String>,
}

impl PgpProbe {
    async fn find(&self, address: &str) -> ProbeAnswer {
        let mut tried = Vec::new();
        for source in &self.sources {
            let found = match source.as_str() {
                "local" => self.keyring.local(address).await.map_err(|e| e.to_string()),
                "wkd" => self.keyring.wkd(address).await,
                "dns" => self.keyring.dns(address).await,
                "keyserver" => self.keyring.vks(address).await,
                other => Err(format!("unknown key source {other}")),
            };
            let certs = match found {
                Ok(c) => c,
                Err(e) => {
                    tried.push(json!({ "source": source, "error": e }));
                    continue;
                }
            };
            let mut rejected = Vec::new();
            for cert in certs {
                match pgp::check_key(&cert, address) {
                    Ok(facts) => {
                        let previous = match self.keyring.trusted(address).await {
                            Ok(p) => p,
                            // Not "first use": which key was used before is
                            // unknown, so this one is not trusted blindly.
                            Err(e) => {
                                let reason = format!("OpenPGP key {} found by {source}, but the key store cannot say which key was used before ({e}); held", facts.fingerprint);
                                tried.push(json!({ "source": source, "fingerprint": facts.fingerprint, "held": reason }));
                                return held(reason, tried);
                            }
                        };
                        let changed = previous.as_ref().is_some_and(|p| *p != facts.fingerprint);
                        if changed && self.hold_changed && source != "local" {
                            let reason = format!("the OpenPGP key found by {source} ({}) differs from the one last used ({}); confirm it with `sealgate keys trust`", facts.fingerprint, previous.as_deref().unwrap_or(""));
                            tried.push(json!({ "source": source, "fingerprint": facts.fingerprint, "previous": previous, "held": reason }));
                            return held(reason, tried);
                        }
                        if previous.is_none() || (changed && source == "local") {
                            let _ = self.keyring.trust(address, &facts.fingerprint, source).await;
                        }
                        self.keyring.remember(&cert);
                        let evidence = json!({ "source": source, "key": facts, "previous": previous, "changed": changed, "tried": tried });
                        return ProbeAnswer { result: Ok(vec![Capability::Pgp { fingerprint: facts.fingerprint, source: source.clone() }]), evidence };
                    }
                    Err(problem) => rejected.push(json!({ "fingerprint": cert.fingerprint().to_hex(), "problem": problem.to_string() })),
                }
            }
            tried.push(json!({ "source": source, "rejected": rejected }));
        }
        let failed: Vec<String> = tried
            .iter()
            .filter_map(|t| {
                t["error"]
                    .as_str()
                    .map(|e| format!("{}: {e}", t["source"].as_str().unwrap_or("")))
            })
            .collect();
        if !failed.is_empty() {
            // A source that failed may hold the key this address had: if it
            // had one (or the store cannot say), that is not "no key", or
            // blocking the directory would send the mail without it.
            let pinned = match self.keyring.trusted(address).await {
                Ok(p) => p.map(|f| format!("key {f} was used before")),
                Err(e) => Some(format!(
                    "the key store cannot say which key was used before ({e})"
                )),
            };
            if let Some(why) = pinned {
                return ProbeAnswer {
                    result: Err(format!(
                        "OpenPGP key lookup failed ({}) and {why}; waiting rather than sending without it",
                        failed.join("; ")
                    )),
                    evidence: json!({ "tried": tried }),
                };
            }
        }
        ProbeAnswer {
            result: Ok(Vec::new()),
            evidence: json!({ "tried": tried }),
        }
    }
}

/// The answer for a key that must wait for an operator.
fn held(reason: String, tried: Vec<serde_json::Value>) -> ProbeAnswer {
    ProbeAnswer {
        result: Ok(vec![Capability::PgpHeld { reason }]),
        evidence: json!({ "tried": tried }),
    }
}

impl Probe for PgpProbe {
    fn name(&self) -> &'static str {
        "pgp"
    }

    fn cache_key(&self, recipient: &str) -> String {
        recipient.to_lowercase()
    }

    fn probe<'a>(&'a self, recipient: &'a str) -> ProbeFuture<'a> {
        // The address as canonicalised at parse time (domain lowercase, the
        // local part as the sender wrote it): WKD and OPENPGPKEY hash the
        // local part by their own rules, the key store compares ASCII
        // case-insensitively.
        Box::pin(async move { self.find(recipient).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The WKD hash lowercases ASCII only; the `?l=` part is the local
    /// part as given.
    #[test]
    fn wkd_lowercases_ascii_only() {
        assert_eq!(
            zbase32(&ring_sha1("Joe.Doe".to_ascii_lowercase().as_bytes())),
            "iy9q119eutrkn8s1mk4r39qejnbu3n5q"
        );
        // `É` (U+00C9) is not folded: its hash differs from `é`'s.
        assert_ne!(
            zbase32(&ring_sha1("JOSÉ".to_ascii_lowercase().as_bytes())),
            zbase32(&ring_sha1("josé".as_bytes()))
        );
        assert_eq!(percent("José"), "Jos%C3%A9");
    }

    #[test]
    fn wkd_hash() {
        // draft-koch-openpgp-webkey-service: "Joe.Doe" hashes to this.
        assert_eq!(
            zbase32(&ring_sha1(b"joe.doe")),
            "iy9q119eutrkn8s1mk4r39qejnbu3n5q"
        );
        assert_eq!(percent("a+b c"), "a%2Bb%20c");
    }
}
