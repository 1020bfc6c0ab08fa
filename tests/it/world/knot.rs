//! A DNSSEC world that shares no code with sealgate: zones signed by BIND's
//! `dnssec-signzone` (keys from `dnssec-keygen`, DS records from
//! `dnssec-dsfromkey`), served by Knot DNS's `knotd`, and checked by BIND's
//! `delv`, an independent validator.
//!
//! The world is a real delegation chain: the root zone `.` holds the DS of
//! `test.`, `test.` holds the DS of each domain below it (any zone may have
//! children: the parent of a zone is the closest enclosing zone of the
//! world). One `knotd` is authoritative for all of them on a loopback
//! address and a random port, so a stub resolver (sealgate's, with its own
//! validation) gets every answer from it, DS queries from the parent zone.
//! The root KSK's `.key` file is the trust anchor (`[dns] trust_anchor`).
//!
//! Zones are signed once at start, so everything they hold (TLSA digests,
//! the delivery port in TLSA owner names) must be known before
//! [`KnotWorldBuilder::start`]. Each zone picks its algorithm (8 or 13), its
//! denial of existence (NSEC, NSEC3, NSEC3 with opt-out) and how it is
//! signed ([`Signing`]), which makes broken and insecure domains.
//!
//! Debian packages: `knot` (knotd), `knot-dnsutils` (kdig), `bind9-utils`
//! (dnssec-keygen, dnssec-signzone, dnssec-dsfromkey), `bind9-dnsutils`
//! (delv).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// DNSSEC signing algorithm (RFC 8624 numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// 8: RSA/SHA-256 (2048-bit keys).
    RsaSha256,
    /// 13: ECDSA P-256/SHA-256.
    EcdsaP256Sha256,
    /// 5: RSA/SHA-1 (deprecated, RFC 8624: MUST NOT sign, validators may
    /// still validate).
    RsaSha1,
    /// 7: RSASHA1-NSEC3-SHA1 (as 5, for NSEC3 zones).
    RsaSha1Nsec3,
    /// 15: Ed25519.
    Ed25519,
    /// 16: Ed448, which hickory does not implement: a zone signed only
    /// with it is insecure to sealgate (RFC 6840 section 5.2), secure to
    /// `delv`.
    Ed448,
}

impl Alg {
    pub fn number(self) -> u8 {
        match self {
            Alg::RsaSha256 => 8,
            Alg::EcdsaP256Sha256 => 13,
            Alg::RsaSha1 => 5,
            Alg::RsaSha1Nsec3 => 7,
            Alg::Ed25519 => 15,
            Alg::Ed448 => 16,
        }
    }

    fn keygen_args(self) -> &'static [&'static str] {
        match self {
            Alg::RsaSha256 => &["-a", "RSASHA256", "-b", "2048"],
            Alg::EcdsaP256Sha256 => &["-a", "ECDSAP256SHA256"],
            Alg::RsaSha1 => &["-a", "RSASHA1", "-b", "2048"],
            Alg::RsaSha1Nsec3 => &["-a", "NSEC3RSASHA1", "-b", "2048"],
            Alg::Ed25519 => &["-a", "ED25519"],
            Alg::Ed448 => &["-a", "ED448"],
        }
    }
}

/// Authenticated denial of existence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    Nsec,
    /// NSEC3, no salt, 0 extra iterations (RFC 9276).
    Nsec3,
    /// NSEC3 with opt-out: insecure delegations are covered by an opt-out
    /// span instead of a matching NSEC3 (as in most large TLDs).
    Nsec3OptOut,
}

/// How a zone is signed, and what its parent says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    /// Signed, and the parent holds the DS of its KSK: secure.
    Secure,
    /// Signed, but the parent's DS is of another key (a zone re-signed with
    /// a key whose DS never reached the parent): bogus.
    WrongKey,
    /// Signed with signatures whose validity ended a day ago: bogus.
    Expired,
    /// The parent holds a DS, the zone is served unsigned (signatures
    /// stripped on the way): bogus.
    Stripped,
    /// Unsigned, and the parent proves there is no DS: insecure.
    Unsigned,
}

