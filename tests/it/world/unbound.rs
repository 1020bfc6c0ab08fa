//! NLnet Labs' `unbound` (Debian package unbound) as a validating recursive
//! resolver in front of a [`super::knot::KnotWorld`], as a deployment would
//! point `[dns] nameservers` at a local resolver: it resolves from knotd
//! (a stub zone for each zone of the world) and validates from the same
//! root trust anchor. Runs in the foreground on a loopback address and a
//! random port, in a folder of its own; killed on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running `unbound -d`.
pub struct Unbound {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Unbound {
    /// Starts on `ip` (a random port), resolving the `zones` from `server`
    /// and validating from `trust_anchor` (DNSKEY or DS in zone-file
    /// form). Every zone is a stub zone: NS records carry no port, and
    /// `server` does not listen on 53.
    pub fn start(
        ip: Ipv4Addr,
        server: SocketAddr,
        zones: &[String],
        trust_anchor: &Path,
    ) -> Result<Unbound> {
        let dir = tempfile::Builder::new().prefix("unbound").tempdir()?;
        let port = super::knot::free_udp_tcp_port(ip)?;
        let d = dir.path().display();
        let conf = format!(
            r#"server:
    interface: {ip}@{port}
    port: {port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    num-threads: 1
    outgoing-range: 64
    so-reuseport: no
    do-ip6: no
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    module-config: "validator iterator"
    trust-anchor-file: "{anchor}"
    cache-max-ttl: 60
    cache-max-negative-ttl: 5
    harden-referral-path: no
    # unbound answers the RFC 6761 names itself (NXDOMAIN) unless told not to.
    local-zone: "test." nodefault
remote-control:
    control-enable: no
"#,
            anchor = trust_anchor.display(),
        );
        let mut conf = conf;
        for z in zones {
            conf.push_str(&format!(
                "stub-zone:\n    name: \"{z}\"\n    stub-addr: {}@{}\n",
                server.ip(),
                server.port()
            ));
        }
        let conf_path = dir.path().join("unbound.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(dir.path().join("unbound.log"))?;
        let child = Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting unbound (Debian package unbound)")?;
        let mut u = Unbound {
            child: Some(child),
            addr: SocketAddr::from((ip, port)),
            dir,
        };
        u.wait_ready(Duration::from_secs(20))?;
        Ok(u)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("unbound.log")).unwrap_or_default()
    }

    /// Waits until unbound resolves (and validates) the root SOA.
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.kdig(".", "SOA");
            if out.contains("status: NOERROR") && out.contains(" ad") {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("unbound exited ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("unbound never validated the root:\n{out}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kdig @unbound NAME TYPE +dnssec` (recursion desired).
    pub fn kdig(&self, name: &str, rtype: &str) -> String {
        let out = Command::new("kdig")
            .arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string()])
            .args(["+dnssec", "+time=2", "+retry=0", name, rtype])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("kdig did not run: {e}"),
        }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
