//! The TOML form of the configuration, one struct per table. Unknown keys are
//! rejected; values that need checking beyond their TOML type are kept
//! `Spanned` so that [`RawConfig::build`] can name the line of every problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::*;
use crate::util::{parse_duration, parse_size};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`: the inbound listener and the spool.
    pub server: RawServer,
    /// `[relay]`: who may relay without AUTH.
    #[serde(default)]
    pub relay: RawRelay,
    /// `[delivery]`: how mail leaves.
    #[serde(default)]
    pub delivery: RawDelivery,
    /// `[queue]`: retries and lifetime.
    #[serde(default)]
    pub queue: RawQueue,
    /// `[dns]`: the resolver every lookup goes through.
    #[serde(default)]
    pub dns: RawDns,
    /// `[tls]`: extra trust for outbound TLS.
    #[serde(default)]
    pub tls: RawTls,
    /// `[audit]`: where audit rows go.
    #[serde(default)]
    pub audit: RawAudit,
    /// `[policy]`: policy files.
    #[serde(default)]
    pub policy: RawPolicy,
    /// `[probe]`: capability probes.
    #[serde(default)]
    pub probe: RawProbe,
    /// `[tls_report]`: SMTP TLS reporting (RFC 8460).
    #[serde(default)]
    pub tls_report: RawTlsReport,
    /// `[pgp]`: OpenPGP encryption.
    #[serde(default)]
    pub pgp: RawPgp,
}

/// `[pgp]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPgp {
    /// Outer Subject of encrypted mail (RFC 9788; default "...").
    pub subject_placeholder: Option<Spanned<String>>,
    /// Key sources in order: `local`, `wkd` (default both).
    pub sources: Option<Vec<Spanned<String>>>,
    /// When a directory (WKD) shows a different key than the one last used:
    /// `hold` (default: skip OpenPGP until `sealgate keys trust`) or `use`.
    pub key_change: Option<Spanned<String>>,
    /// Sender domain → file with the organisation's secret key for signing.
    #[serde(default)]
    pub signing_keys: std::collections::BTreeMap<String, Spanned<String>>,
    /// A certificate added to every encryption (archiving).
    pub additional_decryption_key: Option<Spanned<String>>,
    /// VKS keyserver host for the `keyserver` source (e.g. keys.openpgp.org).
    pub keyserver: Option<Spanned<String>>,
}

/// `[tls_report]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsReport {
    /// Send aggregate reports to domains that ask for them (default true).
    pub enabled: Option<bool>,
    /// `organization-name` in reports (default: server.hostname).
    pub organization: Option<Spanned<String>>,
    /// `contact-info` in reports (default: postmaster@server.hostname).
    pub contact: Option<Spanned<String>>,
    /// Reporting period (`1d`; shorter only for testing).
    pub period: Option<Spanned<String>>,
}

/// `[probe]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    /// Longest a probe may take before it counts as failed (`15s`).
    pub timeout: Option<Spanned<String>>,
    /// How long probe answers are cached (`10m`).
    pub cache_ttl: Option<Spanned<String>>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Name in the banner, EHLO reply and Received headers.
    pub hostname: Spanned<String>,
    /// Addresses to listen on for SMTP.
    pub listen: Spanned<Vec<Spanned<String>>>,
    /// Folder of the durable, encrypted spool.
    pub spool_dir: Spanned<String>,
    /// 32-byte key file (hex or raw) encrypting the spool.
    pub spool_key_file: Spanned<String>,
    /// Unix socket the CLI uses to talk to the daemon (default: `<spool_dir>/control.sock`).
    pub control_socket: Option<Spanned<String>>,
    /// Largest message accepted (`50MB`).
    pub max_message_size: Option<Spanned<String>>,
    /// Free space the spool's file system must keep (`100MB`): below it the
    /// listener answers `452 4.3.1` before `354`, so queued mail keeps room
    /// to have its state updated.
    pub spool_reserve: Option<Spanned<String>>,
    /// Most recipients in one transaction (default 1000).
    pub max_recipients: Option<Spanned<i64>>,
    /// Longest SMTP command line in bytes (default 2048).
    pub max_command_line: Option<Spanned<i64>>,
    /// Longest line inside DATA in bytes (default 65536).
    pub max_line_length: Option<Spanned<i64>>,
    /// Largest header section (`1MiB`).
    pub max_header_size: Option<Spanned<String>>,
    /// More Received headers than this is a mail loop (default 50).
    pub max_received_headers: Option<Spanned<i64>>,
    /// Idle time allowed between commands (`5m`).
    pub command_timeout: Option<Spanned<String>>,
    /// Idle time allowed inside DATA (`10m`).
    pub data_timeout: Option<Spanned<String>>,
    /// Concurrent SMTP sessions (default 500).
    pub max_sessions: Option<Spanned<i64>>,
    /// Concurrent SMTP sessions from one IP address (default 100).
    pub max_sessions_per_ip: Option<Spanned<i64>>,
    /// Bad commands before the session is closed (default 10).
    pub max_errors: Option<Spanned<i64>>,
    /// `[server.tls]`: certificate for inbound STARTTLS.
    pub tls: Option<RawServerTls>,
    /// `[[server.users]]`: accounts that may AUTH and relay.
    #[serde(default)]
    pub users: Vec<RawUser>,
}