/// One zone of the world.
#[derive(Clone, Debug)]
pub struct ZoneSpec {
    /// Fully qualified, lowercase (`.`, `test.`, `dane.test.`).
    pub origin: String,
    pub alg: Alg,
    pub denial: Denial,
    pub signing: Signing,
    /// Zone file lines (owners relative to the origin, or absolute).
    pub records: Vec<String>,
    /// More algorithms the zone is signed with, each with its own KSK and
    /// ZSK; the parent holds a DS for every KSK (RFC 6840 section 5.11:
    /// one algorithm a validator implements is enough).
    pub extra_algs: Vec<Alg>,
    /// RRsets `(owner, type)` whose signatures are replaced by ones whose
    /// validity ended a day ago (same keys): the rest of the zone stays
    /// secure, these RRsets are bogus.
    pub expired_rrsets: Vec<(String, String)>,
}

fn fqdn(name: &str) -> String {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    if n.is_empty() {
        ".".into()
    } else {
        format!("{n}.")
    }
}

fn labels(origin: &str) -> usize {
    origin
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .count()
}

/// Whether `name` is `zone` or below it (both fully qualified).
fn in_zone(name: &str, zone: &str) -> bool {
    zone == "." || name == zone || name.ends_with(&format!(".{zone}"))
}

impl ZoneSpec {
    /// A secure zone, algorithm 13, NSEC, holding only its apex records.
    pub fn new(origin: &str) -> Self {
        ZoneSpec {
            origin: fqdn(origin),
            alg: Alg::EcdsaP256Sha256,
            denial: Denial::Nsec,
            signing: Signing::Secure,
            records: Vec::new(),
            extra_algs: Vec::new(),
            expired_rrsets: Vec::new(),
        }
    }

    /// Also signs with `alg` (a second KSK and ZSK, DS in the parent).
    pub fn also_alg(mut self, alg: Alg) -> Self {
        self.extra_algs.push(alg);
        self
    }

    /// Makes the signatures of `owner rtype` expired (see
    /// [`ZoneSpec::expired_rrsets`]).
    pub fn expire_rrsig(mut self, owner: &str, rtype: &str) -> Self {
        self.expired_rrsets
            .push((fqdn(owner), rtype.to_ascii_uppercase()));
        self
    }

    pub fn alg(mut self, alg: Alg) -> Self {
        self.alg = alg;
        self
    }

    pub fn denial(mut self, denial: Denial) -> Self {
        self.denial = denial;
        self
    }

    pub fn signing(mut self, signing: Signing) -> Self {
        self.signing = signing;
        self
    }

    /// A zone-file line, e.g. `"www A 127.0.0.1"`.
    pub fn record(mut self, line: impl Into<String>) -> Self {
        self.records.push(line.into());
        self
    }

    pub fn mx(self, preference: u16, host: &str) -> Self {
        let line = format!("@ MX {preference} {}", fqdn(host));
        self.record(line)
    }

    pub fn a(self, name: &str, ip: Ipv4Addr) -> Self {
        let line = format!("{} A {ip}", fqdn(name));
        self.record(line)
    }

    pub fn tlsa(self, owner: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) -> Self {
        let line = format!(
            "{} TLSA {usage} {selector} {matching} {}",
            fqdn(owner),
            hex::encode(data)
        );
        self.record(line)
    }

    /// The name of this zone's name server (in the zone, or for the root
    /// in `test.`, as glue).
    fn ns_name(&self) -> String {
        if self.origin == "." {
            "ns.test.".into()
        } else {
            format!("ns.{}", self.origin)
        }
    }
}

/// Builds and starts a [`KnotWorld`].
#[derive(Debug)]
pub struct KnotWorldBuilder {
    ip: Ipv4Addr,
    zones: Vec<ZoneSpec>,
}

impl KnotWorldBuilder {
    /// Adds (or replaces) a zone.
    pub fn zone(mut self, spec: ZoneSpec) -> Self {
        self.zones.retain(|z| z.origin != spec.origin);
        self.zones.push(spec);
        self
    }

