//! Where a recipient domain's mail goes: the smarthost, or the MX set in
//! preference order with A/AAAA fallback (RFC 5321 section 5.1), every name
//! looked up through the configured resolver; for a decision that rests on
//! DNSSEC (DANE), through the validating resolver only.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use serde::Serialize;

use super::dane::{AddrsError, Dane, Dnssec};
use crate::config::DnsSettings;

/// One host to try.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hop {
    /// The MX (or smarthost) name; TLS names are checked against it.
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<SocketAddr>,
}

/// How the route was found, for the evidence.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RouteKind {
    Mx,
    /// No MX records: the domain's own address (RFC 5321 section 5.1).
    ImplicitMx,
    Smarthost,
}

/// The hosts for one destination, in the order to try them.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    pub kind: RouteKind,
    pub hops: Vec<Hop>,
}

/// Why no route could be found.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// Permanent: the domain does not exist or accepts no mail.
    #[error("{0}")]
    Permanent(String),
    /// Temporary: DNS failure or timeout.
    #[error("{0}")]
    Temporary(String),
}

/// Errors building the resolver.
#[derive(Debug, thiserror::Error)]
#[error("DNS resolver: {0}")]
pub struct ResolverSetupError(String);

/// Builds the resolver from `[dns]`: the listed nameservers (UDP and TCP),
/// or the system's.
pub fn resolver(dns: &DnsSettings) -> Result<TokioResolver, ResolverSetupError> {
    let mut builder = resolver_builder(dns)?;
    builder.options_mut().cache_size = 4096;
    Ok(builder.build())
}

/// A resolver builder over `[dns]` (the listed nameservers over UDP and
/// TCP, or the system's), with the options every lookup shares; the
/// validating resolver for DANE starts from the same builder.
pub fn resolver_builder(
    dns: &DnsSettings,
) -> Result<hickory_resolver::ResolverBuilder<TokioConnectionProvider>, ResolverSetupError> {
    let mut builder = if dns.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| {
            ResolverSetupError(format!(
                "cannot read the system resolver configuration: {e}"
            ))
        })?
    } else {
        let mut cfg = ResolverConfig::new();
        for ns in &dns.nameservers {
            for proto in [Protocol::Udp, Protocol::Tcp] {
                let mut n = NameServerConfig::new(*ns, proto);
                // These are the operator's recursive resolvers: their
                // NXDOMAIN and NODATA answers are final.
                n.trust_negative_responses = true;
                cfg.add_name_server(n);
            }
        }
        TokioResolver::builder_with_config(cfg, TokioConnectionProvider::default())
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = dns.timeout;
    opts.attempts = 2;
    opts.ndots = 0;
    opts.try_tcp_on_error = true;
    // Never answer from /etc/hosts: every name goes through [dns].
    opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    Ok(builder)
}

/// Makes a name absolute so search domains never apply.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn no_records(e: &hickory_resolver::ResolveError) -> Option<ResponseCode> {
    use hickory_resolver::proto::ProtoErrorKind;
    if let hickory_resolver::ResolveErrorKind::Proto(p) = e.kind() {
        if let ProtoErrorKind::NoRecordsFound { response_code, .. } = p.kind() {
            return Some(*response_code);
        }
    }
    None
}