/// `[server.tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    /// PEM certificate chain, leaf first.
    pub cert: Spanned<String>,
    /// PEM private key.
    pub key: Spanned<String>,
}

/// `[[server.users]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    /// Login name.
    pub name: Spanned<String>,
    /// Argon2 hash from `sealgate hash-password`.
    pub password_hash: Spanned<String>,
}

/// `[relay]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    /// Networks (CIDR or single address) that may relay without AUTH.
    #[serde(default)]
    pub allow_networks: Vec<Spanned<String>>,
}

/// `[delivery]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// `host:port` to send everything through instead of MX delivery.
    pub smarthost: Option<Spanned<String>>,
    /// Destination port for MX delivery (default 25).
    pub port: Option<Spanned<i64>>,
    /// Name sent in EHLO (default: `server.hostname`).
    pub helo_name: Option<Spanned<String>>,
    /// TCP connect timeout (`30s`).
    pub connect_timeout: Option<Spanned<String>>,
    /// Wait for each reply (`5m`).
    pub command_timeout: Option<Spanned<String>>,
    /// Wait for the reply after the message data (`10m`).
    pub data_timeout: Option<Spanned<String>>,
    /// Outbound SMTP connections at once (default 100).
    pub max_connections: Option<Spanned<i64>>,
    /// Outbound SMTP connections at once to one host (default 10).
    pub max_connections_per_host: Option<Spanned<i64>>,
    /// How long an idle outbound connection is kept for reuse (`30s`).
    pub idle_timeout: Option<Spanned<String>>,
    /// `[delivery.smarthost_auth]`
    pub smarthost_auth: Option<RawSmarthostAuth>,
}

/// `[delivery.smarthost_auth]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmarthostAuth {
    /// AUTH user name at the smarthost.
    pub username: Spanned<String>,
    /// File holding the password (first line), kept out of the config.
    pub password_file: Spanned<String>,
}

/// `[queue]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    /// First retry delay (`1m`); doubles each attempt, with jitter.
    pub retry_base: Option<Spanned<String>>,
    /// Longest delay between retries (`1h`).
    pub retry_max: Option<Spanned<String>>,
    /// After this, undeliverable recipients bounce with a DSN (`5d`).
    pub max_age: Option<Spanned<String>>,
    /// Messages in delivery at once (default 200).
    pub max_active: Option<Spanned<i64>>,
    /// Messages kept in memory at most (default 10000): the active window
    /// the scheduler hands out from. The rest of the queue waits on disk,
    /// indexed by due time, and costs no memory; a backlog larger than
    /// this is loaded as room frees up. Messages in delivery count too, so
    /// a window smaller than `max_active` also caps deliveries at once.
    pub max_window: Option<Spanned<i64>>,
    /// Shortest time between two walks of the spool folder for due
    /// messages that are on disk only (`5s`). The folder is walked only
    /// when the window has room and such a message may be due.
    pub scan_interval: Option<Spanned<String>>,
}

/// `[dns]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// `ip:port` of recursive resolvers; default: the system resolver.
    #[serde(default)]
    pub nameservers: Vec<Spanned<String>>,
    /// DNSSEC trust anchor file; default: the IANA root.
    pub trust_anchor: Option<Spanned<String>>,
    /// Timeout per query (`5s`).
    pub timeout: Option<Spanned<String>>,
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM CA files trusted beside the WebPKI roots.
    #[serde(default)]
    pub extra_ca: Vec<Spanned<String>>,
}

