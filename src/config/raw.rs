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
    /// `[portal]`: the secure web portal (absent: no portal).
    pub portal: Option<RawPortal>,
}

/// `[portal]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPortal {
    /// Address the portal's web server listens on (`127.0.0.1:8443`).
    pub listen: Spanned<String>,
    /// The address recipients open, the base of every pickup link
    /// (`https://secure.example.org`).
    pub public_url: Spanned<String>,
    /// Key file wrapping every stored message's data key (created with
    /// `sealgate keygen --out FILE`, like the spool key).
    pub master_key_file: Spanned<String>,
    /// Wrap data keys under the pickup token too (default false).
    pub link_bound: Option<bool>,
    /// How long a stored message can be picked up (`30d`).
    pub expiry: Option<Spanned<String>>,
    /// The organisation named in notifications and pages (default:
    /// `tls_report.organization`, else `server.hostname`).
    pub organization: Option<Spanned<String>>,
    /// Subject of the notification mail (default: "Secure message from
    /// ORGANIZATION"); never the original's.
    pub subject: Option<Spanned<String>>,
}

/// `[pgp]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPgp {
    /// Outer Subject of encrypted mail (RFC 9788; default "[...]").
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
    /// How often cached MTA-STS policies are checked for a refresh before
    /// they expire (`1h`).
    pub mta_sts_refresh: Option<Spanned<String>>,
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
    /// Idle time allowed between reads inside DATA (`10m`).
    pub data_timeout: Option<Spanned<String>>,
    /// Longest the whole DATA phase may take, however slowly the client
    /// sends (`10m`); then `421 4.4.2` and the session closes.
    pub data_phase_timeout: Option<Spanned<String>>,
    /// Longest one SMTP session may last, whatever it does (`30m`); then
    /// `421 4.4.2` and the session closes.
    pub session_timeout: Option<Spanned<String>>,
    /// Concurrent SMTP sessions (default 500).
    pub max_sessions: Option<Spanned<i64>>,
    /// Concurrent SMTP sessions from one IP address (default 100).
    pub max_sessions_per_ip: Option<Spanned<i64>>,
    /// Bad commands before the session is closed (default 10).
    pub max_errors: Option<Spanned<i64>>,
    /// NOOP, RSET, HELO/EHLO, VRFY, EXPN, HELP and unknown commands allowed
    /// since the last accepted message (default 30); one more gets
    /// `421 4.7.0` and the session closes (like Postfix's
    /// `smtpd_junk_command_limit`).
    pub max_junk_commands: Option<Spanned<i64>>,
    /// Failed AUTH attempts from one client address (an IPv6 client by its
    /// /64) within `auth_lockout` before AUTH is refused to it with
    /// `454 4.7.0` for `auth_lockout` (default 5).
    pub auth_max_failures: Option<Spanned<i64>>,
    /// Failed AUTH attempts from all clients together within
    /// `auth_lockout` before AUTH is refused to everyone for
    /// `auth_lockout` (default 100).
    pub auth_max_failures_total: Option<Spanned<i64>>,
    /// Window in which failed AUTH attempts are counted, and how long a
    /// lockout lasts (`15m`).
    pub auth_lockout: Option<Spanned<String>>,
    /// argon2 password checks running at once (default 4; each takes
    /// about 19 MiB and one core while it runs).
    pub auth_max_verifications: Option<Spanned<i64>>,
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
    /// Never a shared cloud's ranges: those send for every tenant.
    #[serde(default)]
    pub allow_networks: Vec<Spanned<String>>,
    /// Accept `%` and `!` in local parts (`user%host@gw`, `host!user@gw`)
    /// for old systems that still write them (default false: refused with
    /// 553). They are never routed: the address goes to its domain.
    pub allow_percent_hack: Option<bool>,
    /// `[[relay.connectors]]`: cloud connectors that may relay with a
    /// verified client certificate, bound to a tenant.
    #[serde(default)]
    pub connectors: Vec<RawConnector>,
}