/// Addresses of a host, IPv6 and IPv4, bounded by the resolver timeout.
pub async fn host_addrs(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, RouteError> {
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match resolver.lookup_ip(fqdn(host)).await {
        Ok(l) => {
            let mut v: Vec<SocketAddr> = l.iter().map(|ip| SocketAddr::new(ip, port)).collect();
            v.dedup();
            v.truncate(MAX_ADDRS_PER_HOST);
            Ok(v)
        }
        Err(e) => match no_records(&e) {
            Some(ResponseCode::NXDomain) => Err(RouteError::Permanent(format!(
                "host {host} does not exist (NXDOMAIN)"
            ))),
            Some(_) => Ok(Vec::new()),
            None => Err(RouteError::Temporary(format!(
                "DNS lookup of {host} failed: {e}"
            ))),
        },
    }
}

/// Resolves the MX route of `domain`.
pub async fn mx_route(
    resolver: &TokioResolver,
    domain: &str,
    port: u16,
) -> Result<Route, RouteError> {
    let mx = match resolver.mx_lookup(fqdn(domain)).await {
        Ok(l) => {
            let mut v: Vec<(u16, String)> = l
                .iter()
                .map(|mx| {
                    (
                        mx.preference(),
                        mx.exchange()
                            .to_ascii()
                            .trim_end_matches('.')
                            .to_ascii_lowercase(),
                    )
                })
                .collect();
            v.sort();
            v.dedup();
            v
        }
        Err(e) => match no_records(&e) {
            Some(ResponseCode::NXDomain) => {
                return Err(RouteError::Permanent(format!(
                    "domain {domain} does not exist (NXDOMAIN)"
                )));
            }
            Some(_) => Vec::new(),
            None => {
                return Err(RouteError::Temporary(format!(
                    "MX lookup for {domain} failed: {e}"
                )));
            }
        },
    };
    route_from_mx(domain, mx, |name| async move {
        host_addrs(resolver, &name, port).await
    })
    .await
}

/// Resolves the MX route of `domain` for a decision that rests on DNSSEC
/// (DANE): the hosts are exactly those of the validated MX RRset (RFC 7672
/// section 2.2.1) and every address comes from the validating resolver.
/// `require_secure` refuses an MX set that is not (or no longer) signed,
/// which a `dane` decision cannot do without.
pub async fn validated_mx_route(
    dane: &Dane,
    domain: &str,
    port: u16,
    require_secure: bool,
) -> Result<Route, RouteError> {
    let (status, mx) = dane
        .validated_mx(domain)
        .await
        .map_err(RouteError::Temporary)?;
    if require_secure && status != Dnssec::Secure {
        return Err(RouteError::Temporary(format!(
            "the MX records of {domain} are no longer DNSSEC-signed, but the decision rests on DANE; waiting for a new decision"
        )));
    }
    route_from_mx(domain, mx, |name| async move {
        dane.validated_addrs(&name, port)
            .await
            .map_err(|e| match e {
                AddrsError::NxDomain(m) => RouteError::Permanent(m),
                AddrsError::Failed(m) => RouteError::Temporary(m),
            })
    })
    .await
}

/// The route for an MX set (sorted by preference) however it was looked
/// up, each host's addresses from `lookup`: no MX means the domain itself
/// (RFC 5321 section 5.1), a null MX takes no mail (RFC 7505), hosts of
/// equal preference are shuffled, at most [`MAX_MX_HOSTS`] are kept, and a
/// host without addresses is skipped.
async fn route_from_mx<F, Fut>(
    domain: &str,
    mx: Vec<(u16, String)>,
    lookup: F,
) -> Result<Route, RouteError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<SocketAddr>, RouteError>>,
{
    if mx.is_empty() {
        let addrs = lookup(domain.to_string()).await?;
        if addrs.is_empty() {
            return Err(RouteError::Permanent(format!(
                "domain {domain} has no MX and no address records"
            )));
        }
        return Ok(Route {
            kind: RouteKind::ImplicitMx,
            hops: vec![Hop {
                name: domain.to_string(),
                preference: 0,
                addrs,
            }],
        });
    }
    if mx.len() == 1 && (mx[0].1.is_empty() || mx[0].1 == ".") {
        return Err(RouteError::Permanent(format!(
            "domain {domain} does not accept mail (null MX)"
        )));
    }
    let mut hosts = mx;
    shuffle_equal_preferences(&mut hosts);
    hosts.truncate(MAX_MX_HOSTS);
    let results =
        futures_util::future::join_all(hosts.iter().map(|(_, name)| lookup(name.clone()))).await;
    let mut hops = Vec::new();
    // Why each host was skipped, in preference order, for the reply.
    let mut skipped: Vec<String> = Vec::new();
    for ((pref, name), res) in hosts.into_iter().zip(results) {
        match res {
            Ok(addrs) if !addrs.is_empty() => hops.push(Hop {
                name,
                preference: pref,
                addrs,
            }),
            Ok(_) => skipped.push(format!("MX host {name} has no address records")),
            Err(RouteError::Permanent(e)) if !e.contains(&name) => {
                skipped.push(format!("MX host {name}: {e}"))
            }
            Err(e) => skipped.push(e.to_string()),
        }
    }
    if hops.is_empty() {
        // Temporary even when every host is proven not to exist: the MX
        // set may be mid-change; the message bounces after max_age.
        return Err(RouteError::Temporary(if skipped.is_empty() {
            format!("no usable MX host for {domain}")
        } else {
            format!("no usable MX host for {domain}: {}", skipped.join("; "))
        }));
    }
    Ok(Route {
        kind: RouteKind::Mx,
        hops,
    })
}

/// MX hosts tried per destination at most, the most preferred first: a
/// hostile domain with hundreds of slow hosts must not hold a delivery
/// slot for hours (Postfix stops at 5 by default).
pub const MAX_MX_HOSTS: usize = 10;

/// Addresses tried per MX host at most.
pub const MAX_ADDRS_PER_HOST: usize = 8;

/// Shuffles hosts of equal preference (RFC 5321 section 5.1) so load
/// spreads; `hosts` is sorted by preference.
fn shuffle_equal_preferences(hosts: &mut [(u16, String)]) {
    let mut i = 0;
    while i < hosts.len() {
        let j = hosts[i..].iter().take_while(|h| h.0 == hosts[i].0).count() + i;
        fastrand::shuffle(&mut hosts[i..j]);
        i = j;
    }
}

/// Resolves the smarthost.
pub async fn smarthost_route(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
) -> Result<Route, RouteError> {
    let addrs = host_addrs(resolver, host, port)
        .await
        .map_err(|e| RouteError::Temporary(e.to_string()))?;
    if addrs.is_empty() {
        return Err(RouteError::Temporary(format!(
            "smarthost {host} has no address records"
        )));
    }
    Ok(Route {
        kind: RouteKind::Smarthost,
        hops: vec![Hop {
            name: host.to_string(),
            preference: 0,
            addrs,
        }],
    })
}

/// Upper bound on a whole route lookup, so a broken DNS server never
/// stalls a delivery task.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(60);