/// `[audit]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `sqlite://PATH` (default `sqlite://<spool_dir>/audit.db`) or `postgres://...`.
    pub database_url: Option<Spanned<String>>,
    /// Local journal kept while the database is unreachable (default `<spool_dir>/audit-journal`).
    pub journal_dir: Option<Spanned<String>>,
}

/// `[policy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Glob patterns of policy files, in order.
    #[serde(default)]
    pub files: Vec<Spanned<String>>,
}

/// Collects problems while building.
struct Check<'a> {
    file: &'a Path,
    text: &'a str,
    problems: Vec<ConfigProblem>,
}

impl Check<'_> {
    fn problem<T>(&mut self, key: &str, spanned: &Spanned<T>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, spanned.span().start);
        self.problems.push(ConfigProblem {
            file: self.file.to_path_buf(),
            line: Some(line),
            column: Some(col),
            key: Some(key.to_string()),
            message: message.into(),
        });
    }

    fn size(&mut self, key: &str, v: &Option<Spanned<String>>, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => match parse_size(s.get_ref()) {
                Ok(0) => {
                    self.problem(key, s, "must be greater than zero");
                    default
                }
                Ok(n) => n,
                Err(e) => {
                    self.problem(key, s, e);
                    default
                }
            },
        }
    }

    fn duration(&mut self, key: &str, v: &Option<Spanned<String>>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) if d.is_zero() => {
                    self.problem(key, s, "must be longer than zero");
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.problem(key, s, e);
                    default
                }
            },
        }
    }

    fn count(&mut self, key: &str, v: &Option<Spanned<i64>>, default: usize, max: usize) -> usize {
        match v {
            None => default,
            Some(s) => {
                let n = *s.get_ref();
                if n < 1 || n as u64 > max as u64 {
                    self.problem(key, s, format!("must be between 1 and {max}"));
                    default
                } else {
                    n as usize
                }
            }
        }
    }

    fn path(&self, base: &Path, v: &Spanned<String>) -> PathBuf {
        let p = Path::new(v.get_ref());
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    }

    fn existing_file(&mut self, key: &str, base: &Path, v: &Spanned<String>) -> PathBuf {
        let p = self.path(base, v);
        if !p.is_file() {
            self.problem(
                key,
                v,
                format!("file {} does not exist or is not readable", p.display()),
            );
        }
        p
    }
}