/// `[[relay.connectors]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnector {
    /// Name in logs and in the queued message's client record (audit).
    pub name: Spanned<String>,
    /// Names the client certificate must carry as subject CN or DNS SAN:
    /// `host.example.org`, or `*.example.org` for one label in front.
    pub client_cert_names: Spanned<Vec<Spanned<String>>>,
    /// PEM files or folders (`*.pem`, `*.crt`) of the CAs the client
    /// certificate must chain to.
    pub client_cert_roots: Spanned<Vec<Spanned<String>>>,
    /// Microsoft 365 tenant id (a GUID) every message must carry in
    /// `X-MS-Exchange-CrossTenant-Id`.
    pub tenant_id: Option<Spanned<String>>,
    /// Organisation domain every message must carry in `X-OriginatorOrg`.
    pub originator_org: Option<Spanned<String>>,
    /// The roots issue certificates to this organisation alone (a private
    /// CA), so no tenant check is needed (default false).
    pub private_ca: Option<Spanned<bool>>,
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
    /// The least TLS the smarthost must meet (`verified`).
    pub smarthost_min_tls: Option<Spanned<String>>,
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
        // Open it, as the daemon will: a file that exists but cannot be
        // read (permissions) is as useless as a missing one.
        let problem = match std::fs::File::open(&p).and_then(|f| f.metadata()) {
            Ok(meta) if meta.is_file() => None,
            Ok(_) => Some(format!("{} is not a file", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some(format!("file {} does not exist", p.display()))
            }
            Err(e) => Some(format!("cannot read file {}: {e}", p.display())),
        };
        if let Some(message) = problem {
            self.problem(key, v, message);
        }
        p
    }
}

impl RawConfig {
    /// Validates every value and turns the file into runtime [`Settings`];
    /// all problems are reported together.
    pub fn build(self, file: &Path, text: &str) -> Result<Settings, ConfigError> {
        match self.build_all(file, text) {
            (s, problems) if problems.is_empty() => Ok(s),
            (_, problems) => Err(ConfigError(problems)),
        }
    }

    /// Like [`RawConfig::build`], but always returns settings (a bad value
    /// replaced by its default) next to the problems, so that the files
    /// the settings name can still be checked.
    pub fn build_all(self, file: &Path, text: &str) -> (Settings, Vec<ConfigProblem>) {
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
            data_phase_timeout: c.duration(
                "server.data_phase_timeout",
                &s.data_phase_timeout,
                d.data_phase_timeout,
            ),
            session_timeout: c.duration(
                "server.session_timeout",
                &s.session_timeout,
                d.session_timeout,
            ),
            max_junk_commands: c.count(
                "server.max_junk_commands",
                &s.max_junk_commands,
                d.max_junk_commands,
                100_000,
            ),
        };
        let da = AuthLimits::default();
        let auth = AuthLimits {
            max_failures: c.count(
                "server.auth_max_failures",
                &s.auth_max_failures,
                da.max_failures as usize,
                10_000,
            ) as u32,
            max_failures_total: c.count(
                "server.auth_max_failures_total",
                &s.auth_max_failures_total,
                da.max_failures_total as usize,
                10_000_000,
            ) as u32,
            lockout: c.duration("server.auth_lockout", &s.auth_lockout, da.lockout),
            max_verifications: c.count(
                "server.auth_max_verifications",
                &s.auth_max_verifications,
                da.max_verifications,
                1024,
            ),
        };
        if let Some(total) = &s.auth_max_failures_total
            && auth.max_failures_total < auth.max_failures
        {
            c.problem(
                "server.auth_max_failures_total",
                total,
                "must be at least server.auth_max_failures",
            );
        }
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

        let connectors = connectors(&mut c, &base, &self.relay.connectors, tls.is_some());

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
        let smarthost_min_tls = match &dl.smarthost_min_tls {
            None => SmarthostTls::Verified,
            Some(v) => SmarthostTls::parse(v.get_ref()).unwrap_or_else(|| {
                c.problem(
                    "delivery.smarthost_min_tls",
                    v,
                    "must be opportunistic, encrypted, verified or dane",
                );
                SmarthostTls::Verified
            }),
        };
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
            smarthost_min_tls,
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
            mta_sts_refresh: c.duration(
                "probe.mta_sts_refresh",
                &self.probe.mta_sts_refresh,
                Duration::from_secs(3600),
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
                .unwrap_or_else(|| "[...]".into()),
            sources,
            hold_changed,
            signing_keys,
            additional_decryption_key,
            keyserver: pg
                .keyserver
                .as_ref()
                .map(|k| k.get_ref().trim().to_string()),
        };

        let portal = self
            .portal
            .as_ref()
            .map(|p| portal_settings(&mut c, &base, p, &tls_report.organization));

        let settings = Settings {
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
                auth,
            },
            relay: RelaySettings {
                allow_networks,
                allow_percent_hack: self.relay.allow_percent_hack.unwrap_or(false),
                connectors,
            },
            delivery,
            queue,
            dns,
            tls: tls_trust,
            audit,
            policy: PolicyFiles { files },
            probe,
            tls_report,
            pgp,
            portal,
            origins: Origins::default(),
        };
        (settings, c.problems)
    }
}