    /// Signs every zone and starts `knotd`.
    pub fn start(self) -> Result<KnotWorld> {
        let started = Instant::now();
        ensure!(
            self.zones.iter().any(|z| z.origin == "."),
            "the world needs a root zone"
        );
        let dir = tempfile::Builder::new().prefix("knotworld").tempdir()?;
        for sub in ["keys", "zones", "run", "db"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let mut zones = self.zones.clone();
        // Children first: a parent needs its children's DS records.
        zones.sort_by_key(|z| std::cmp::Reverse(labels(&z.origin)));
        let parent_of = |origin: &str| -> Option<String> {
            zones
                .iter()
                .filter(|p| p.origin != origin && in_zone(origin, &p.origin))
                .max_by_key(|p| labels(&p.origin))
                .map(|p| p.origin.clone())
        };
        // Delegation lines (NS, glue, DS) each parent must carry.
        let mut delegations: Vec<(String, String)> = Vec::new();
        let mut root_ksk = None;
        for z in &zones {
            let signed = self.sign_zone(dir.path(), z, &delegations)?;
            if z.origin == "." {
                root_ksk = signed.ksk.clone();
                continue;
            }
            let parent =
                parent_of(&z.origin).with_context(|| format!("no parent zone for {}", z.origin))?;
            let mut lines = format!(
                "{} NS {}\n{} A {}\n",
                z.origin,
                z.ns_name(),
                z.ns_name(),
                self.ip
            );
            for ds_key in signed.ds_key.iter().chain(&signed.extra_ds_keys) {
                let ds = run("dnssec-dsfromkey", &["-2", &format!("{ds_key}.key")])?;
                lines.push_str(&ds);
            }
            delegations.push((parent, lines));
        }
        let root_ksk = root_ksk.context("the root zone must be signed")?;
        let trust_anchor = dir.path().join("root.key");
        std::fs::copy(format!("{root_ksk}.key"), &trust_anchor)?;
        let delv_anchor = dir.path().join("delv-anchor.conf");
        std::fs::write(&delv_anchor, delv_anchor_text(&trust_anchor)?)?;
        let signed_in = started.elapsed();

        let port = free_udp_tcp_port(self.ip)?;
        let addr = SocketAddr::from((self.ip, port));
        let conf = knot_conf(dir.path(), addr, &zones);
        let conf_path = dir.path().join("knot.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(dir.path().join("knotd.log"))?;
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting knotd (Debian package knot)")?;
        let mut world = KnotWorld {
            addr,
            trust_anchor,
            delv_anchor,
            origins: zones.iter().map(|z| z.origin.clone()).collect(),
            dir,
            child: Some(child),
        };
        world.wait_loaded(Duration::from_secs(20))?;
        eprintln!(
            "knot world on {addr}: {} zones signed in {signed_in:?}, serving after {:?}",
            zones.len(),
            started.elapsed()
        );
        Ok(world)
    }

    /// Writes and signs one zone; returns its key names.
    fn sign_zone(
        &self,
        dir: &Path,
        z: &ZoneSpec,
        delegations: &[(String, String)],
    ) -> Result<SignedZone> {
        let stem = if z.origin == "." {
            "root".to_string()
        } else {
            z.origin.trim_end_matches('.').to_string()
        };
        let mut text = String::new();
        writeln!(text, "$ORIGIN {}\n$TTL 60", z.origin)?;
        writeln!(
            text,
            "@ SOA {} hostmaster.{} 1 3600 600 86400 60",
            z.ns_name(),
            if z.origin == "." { "test." } else { &z.origin }
        )?;
        writeln!(text, "@ NS {}", z.ns_name())?;
        writeln!(text, "{} A {}", z.ns_name(), self.ip)?;
        for r in &z.records {
            writeln!(text, "{r}")?;
        }
        for (parent, lines) in delegations {
            if *parent == z.origin {
                text.push_str(lines);
            }
        }
        let keys = dir.join("keys").join(&stem);
        std::fs::create_dir_all(&keys)?;
        let keygen_alg = |alg: Alg, ksk: bool| -> Result<String> {
            let mut args: Vec<&str> = vec!["-q", "-K"];
            let k = keys.to_str().context("key folder is not UTF-8")?;
            args.push(k);
            args.extend(alg.keygen_args());
            if ksk {
                args.extend(["-f", "KSK"]);
            }
            args.push(&z.origin);
            let name = run("dnssec-keygen", &args)?;
            Ok(keys.join(name.trim()).display().to_string())
        };
        let keygen = |ksk: bool| keygen_alg(z.alg, ksk);
        let unsigned = dir.join("zones").join(format!("{stem}.zone"));
        let signed = dir.join("zones").join(format!("{stem}.signed"));
        let mut out = SignedZone {
            ksk: None,
            ds_key: None,
            extra_ds_keys: Vec::new(),
        };
        match z.signing {
            Signing::Unsigned => {
                std::fs::write(&unsigned, &text)?;
                std::fs::copy(&unsigned, &signed)?;
                return Ok(out);
            }
            Signing::Stripped => {
                std::fs::write(&unsigned, &text)?;
                std::fs::copy(&unsigned, &signed)?;
                out.ds_key = Some(keygen(true)?);
                return Ok(out);
            }
            _ => {}
        }
        let ksk = keygen(true)?;
        let zsk = keygen(false)?;
        let mut all_keys = vec![ksk.clone(), zsk];
        for alg in &z.extra_algs {
            let k = keygen_alg(*alg, true)?;
            out.extra_ds_keys.push(k.clone());
            all_keys.push(k);
            all_keys.push(keygen_alg(*alg, false)?);
        }
        for k in &all_keys {
            text.push_str(&std::fs::read_to_string(format!("{k}.key"))?);
        }
        std::fs::write(&unsigned, &text)?;
        let sign = |expired: bool, to: &Path| -> Result<()> {
            // -d: its dsset files go to the key folder, not the working
            // folder; -O full: one record a line.
            let mut args: Vec<String> = vec![
                "-q".into(),
                "-O".into(),
                "full".into(),
                "-d".into(),
                keys.display().to_string(),
            ];
            match z.denial {
                Denial::Nsec => {}
                Denial::Nsec3 => args.extend(["-3".into(), "-".into()]),
                Denial::Nsec3OptOut => args.extend(["-3".into(), "-".into(), "-A".into()]),
            }
            if expired {
                // -P: dnssec-signzone would refuse to verify what it signed.
                args.extend(
                    ["-P", "-s", "now-259200", "-e", "now-86400"]
                        .iter()
                        .map(|s| s.to_string()),
                );
            }
            args.extend(["-o".into(), z.origin.clone(), "-f".into()]);
            args.push(to.display().to_string());
            args.push(unsigned.display().to_string());
            args.extend(all_keys.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run("dnssec-signzone", &args)?;
            Ok(())
        };
        sign(z.signing == Signing::Expired, &signed)?;
        if !z.expired_rrsets.is_empty() {
            let old = dir.join("zones").join(format!("{stem}.expired"));
            sign(true, &old)?;
            splice_expired_rrsigs(&signed, &old, &z.expired_rrsets)?;
        }
        out.ds_key = Some(if z.signing == Signing::WrongKey {
            keygen(true)?
        } else {
            ksk.clone()
        });
        out.ksk = Some(ksk);
        Ok(out)
    }
}

struct SignedZone {
    /// Path stem (`.../Kname.+alg+tag`) of the KSK that signed the zone.
    ksk: Option<String>,
    /// The key whose DS the parent holds.
    ds_key: Option<String>,
    /// KSKs of [`ZoneSpec::extra_algs`], whose DS the parent holds too.
    extra_ds_keys: Vec<String>,
}

/// Replaces, in the signed zone `signed`, the RRSIGs of each `(owner,
/// type)` by those of the same RRset in `expired` (the same zone signed
/// with the same keys and a validity window in the past); fails unless
/// every RRset had signatures to replace.
fn splice_expired_rrsigs(signed: &Path, expired: &Path, rrsets: &[(String, String)]) -> Result<()> {
    // `owner ttl IN RRSIG covered ...` (dnssec-signzone -O full).
    let key = |line: &str| -> Option<(String, String)> {
        let t: Vec<&str> = line.split_whitespace().collect();
        (t.len() > 4 && t[3] == "RRSIG").then(|| (t[0].to_ascii_lowercase(), t[4].to_string()))
    };
    let wanted = |line: &str| key(line).is_some_and(|k| rrsets.contains(&k));
    let old = std::fs::read_to_string(expired)?;
    let text = std::fs::read_to_string(signed)?;
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| !wanted(l))
        .map(str::to_string)
        .collect();
    let replaced: Vec<&str> = old.lines().filter(|l| wanted(l)).collect();
    for r in rrsets {
        ensure!(
            replaced.iter().any(|l| key(l).as_ref() == Some(r)),
            "no RRSIG of {} {} to expire",
            r.0,
            r.1
        );
    }
    out.extend(replaced.iter().map(|l| l.to_string()));
    std::fs::write(signed, out.join("\n") + "\n")?;
    Ok(())
}

/// Runs a tool, returns its stdout; fails with its stderr.
fn run(tool: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {tool} (is its Debian package installed?)"))?;
    if !out.status.success() {
        bail!(
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// delv's anchor file from a BIND `.key` file.
fn delv_anchor_text(key_file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(key_file)?;
    let line = text
        .lines()
        .find(|l| !l.trim_start().starts_with(';') && l.contains("DNSKEY"))
        .context("no DNSKEY in the root key file")?;
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let i = tokens
        .iter()
        .position(|t| *t == "DNSKEY")
        .context("no DNSKEY")?;
    let r = &tokens[i + 1..];
    ensure!(r.len() >= 4, "short DNSKEY line");
    Ok(format!(
        "trust-anchors {{\n  . static-key {} {} {} \"{}\";\n}};\n",
        r[0],
        r[1],
        r[2],
        r[3..].concat()
    ))
}

/// A port free for both UDP and TCP on `ip`.
pub fn free_udp_tcp_port(ip: Ipv4Addr) -> Result<u16> {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind((ip, 0))?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free UDP and TCP port on {ip}")
}

fn knot_conf(dir: &Path, addr: SocketAddr, zones: &[ZoneSpec]) -> String {
    let d = dir.display();
    let mut c = format!(
        r#"server:
    rundir: "{d}/run"
    listen: {ip}@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{d}/db"
log:
  - target: stderr
    any: info
template:
  - id: default
    storage: "{d}/zones"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
control:
    listen: "{d}/run/knot.sock"
zone:
"#,
        ip = addr.ip(),
        port = addr.port()
    );
    for z in zones {
        let stem = if z.origin == "." {
            "root".to_string()
        } else {
            z.origin.trim_end_matches('.').to_string()
        };
        let _ = writeln!(
            c,
            "  - domain: \"{}\"\n    file: \"{stem}.signed\"",
            z.origin
        );
    }
    c
}

/// What `delv` made of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DelvStatus {
    /// `; fully validated` (also for a validated negative answer).
    Secure,
    /// `; unsigned answer`.
    Insecure,
    /// `;; resolution failed: ...` without a validated negative answer
    /// (for a bogus answer: `broken trust chain`, `no valid signature`...).
    Failed(String),
}

/// A running `knotd` serving a signed world.
pub struct KnotWorld {
    /// Where knotd answers (UDP and TCP).
    pub addr: SocketAddr,
    /// The root KSK (`dnssec-keygen`'s `.key` file: `. IN DNSKEY 257 3 ...`).
    pub trust_anchor: PathBuf,
    delv_anchor: PathBuf,
    origins: Vec<String>,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl std::fmt::Debug for KnotWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnotWorld")
            .field("addr", &self.addr)
            .field("zones", &self.origins)
            .finish()
    }
}

impl KnotWorld {
    /// A world on `ip` with a root zone and `test.`, both signed with `alg`
    /// and `denial`; add domains with [`KnotWorldBuilder::zone`].
    pub fn builder(ip: Ipv4Addr, alg: Alg, denial: Denial) -> KnotWorldBuilder {
        KnotWorldBuilder {
            ip,
            zones: vec![
                ZoneSpec::new(".").alg(alg).denial(denial),
                ZoneSpec::new("test.").alg(alg).denial(denial),
            ],
        }
    }

    /// The zones served (fully qualified).
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// knotd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knotd.log")).unwrap_or_default()
    }

    /// Waits until knotd answers authoritatively for every zone (it loads
    /// zones after it starts listening).
    fn wait_loaded(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for origin in self.origins.clone() {
            loop {
                let out = self.kdig(&origin, "SOA", &["+tcp"]);
                if out.contains("status: NOERROR") && out.contains(" aa") {
                    break;
                }
                if let Some(c) = self.child.as_mut()
                    && let Some(status) = c.try_wait()?
                {
                    bail!("knotd exited ({status}):\n{}", self.log());
                }
                if Instant::now() > deadline {
                    bail!("knotd never served {origin}:\n{out}\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// `kdig @addr NAME TYPE +dnssec +norec [extra]`, stdout (and stderr).
    pub fn kdig(&self, name: &str, rtype: &str, extra: &[&str]) -> String {
        let out = Command::new("kdig")
            .arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string()])
            .args(["+dnssec", "+norec", "+time=1", "+retry=0"])
            .args(extra)
            .args([name, rtype])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("kdig did not run (Debian package knot-dnsutils): {e}"),
        }
    }

    /// Validates `name rtype` with BIND's `delv`, from the root trust
    /// anchor: what an independent validator makes of this world.
    pub fn delv(&self, name: &str, rtype: &str) -> Result<(DelvStatus, String)> {
        let out = Command::new("delv")
            .arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string()])
            .arg("-a")
            .arg(&self.delv_anchor)
            .args(["+root=.", "+nocrypto", name, rtype])
            .stdin(Stdio::null())
            .output()
            .context("running delv (Debian package bind9-dnsutils)")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A validated negative answer comes after a `resolution failed:
        // ncache nxdomain` line, so the status lines are read first.
        // A CNAME chain prints one status per RRset: the weakest counts.
        let unsigned =
            text.contains("; unsigned answer") || text.contains("negative response, unsigned");
        let status = if unsigned {
            DelvStatus::Insecure
        } else if text.contains("fully validated") {
            DelvStatus::Secure
        } else {
            let reason = text
                .lines()
                .find(|l| l.contains("resolution failed"))
                .unwrap_or("no status line")
                .to_string();
            DelvStatus::Failed(reason)
        };
        Ok((status, text))
    }

    /// Fails unless `delv` finds `name rtype` in the state `want`
    /// (`Failed` matches any failure).
    pub fn expect_delv(&self, name: &str, rtype: &str, want: &DelvStatus) -> Result<()> {
        let (got, text) = self.delv(name, rtype)?;
        let ok = match (want, &got) {
            (DelvStatus::Failed(_), DelvStatus::Failed(_)) => true,
            (a, b) => a == b,
        };
        ensure!(
            ok,
            "delv {name} {rtype}: wanted {want:?}, got {got:?}\n{text}\nknotd:\n{}",
            self.log()
        );
        Ok(())
    }
}

impl Drop for KnotWorld {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, computed by the
/// `openssl` command line (not by sealgate's DER code): the data of a
/// `3 1 1` TLSA record.
pub fn spki_sha256_openssl(cert_pem: &str) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut pubkey = Command::new("openssl")
        .args(["x509", "-noout", "-pubkey"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running openssl")?;
    pubkey
        .stdin
        .take()
        .context("stdin")?
        .write_all(cert_pem.as_bytes())?;
    let pem = pubkey.wait_with_output()?;
    ensure!(pem.status.success(), "openssl x509 -pubkey failed");
    let mut der = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    der.stdin.take().context("stdin")?.write_all(&pem.stdout)?;
    let der = der.wait_with_output()?;
    ensure!(der.status.success(), "openssl pkey failed");
    Ok(ring::digest::digest(&ring::digest::SHA256, &der.stdout)
        .as_ref()
        .to_vec())
}