impl RawConfig {
    /// Validates every value and turns the file into runtime [`Settings`];
    /// all problems are reported together.
    pub fn build(self, file: &Path, text: &str) -> Result<Settings, ConfigError> {
        let base = file
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        let mut c = Check {
            file,
            text,
            problems: Vec::new(),
        };
        let s = &self.server;

        let hostname = s.hostname.get_ref().trim().to_string();
        if !is_hostname(&hostname) {
            c.problem(
                "server.hostname",
                &s.hostname,
                "must be a fully qualified host name such as gateway.example.org",
            );
        }
        let mut listen = Vec::new();
        if s.listen.get_ref().is_empty() {
            c.problem(
                "server.listen",
                &s.listen,
                "needs at least one address, e.g. [\"0.0.0.0:25\"]",
            );
        }
        for l in s.listen.get_ref() {
            match l.get_ref().parse::<SocketAddr>() {
                Ok(a) => listen.push(a),
                Err(_) => c.problem(
                    "server.listen",
                    l,
                    format!("`{}` is not an ip:port address", l.get_ref()),
                ),
            }
        }
        let spool_dir = c.path(&base, &s.spool_dir);
        let spool_key_file = c.path(&base, &s.spool_key_file);
        let control_socket = s
            .control_socket
            .as_ref()
            .map(|v| c.path(&base, v))
            .unwrap_or_else(|| spool_dir.join("control.sock"));
        let spool_reserve = c.size(
            "server.spool_reserve",
            &s.spool_reserve,
            super::DEFAULT_SPOOL_RESERVE,
        );
        let d = Limits::default();
        let limits = Limits {
            max_message_size: c.size(
                "server.max_message_size",
                &s.max_message_size,
                d.max_message_size,
            ),
            max_recipients: c.count(
                "server.max_recipients",
                &s.max_recipients,
                d.max_recipients,
                100_000,
            ),
            max_command_line: c.count(
                "server.max_command_line",
                &s.max_command_line,
                d.max_command_line,
                1 << 20,
            ),
            max_line_length: c.count(
                "server.max_line_length",
                &s.max_line_length,
                d.max_line_length,
                1 << 24,
            ),
            max_header_size: c.size(
                "server.max_header_size",
                &s.max_header_size,
                d.max_header_size as u64,
            ) as usize,
            max_received_headers: c.count(
                "server.max_received_headers",
                &s.max_received_headers,
                d.max_received_headers,
                1000,
            ),
            command_timeout: c.duration(
                "server.command_timeout",
                &s.command_timeout,
                d.command_timeout,
            ),
            data_timeout: c.duration("server.data_timeout", &s.data_timeout, d.data_timeout),
            max_sessions: c.count(
                "server.max_sessions",
                &s.max_sessions,
                d.max_sessions,
                1_000_000,
            ),
            max_sessions_per_ip: c.count(
                "server.max_sessions_per_ip",
                &s.max_sessions_per_ip,
                d.max_sessions_per_ip,
                1_000_000,
            ),
            max_errors: c.count("server.max_errors", &s.max_errors, d.max_errors, 10_000),
        };
        if limits.max_command_line < 512 {
            if let Some(v) = &s.max_command_line {
                c.problem(
                    "server.max_command_line",
                    v,
                    "must be at least 512 (RFC 5321 section 4.5.3.1.4)",
                );
            }
        }
        if limits.max_line_length < 1000 {
            if let Some(v) = &s.max_line_length {
                c.problem(
                    "server.max_line_length",
                    v,
                    "must be at least 1000 (RFC 5321 section 4.5.3.1.6)",
                );
            }
        }
        let tls = s.tls.as_ref().map(|t| TlsFiles {
            cert: c.existing_file("server.tls.cert", &base, &t.cert),
            key: c.existing_file("server.tls.key", &base, &t.key),
        });
        let mut users = Vec::new();
        for u in &s.users {
            let name = u.name.get_ref().clone();
            if name.is_empty() || name.chars().any(|ch| ch.is_control()) {
                c.problem(
                    "server.users.name",
                    &u.name,
                    "must be a non-empty name without control characters",
                );
            }
            if argon2::PasswordHash::new(u.password_hash.get_ref()).is_err() {
                c.problem(
                    "server.users.password_hash",
                    &u.password_hash,
                    "is not an argon2 hash; create one with `sealgate hash-password`",
                );
            }
            if users.iter().any(|x: &AuthUser| x.name == name) {
                c.problem(
                    "server.users.name",
                    &u.name,
                    format!("user `{name}` is listed twice"),
                );
            }
            users.push(AuthUser {
                name,
                password_hash: u.password_hash.get_ref().clone(),
            });
        }
        if !users.is_empty() && tls.is_none() {
            c.problem(
                "server.users",
                &s.hostname,
                "AUTH is offered only after STARTTLS, so [[server.users]] needs [server.tls]",
            );
        }

        let mut allow_networks = Vec::new();
        for n in &self.relay.allow_networks {
            let t = n.get_ref().trim();
            let parsed = t
                .parse::<IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => allow_networks.push(net),
                Err(_) => c.problem(
                    "relay.allow_networks",
                    n,
                    format!("`{t}` is not a network such as 10.0.0.0/8 or 2001:db8::/32"),
                ),
            }
        }