/// Certificate names of clouds that present one certificate for every
/// customer: a connector naming them is bound to nobody unless a tenant
/// check comes with it.
/// (Microsoft's worldwide cloud, GCC High and DoD, and the one operated
/// by 21Vianet in China.)
const MICROSOFT_365: &[&str] = &["outlook.com", "office365.com", "office365.us", "outlook.cn"];

/// Google presents one certificate for every customer and stamps no
/// tenant header we could trust, so a certificate is never enough there.
const GOOGLE: &[&str] = &["google.com", "gmail.com", "googlemail.com"];

fn under(pattern: &CertNamePattern, domains: &[&str]) -> bool {
    let (CertNamePattern::Exact(n) | CertNamePattern::Wildcard(n)) = pattern;
    domains
        .iter()
        .any(|d| n == d || n.ends_with(&format!(".{d}")))
}

/// Validates `[[relay.connectors]]`.
fn connectors(
    c: &mut Check,
    base: &Path,
    raw: &[RawConnector],
    has_tls: bool,
) -> Vec<ConnectorSettings> {
    let mut out: Vec<ConnectorSettings> = Vec::new();
    for r in raw {
        let name = r.name.get_ref().trim().to_string();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            c.problem(
                "relay.connectors.name",
                &r.name,
                "must be a non-empty name of letters, digits, `.`, `_` and `-`",
            );
        }
        if out.iter().any(|x| x.name == name) {
            c.problem(
                "relay.connectors.name",
                &r.name,
                format!("connector `{name}` is listed twice"),
            );
        }
        if !has_tls && out.is_empty() {
            c.problem(
                "relay.connectors",
                &r.name,
                "needs [server.tls]: the client certificate is asked for during STARTTLS",
            );
        }
        let connector = ConnectorSettings {
            name,
            cert_names: connector_names(c, r),
            cert_roots: connector_roots(c, base, r),
            tenant_id: connector_tenant(c, r),
            originator_org: connector_org(c, r),
            private_ca: r.private_ca.as_ref().is_some_and(|p| *p.get_ref()),
        };
        connector_is_bound(c, r, &connector);
        out.push(connector);
    }
    out
}

fn connector_names(c: &mut Check, r: &RawConnector) -> Vec<CertNamePattern> {
    const KEY: &str = "relay.connectors.client_cert_names";
    if r.client_cert_names.get_ref().is_empty() {
        c.problem(KEY, &r.client_cert_names, "needs at least one name");
    }
    let mut names = Vec::new();
    for n in r.client_cert_names.get_ref() {
        match CertNamePattern::parse(n.get_ref()) {
            Ok(p) => names.push(p),
            Err(e) => c.problem(KEY, n, e),
        }
    }
    names
}

fn connector_roots(c: &mut Check, base: &Path, r: &RawConnector) -> Vec<PathBuf> {
    const KEY: &str = "relay.connectors.client_cert_roots";
    if r.client_cert_roots.get_ref().is_empty() {
        c.problem(
            KEY,
            &r.client_cert_roots,
            "needs at least one PEM file or folder of CA certificates",
        );
    }
    let mut roots = Vec::new();
    for f in r.client_cert_roots.get_ref() {
        let p = c.path(base, f);
        if !p.is_file() && !p.is_dir() {
            c.problem(
                KEY,
                f,
                format!(
                    "{} does not exist or is not a readable file or folder",
                    p.display()
                ),
            );
        }
        roots.push(p);
    }
    roots
}

fn connector_tenant(c: &mut Check, r: &RawConnector) -> Option<String> {
    let t = r.tenant_id.as_ref()?;
    let v = t.get_ref().trim();
    if !super::connector::is_tenant_id(v) {
        c.problem(
            "relay.connectors.tenant_id",
            t,
            format!("`{v}` is not a tenant id such as 72f988bf-86f1-41af-91ab-2d7cd011db47"),
        );
    }
    Some(v.to_ascii_lowercase())
}

fn connector_org(c: &mut Check, r: &RawConnector) -> Option<String> {
    let o = r.originator_org.as_ref()?;
    let v = o.get_ref().trim();
    let v = v.strip_suffix('.').unwrap_or(v).to_ascii_lowercase();
    if !is_hostname(&v) {
        c.problem(
            "relay.connectors.originator_org",
            o,
            format!("`{v}` is not a domain such as hospital.example.org"),
        );
    }
    Some(v)
}