        let dl = &self.delivery;
        let smarthost = dl
            .smarthost
            .as_ref()
            .and_then(|v| match split_host_port(v.get_ref()) {
                Some(hp) => Some(hp),
                None => {
                    c.problem(
                        "delivery.smarthost",
                        v,
                        "must be host:port, e.g. relay.example.net:587",
                    );
                    None
                }
            });
        let smarthost_auth = dl.smarthost_auth.as_ref().map(|a| SmarthostAuth {
            username: a.username.get_ref().clone(),
            password_file: c.existing_file(
                "delivery.smarthost_auth.password_file",
                &base,
                &a.password_file,
            ),
        });
        if let (Some(_), None) = (&smarthost_auth, &smarthost) {
            if let Some(a) = &dl.smarthost_auth {
                c.problem(
                    "delivery.smarthost_auth",
                    &a.username,
                    "is set but delivery.smarthost is not",
                );
            }
        }
        let port = match &dl.port {
            None => 25,
            Some(p) => {
                let n = *p.get_ref();
                if !(1..=65535).contains(&n) {
                    c.problem("delivery.port", p, "must be a port between 1 and 65535");
                    25
                } else {
                    n as u16
                }
            }
        };
        let helo_name = dl
            .helo_name
            .as_ref()
            .map(|h| h.get_ref().clone())
            .unwrap_or_else(|| hostname.clone());
        let delivery = DeliverySettings {
            smarthost,
            smarthost_auth,
            port,
            helo_name,
            connect_timeout: c.duration(
                "delivery.connect_timeout",
                &dl.connect_timeout,
                Duration::from_secs(30),
            ),
            command_timeout: c.duration(
                "delivery.command_timeout",
                &dl.command_timeout,
                Duration::from_secs(300),
            ),
            data_timeout: c.duration(
                "delivery.data_timeout",
                &dl.data_timeout,
                Duration::from_secs(600),
            ),
            max_connections: c.count(
                "delivery.max_connections",
                &dl.max_connections,
                100,
                100_000,
            ),
            max_connections_per_host: c.count(
                "delivery.max_connections_per_host",
                &dl.max_connections_per_host,
                10,
                10_000,
            ),
            idle_timeout: c.duration(
                "delivery.idle_timeout",
                &dl.idle_timeout,
                Duration::from_secs(30),
            ),
        };

        let q = &self.queue;
        let queue = QueueSettings {
            retry_base: c.duration("queue.retry_base", &q.retry_base, Duration::from_secs(60)),
            retry_max: c.duration("queue.retry_max", &q.retry_max, Duration::from_secs(3600)),
            max_age: c.duration("queue.max_age", &q.max_age, Duration::from_secs(5 * 86400)),
            max_active: c.count("queue.max_active", &q.max_active, 200, 100_000),
            max_window: c.count("queue.max_window", &q.max_window, 10_000, 10_000_000),
            scan_interval: c.duration(
                "queue.scan_interval",
                &q.scan_interval,
                Duration::from_secs(5),
            ),
        };

        let mut nameservers = Vec::new();
        for n in &self.dns.nameservers {
            let t = n.get_ref().trim();
            let parsed = t.parse::<SocketAddr>().or_else(|_| {
                t.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Ok(a) => nameservers.push(a),
                Err(_) => c.problem(
                    "dns.nameservers",
                    n,
                    format!("`{t}` is not an ip or ip:port"),
                ),
            }
        }
        let dns = DnsSettings {
            nameservers,
            trust_anchor: self
                .dns
                .trust_anchor
                .as_ref()
                .map(|t| c.existing_file("dns.trust_anchor", &base, t)),
            timeout: c.duration("dns.timeout", &self.dns.timeout, Duration::from_secs(5)),
        };
        let tls_trust = TlsTrust {
            extra_ca: self
                .tls
                .extra_ca
                .iter()
                .map(|p| c.existing_file("tls.extra_ca", &base, p))
                .collect(),
        };

        let database_url = match &self.audit.database_url {
            None => sqlite_url(&spool_dir.join("audit.db")),
            Some(u) => {
                let t = u.get_ref().trim();
                if let Some(rest) = t.strip_prefix("sqlite:") {
                    let rest = rest.trim_start_matches("//");
                    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
                    if path.is_empty() {
                        c.problem("audit.database_url", u, "sqlite URL needs a file path, e.g. sqlite:///var/lib/sealgate/audit.db");
                    }
                    let p = Path::new(path);
                    let abs = if p.is_absolute() || path == ":memory:" {
                        p.to_path_buf()
                    } else {
                        base.join(p)
                    };
                    if query.is_empty() {
                        sqlite_url(&abs)
                    } else {
                        format!("sqlite://{}?{query}", abs.display())
                    }
                } else if t.starts_with("postgres://") || t.starts_with("postgresql://") {
                    t.to_string()
                } else {
                    c.problem(
                        "audit.database_url",
                        u,
                        "must start with sqlite:// or postgres://",
                    );
                    t.to_string()
                }
            }
        };
        let audit = AuditConfig {
            database_url,
            journal_dir: self
                .audit
                .journal_dir
                .as_ref()
                .map(|j| c.path(&base, j))
                .unwrap_or_else(|| spool_dir.join("audit-journal")),
        };

        let mut files = Vec::new();
        for f in &self.policy.files {
            let pattern = c.path(&base, f).to_string_lossy().into_owned();
            if glob::Pattern::new(&pattern).is_err() {
                c.problem(
                    "policy.files",
                    f,
                    format!("`{}` is not a valid glob pattern", f.get_ref()),
                );
            }
            files.push(pattern);
        }

        let probe = ProbeSettings {
            timeout: c.duration(
                "probe.timeout",
                &self.probe.timeout,
                Duration::from_secs(15),
            ),
            cache_ttl: c.duration(
                "probe.cache_ttl",
                &self.probe.cache_ttl,
                Duration::from_secs(600),
            ),
        };

        let tr = &self.tls_report;
        let tls_report = TlsReportSettings {
            enabled: tr.enabled.unwrap_or(true),
            organization: tr
                .organization
                .as_ref()
                .map(|o| o.get_ref().clone())
                .unwrap_or_else(|| hostname.clone()),
            contact: tr
                .contact
                .as_ref()
                .map(|o| o.get_ref().clone())
                .unwrap_or_else(|| format!("postmaster@{hostname}")),
            period: c.duration("tls_report.period", &tr.period, Duration::from_secs(86400)),
        };

        let pg = &self.pgp;
        let mut sources = Vec::new();
        for src in pg.sources.iter().flatten() {
            match src.get_ref().as_str() {
                "local" | "wkd" | "dns" | "keyserver" => sources.push(src.get_ref().clone()),
                other => c.problem(
                    "pgp.sources",
                    src,
                    format!("unknown key source `{other}` (local, wkd, dns, keyserver)"),
                ),
            }
        }
        if pg.sources.is_none() {
            sources = vec!["local".into(), "wkd".into(), "dns".into()];
        }
        let hold_changed = match pg.key_change.as_ref().map(|k| (k, k.get_ref().as_str())) {
            None | Some((_, "hold")) => true,
            Some((_, "use")) => false,
            Some((k, other)) => {
                c.problem("pgp.key_change", k, format!("`{other}` is not hold or use"));
                true
            }
        };
        let signing_keys = pg
            .signing_keys
            .iter()
            .map(|(domain, path)| {
                (
                    domain.to_ascii_lowercase(),
                    c.existing_file("pgp.signing_keys", &base, path),
                )
            })
            .collect();
        let additional_decryption_key = pg
            .additional_decryption_key
            .as_ref()
            .map(|p| c.existing_file("pgp.additional_decryption_key", &base, p));
        if sources.iter().any(|s| s == "keyserver") && pg.keyserver.is_none() {
            if let Some(list) = &pg.sources {
                if let Some(first) = list.iter().find(|s| s.get_ref() == "keyserver") {
                    c.problem("pgp.sources", first, "the keyserver source needs pgp.keyserver (a VKS host such as keys.openpgp.org)");
                }
            }
        }
        let pgp = PgpSettings {
            subject_placeholder: pg
                .subject_placeholder
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_else(|| "...".into()),
            sources,
            hold_changed,
            signing_keys,
            additional_decryption_key,
            keyserver: pg
                .keyserver
                .as_ref()
                .map(|k| k.get_ref().trim().to_string()),
        };

        if !c.problems.is_empty() {
            return Err(ConfigError(c.problems));
        }
        Ok(Settings {
            source: file.to_path_buf(),
            server: ServerSettings {
                hostname,
                listen,
                spool_dir,
                spool_key_file,
                spool_reserve,
                control_socket,
                tls,
                users,
                limits,
            },
            relay: RelaySettings { allow_networks },
            delivery,
            queue,
            dns,
            tls: tls_trust,
            audit,
            policy: PolicyFiles { files },
            probe,
            tls_report,
            pgp,
        })
    }
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// `host:port` or `[v6]:port`.
pub(crate) fn split_host_port(s: &str) -> Option<(String, u16)> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        s.rsplit_once(':')?
    };
    let port: u16 = port.parse().ok()?;
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}

/// A plausible DNS host name (letters, digits, hyphens; at least two labels).
pub fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        })
}