/// Refuses connectors that a shared cloud's other customers could pass.
fn connector_is_bound(c: &mut Check, r: &RawConnector, connector: &ConnectorSettings) {
    if connector.cert_names.iter().any(|p| under(p, GOOGLE)) {
        c.problem(
            "relay.connectors.client_cert_names",
            &r.client_cert_names,
            "Google presents the same certificate for every customer and no tenant header \
             that sealgate can trust; use SMTP AUTH ([[server.users]]) for Google's SMTP relay",
        );
    }
    let private = connector.private_ca;
    if connector.cert_names.iter().any(|p| under(p, MICROSOFT_365)) && !connector.checks_tenant() {
        c.problem(
            "relay.connectors",
            &r.name,
            "names a Microsoft 365 certificate, which every Microsoft 365 customer presents: \
             set tenant_id (and/or originator_org) to bind it to your organisation",
        );
    } else if !connector.checks_tenant() && !private {
        // Any public CA's certificate for a shared service (a cloud mail
        // filter, another cloud) is presented for all its customers.
        c.problem(
            "relay.connectors",
            &r.name,
            "has no tenant check: set tenant_id (and/or originator_org), or, if its \
             client_cert_roots issue certificates to your organisation alone (a private CA), \
             set private_ca = true",
        );
    }
}

/// The longest `[portal] expiry` (ten years).
const MAX_PORTAL_EXPIRY: Duration = Duration::from_secs(3650 * 86400);

fn portal_settings(
    c: &mut Check,
    base: &Path,
    p: &RawPortal,
    default_organization: &str,
) -> PortalSettings {
    let listen = match p.listen.get_ref().parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            c.problem(
                "portal.listen",
                &p.listen,
                format!("`{}` is not an ip:port address", p.listen.get_ref()),
            );
            SocketAddr::from(([127, 0, 0, 1], 8443))
        }
    };
    let public_url = p
        .public_url
        .get_ref()
        .trim()
        .trim_end_matches('/')
        .to_string();
    if let Err(why) = check_public_url(&public_url) {
        c.problem("portal.public_url", &p.public_url, why);
    }
    let mut expiry = c.duration("portal.expiry", &p.expiry, Duration::from_secs(30 * 86400));
    if expiry > MAX_PORTAL_EXPIRY {
        if let Some(e) = &p.expiry {
            c.problem("portal.expiry", e, "must be at most 3650d");
        }
        expiry = MAX_PORTAL_EXPIRY;
    }
    PortalSettings {
        listen,
        public_url,
        master_key_file: c.existing_file("portal.master_key_file", base, &p.master_key_file),
        link_bound: p.link_bound.unwrap_or(false),
        expiry,
        organization: header_text(c, "portal.organization", &p.organization)
            .unwrap_or_else(|| default_organization.to_string()),
        subject: header_text(c, "portal.subject", &p.subject),
    }
}

/// The longest organisation name or subject in `[portal]`.
const MAX_HEADER_TEXT: usize = 200;

/// A value that goes into a mail header: one line of text, not empty.
fn header_text(c: &mut Check, key: &str, v: &Option<Spanned<String>>) -> Option<String> {
    let v = v.as_ref()?;
    let text = v.get_ref().trim();
    if text.is_empty() || text.chars().any(char::is_control) || text.len() > MAX_HEADER_TEXT {
        c.problem(
            key,
            v,
            format!(
                "must be one line of text, 1 to {MAX_HEADER_TEXT} bytes, without control characters"
            ),
        );
        return None;
    }
    Some(text.to_string())
}

/// A pickup link's base: `https://host[:port][/path]`, or `http://` for a
/// loopback host only (a link in mail must not send a token in clear over
/// a network); no query or fragment.
pub(super) fn check_public_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("`{url}` is not a URL such as https://secure.example.org"))?;
    let host = uri.host().ok_or_else(|| format!("`{url}` names no host"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("`{url}` must not carry a user name or password"));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(format!("`{url}` must not have a query or fragment"));
    }
    // The path goes into every link, mail and page: plain characters only.
    let path = uri.path();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._~/".contains(c);
    let bad_segment = |seg: &str| seg.is_empty() || seg == "." || seg == "..";
    let segments_ok = path == "/" || !path.split('/').skip(1).any(bad_segment);
    if !path.chars().all(plain) || !segments_ok {
        return Err(format!(
            "`{url}`: the path may hold only letters, digits and - . _ ~ / (no escapes, no empty, . or .. segments)"
        ));
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if matches!(host, "127.0.0.1" | "localhost" | "[::1]") => Ok(()),
        Some("http") => Err(format!(
            "`{url}` must be https: pickup links carry a secret (http only for a loopback host)"
        )),
        _ => Err(format!("`{url}` must start with https://")),
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
