//! DANE for SMTP (RFC 7672, RFC 6698, RFC 7671): MX and TLSA records
//! validated with DNSSEC. A secure MX set whose hosts publish usable TLSA
//! records (DANE-TA(2) or DANE-EE(3), selector 0 or 1, matching 0, 1 or 2)
//! makes DANE the requirement; a secure TLSA RRset with only unusable
//! records makes TLS mandatory (`encrypted`, RFC 7672 section 2.2); an
//! insecure MX set means no DANE; a bogus or failed lookup is an error, so
//! the recipient waits (never a fallback). Delivery under a decision that
//! rests on this probe takes its hosts and addresses from the same
//! validating resolver (`validated_mx`, `validated_addrs`).

use std::sync::{Arc, Mutex};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::dnssec::{Algorithm, Proof, PublicKeyBuf, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use serde::Serialize;
use serde_json::json;

use super::{Capability, Probe, ProbeAnswer, ProbeFuture};
use crate::config::DnsSettings;
use crate::policy::TlsRequirement;

/// A TLSA record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    #[serde(serialize_with = "ser_hex")]
    pub data: Vec<u8>,
}

fn ser_hex<S: serde::Serializer>(d: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(d))
}

impl Tlsa {
    /// RFC 7672 section 3.1: SMTP uses DANE-TA(2) and DANE-EE(3) only, with
    /// known selectors and matching types; anything else is unusable.
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3)
            && matches!(self.selector, 0 | 1)
            && matches!(self.matching, 0..=2)
    }

    /// Whether `cert` (DER) matches this record's selector and matching type.
    pub fn matches(&self, cert: &[u8]) -> bool {
        let key;
        let selected: &[u8] = match self.selector {
            0 => cert,
            1 => match spki(cert) {
                Some(s) => {
                    key = s;
                    key.as_ref()
                }
                None => return false,
            },
            _ => return false,
        };
        let digest = match self.matching {
            0 => selected.to_vec(),
            1 => ring::digest::digest(&ring::digest::SHA256, selected)
                .as_ref()
                .to_vec(),
            2 => ring::digest::digest(&ring::digest::SHA512, selected)
                .as_ref()
                .to_vec(),
            _ => return false,
        };
        crate::util::constant_time_eq(&digest, &self.data)
    }

    /// `usage selector matching hex` as in zone files.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {} {}",
            self.usage,
            self.selector,
            self.matching,
            hex::encode(&self.data)
        )
    }
}

/// What the TLSA RRset of one MX host means (RFC 7672 section 2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTlsa {
    /// No secure TLSA RRset (insecure address or TLSA records, or none
    /// published): DANE does not apply to this host.
    None,
    /// A secure RRset whose records are all unusable for SMTP (PKIX
    /// usages, unknown selectors or matching types): TLS is mandatory,
    /// but the certificate cannot be authenticated.
    Unusable(Vec<Tlsa>),
    /// A secure RRset with usable records: the server must match one.
    Usable { usable: Vec<Tlsa>, all: Vec<Tlsa> },
}

impl HostTlsa {
    /// Sorts a secure, non-empty RRset into usable or unusable.
    pub fn classify(all: Vec<Tlsa>) -> HostTlsa {
        if all.is_empty() {
            return HostTlsa::None;
        }
        let usable: Vec<Tlsa> = all.iter().filter(|t| t.usable()).cloned().collect();
        if usable.is_empty() {
            HostTlsa::Unusable(all)
        } else {
            HostTlsa::Usable { usable, all }
        }
    }

    /// Every record of the RRset, for the evidence.
    pub fn all(&self) -> &[Tlsa] {
        match self {
            HostTlsa::None => &[],
            HostTlsa::Unusable(all) | HostTlsa::Usable { all, .. } => all,
        }
    }
}

/// The DER SubjectPublicKeyInfo of a certificate (RFC 5280 section 4.1),
/// with its SEQUENCE header, as webpki (the parser rustls verifies with)
/// reads it; `None` for anything webpki does not accept as a certificate,
/// so a selector 1 record never matches bytes it could not parse.
///
/// webpki's trust anchor reading is used (it also takes v1 certificates
/// and ignores unknown critical extensions): a DANE-TA(2) certificate
/// becomes a trust anchor exactly that way (`RootCertStore::add`), and a
/// DANE-EE(3) leaf is parsed again, strictly, by the handshake's signature
/// check, so the leniency admits nothing the handshake would refuse.
pub fn spki(cert: &[u8]) -> Option<SubjectPublicKeyInfoDer<'static>> {
    let der = CertificateDer::from(cert);
    let anchor = webpki::anchor_from_trusted_cert(&der).ok()?;
    Some(webpki::spki_for_anchor(&anchor))
}

/// What DNSSEC says about an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dnssec {
    Secure,
    Insecure,
}

/// Reads a trust anchor file: DNSKEY records in zone-file form
/// (`. 172800 IN DNSKEY 257 3 8 AwEAA...`), `;` comments.
pub fn load_trust_anchor(path: &std::path::Path) -> Result<TrustAnchors, String> {
    use base64::Engine;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("dns.trust_anchor {}: {e}", path.display()))?;
    let mut anchors = TrustAnchors::empty();
    for (n, line) in text.lines().enumerate() {
        let line = line.split(';').next().unwrap_or("");
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens.is_empty() {
            continue;
        }
        let at = |m: &str| format!("dns.trust_anchor {}:{}: {m}", path.display(), n + 1);
        let i = tokens
            .iter()
            .position(|t| t.eq_ignore_ascii_case("DNSKEY"))
            .ok_or_else(|| at("not a DNSKEY record"))?;
        let rdata = &tokens[i + 1..];
        if rdata.len() < 4 || rdata[1] != "3" {
            return Err(at("expected `flags 3 algorithm key`"));
        }
        let alg: u8 = rdata[2].parse().map_err(|_| at("bad algorithm number"))?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(rdata[3..].concat())
            .map_err(|_| at("key is not base64"))?;
        anchors.insert(&PublicKeyBuf::new(key, Algorithm::from_u8(alg)));
    }
    if anchors.is_empty() {
        return Err(format!(
            "dns.trust_anchor {}: no DNSKEY record",
            path.display()
        ));
    }
    Ok(anchors)
}

/// The validating resolver and TLSA lookups.
pub struct Dane {
    resolver: TokioResolver,
    port: u16,
}

impl Dane {
    /// A validating resolver over `[dns]` (the trust anchor file, or the
    /// IANA root built into hickory).
    pub fn new(dns: &DnsSettings, port: u16) -> Result<Dane, String> {
        let mut builder =
            crate::outbound::route::resolver_builder(dns).map_err(|e| e.to_string())?;
        builder.options_mut().validate = true;
        if let Some(path) = &dns.trust_anchor {
            builder = builder.with_trust_anchor(Arc::new(load_trust_anchor(path)?));
        }
        Ok(Dane {
            resolver: builder.build(),
            port,
        })
    }

    /// The weakest proof among the answer's records.
    fn lookup_proof(l: &hickory_resolver::lookup::Lookup) -> Proof {
        l.record_iter()
            .map(|r| r.proof())
            .min()
            .unwrap_or(Proof::Indeterminate)
    }

    /// A validated lookup: `Ok((status, rdata))`, empty for a proven
    /// NODATA/NXDOMAIN; `Err` for bogus or failed lookups.
    async fn validated(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<(Dnssec, Vec<RData>), String> {
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        match self.resolver.lookup(fqdn.clone(), rtype).await {
            Ok(l) => {
                let proof = Self::lookup_proof(&l);
                let data: Vec<RData> = l
                    .record_iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data().clone())
                    .collect();
                match proof {
                    Proof::Secure => Ok((Dnssec::Secure, data)),
                    Proof::Insecure => Ok((Dnssec::Insecure, data)),
                    Proof::Bogus => Err(format!(
                        "DNSSEC validation of {fqdn} {rtype} failed (bogus)"
                    )),
                    Proof::Indeterminate => {
                        Err(format!("DNSSEC status of {fqdn} {rtype} is indeterminate"))
                    }
                }
            }
            Err(e) => {
                if let Some(ProtoErrorKind::NoRecordsFound {
                    soa, response_code, ..
                }) = e.proto().map(|p| p.kind())
                {
                    let proof = soa.as_ref().map_or(Proof::Indeterminate, |s| s.proof());
                    let what = if *response_code == ResponseCode::NXDomain {
                        "NXDOMAIN"
                    } else {
                        "no data"
                    };
                    return match proof {
                        Proof::Secure => Ok((Dnssec::Secure, Vec::new())),
                        Proof::Insecure => Ok((Dnssec::Insecure, Vec::new())),
                        Proof::Bogus => Err(format!(
                            "DNSSEC validation of the {what} answer for {fqdn} {rtype} failed (bogus)"
                        )),
                        Proof::Indeterminate => {
                            Err(format!("{what} for {fqdn} {rtype} could not be proven"))
                        }
                    };
                }
                Err(format!("validated lookup of {fqdn} {rtype} failed: {e}"))
            }
        }
    }

    /// What the TLSA records of an MX host say (RFC 7672 section 2.2):
    /// `Err` when the answer is bogus or the lookup failed.
    pub async fn tlsa(&self, host: &str) -> Result<HostTlsa, String> {
        self.tlsa_at(host, self.port).await
    }

    /// The TLSA records of `host` for SMTP on `port` (a smarthost's own
    /// port), as [`Dane::tlsa`].
    pub async fn tlsa_at(&self, host: &str, port: u16) -> Result<HostTlsa, String> {
        // RFC 7672 section 2.2.2: the host's address records must be
        // secure for its TLSA records to be used.
        let (addr_status, _) = self.validated(host, RecordType::A).await?;
        if addr_status != Dnssec::Secure {
            return Ok(HostTlsa::None);
        }
        let name = format!("_{}._tcp.{}", port, host.trim_end_matches('.'));
        let (status, data) = self.validated(&name, RecordType::TLSA).await?;
        if status != Dnssec::Secure || data.is_empty() {
            return Ok(HostTlsa::None);
        }
        let all: Vec<Tlsa> = data
            .iter()
            .filter_map(|d| match d {
                RData::TLSA(t) => Some(Tlsa {
                    usage: u8::from(t.cert_usage()),
                    selector: u8::from(t.selector()),
                    matching: u8::from(t.matching()),
                    data: t.cert_data().to_vec(),
                }),
                _ => None,
            })
            .collect();
        Ok(HostTlsa::classify(all))
    }

    /// The MX RRset of `domain` from the validating resolver, in
    /// preference order: `(status, [(preference, host)])`, empty for a
    /// proven NODATA or NXDOMAIN; `Err` for bogus or failed lookups.
    pub async fn validated_mx(&self, domain: &str) -> Result<(Dnssec, Vec<(u16, String)>), String> {
        let (status, mx) = self.validated(domain, RecordType::MX).await?;
        let mut hosts: Vec<(u16, String)> = mx
            .iter()
            .filter_map(|d| match d {
                RData::MX(m) => Some((
                    m.preference(),
                    m.exchange()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                )),
                _ => None,
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        Ok((status, hosts))
    }

    /// The addresses (AAAA and A) of `host` from the validating resolver,
    /// secure or provably insecure; `Err` for bogus or failed lookups, so
    /// no forged address is ever used for a decision that rests on DNSSEC.
    pub async fn validated_addrs(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<std::net::SocketAddr>, String> {
        let mut out = Vec::new();
        for rtype in [RecordType::AAAA, RecordType::A] {
            let (_, data) = self.validated(host, rtype).await?;
            for d in data {
                let ip = match d {
                    RData::A(a) => std::net::IpAddr::V4(a.0),
                    RData::AAAA(a) => std::net::IpAddr::V6(a.0),
                    _ => continue,
                };
                let addr = std::net::SocketAddr::new(ip, port);
                if !out.contains(&addr) && out.len() < crate::outbound::route::MAX_ADDRS_PER_HOST {
                    out.push(addr);
                }
            }
        }
        Ok(out)
    }

    /// OpenPGP keys published for `address` in DNS (RFC 7929), accepted
    /// only from a DNSSEC-secure answer: `Ok(None)` when there is none or
    /// the zone is unsigned, `Err` for a bogus or failed lookup.
    pub async fn openpgpkey(&self, address: &str) -> Result<Option<Vec<Vec<u8>>>, String> {
        let (local, domain) = address.rsplit_once('@').ok_or("not an address")?;
        let local = openpgpkey_local(local);
        let hash = ring::digest::digest(&ring::digest::SHA256, local.as_bytes());
        let name = format!(
            "{}._openpgpkey.{}",
            hex::encode(&hash.as_ref()[..28]),
            domain
        );
        let (status, data) = self.validated(&name, RecordType::OPENPGPKEY).await?;
        if status != Dnssec::Secure || data.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            data.iter()
                .filter_map(|d| match d {
                    RData::OPENPGPKEY(k) => Some(k.public_key().to_vec()),
                    _ => None,
                })
                .collect(),
        ))
    }

    /// The DANE status of a destination domain, with evidence: `dane`
    /// when a host of the secure MX set has usable TLSA records,
    /// `encrypted` (mandatory TLS, RFC 7672 section 2.2) when the only
    /// secure TLSA records there are unusable, nothing when no host has a
    /// secure TLSA RRset or the MX set is insecure.
    pub async fn check(&self, domain: &str) -> ProbeAnswer {
        let (status, mut hosts) = match self.validated_mx(domain).await {
            Ok(v) => v,
            Err(e) => {
                return ProbeAnswer {
                    result: Err(e),
                    evidence: json!({ "domain": domain, "dnssec": "bogus-or-failed" }),
                };
            }
        };
        if status == Dnssec::Insecure {
            return ProbeAnswer {
                result: Ok(Vec::new()),
                evidence: json!({ "domain": domain, "dnssec": "insecure", "dane": false }),
            };
        }
        // RFC 7505 null MX: the domain takes no mail; route.rs says so.
        if hosts.len() == 1 && hosts[0].1.is_empty() {
            return ProbeAnswer {
                result: Ok(Vec::new()),
                evidence: json!({ "domain": domain, "dnssec": "secure", "null_mx": true, "dane": false }),
            };
        }
        if hosts.is_empty() {
            hosts.push((0, domain.to_string()));
        }
        // As many as delivery tries, most preferred first.
        hosts.sort_by_key(|h| h.0);
        hosts.truncate(crate::outbound::route::MAX_MX_HOSTS);
        let mut per_host = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut any_usable = false;
        let mut any_unusable = false;
        for (pref, host) in &hosts {
            match self.tlsa(host).await {
                Ok(t) => {
                    any_usable |= matches!(t, HostTlsa::Usable { .. });
                    any_unusable |= matches!(t, HostTlsa::Unusable(_));
                    per_host.push(json!({
                        "host": host, "preference": pref,
                        "tlsa": t.all().iter().map(Tlsa::describe).collect::<Vec<_>>(),
                        "usable": matches!(t, HostTlsa::Usable { .. }),
                        "tls_required": !matches!(t, HostTlsa::None),
                    }));
                }
                Err(e) => {
                    // RFC 7672 section 2.2: a host whose TLSA lookup is
                    // bogus or fails is unusable; others may still serve.
                    per_host.push(json!({ "host": host, "preference": pref, "error": e }));
                    errors.push(e);
                }
            }
        }
        if !any_usable && !errors.is_empty() {
            return ProbeAnswer {
                result: Err(errors.join("; ")),
                evidence: json!({ "domain": domain, "dnssec": "secure", "mx": per_host }),
            };
        }
        let evidence =
            json!({ "domain": domain, "dnssec": "secure", "mx": per_host, "dane": any_usable });
        let caps = if any_usable {
            vec![Capability::Tls {
                level: TlsRequirement::Dane,
            }]
        } else if any_unusable {
            // Secure but unusable TLSA is not "no DANE": TLS is mandatory,
            // unauthenticated allowed, never cleartext.
            vec![Capability::Tls {
                level: TlsRequirement::Encrypted,
            }]
        } else {
            Vec::new()
        };
        ProbeAnswer {
            result: Ok(caps),
            evidence,
        }
    }

    /// A rustls configuration that authenticates the server by `tlsa`
    /// (RFC 7671 / 7672), recording which record matched in `matched`.
    pub fn client_config(
        &self,
        tlsa: Vec<Tlsa>,
        names: Vec<String>,
        matched: Arc<Mutex<Option<Tlsa>>>,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let provider = crate::outbound::tls::provider();
        let verifier = DaneVerifier {
            tlsa,
            names,
            matched,
            provider: provider.clone(),
        };
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

/// Verifies a server's chain against TLSA records.
#[derive(Debug)]
struct DaneVerifier {
    tlsa: Vec<Tlsa>,
    /// Reference identifiers for DANE-TA: the MX host name and the domain.
    names: Vec<String>,
    matched: Arc<Mutex<Option<Tlsa>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // DANE-EE(3): the leaf itself; names and dates are not checked
        // (RFC 7671 section 5.1).
        for t in self.tlsa.iter().filter(|t| t.usage == 3) {
            if t.matches(end_entity.as_ref()) {
                *self.matched.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
                return Ok(ServerCertVerified::assertion());
            }
        }
        // DANE-TA(2): a certificate of the presented chain is the trust
        // anchor; the leaf must chain to it and match a reference name.
        for t in self.tlsa.iter().filter(|t| t.usage == 2) {
            for ta in intermediates.iter().chain(std::iter::once(end_entity)) {
                if !t.matches(ta.as_ref()) {
                    continue;
                }
                let mut roots = rustls::RootCertStore::empty();
                if roots.add(ta.clone().into_owned()).is_err() {
                    continue;
                }
                let Ok(v) = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build() else {
                    continue;
                };
                for name in &self.names {
                    let Ok(sn) = ServerName::try_from(name.clone()) else {
                        continue;
                    };
                    if v.verify_server_cert(end_entity, intermediates, &sn, &[], now)
                        .is_ok()
                    {
                        *self.matched.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
                        return Ok(ServerCertVerified::assertion());
                    }
                }
            }
        }
        Err(rustls::Error::General(
            "TLSA mismatch: no DANE-TA or DANE-EE record matches the presented certificate chain"
                .into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The DANE probe.
pub struct DaneProbe(pub Arc<Dane>);

impl Probe for DaneProbe {
    fn name(&self) -> &'static str {
        "dane"
    }

    fn cache_key(&self, recipient: &str) -> String {
        crate::queue::domain_of(recipient)
    }

    fn probe<'a>(&'a self, recipient: &'a str) -> ProbeFuture<'a> {
        Box::pin(async move { self.0.check(&crate::queue::domain_of(recipient)).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlsa_matching() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.example.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        let spki_der = spki(&der).expect("SPKI found");
        let spki_der = spki_der.as_ref();
        assert_eq!(spki_der, key.public_key_der().as_slice());
        let sha256 = |d: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, d)
                .as_ref()
                .to_vec()
        };
        let sha512 = |d: &[u8]| {
            ring::digest::digest(&ring::digest::SHA512, d)
                .as_ref()
                .to_vec()
        };
        let cases = [
            (
                Tlsa {
                    usage: 3,
                    selector: 0,
                    matching: 0,
                    data: der.clone(),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 0,
                    matching: 1,
                    data: sha256(&der),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 1,
                    data: sha256(spki_der),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 2,
                    data: sha512(spki_der),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 1,
                    data: sha256(b"other"),
                },
                false,
            ),
        ];
        for (t, want) in cases {
            assert_eq!(t.matches(&der), want, "{}", t.describe());
        }
        assert!(
            !Tlsa {
                usage: 1,
                selector: 1,
                matching: 1,
                data: vec![]
            }
            .usable()
        );
        assert!(
            !Tlsa {
                usage: 3,
                selector: 2,
                matching: 1,
                data: vec![]
            }
            .usable()
        );
        assert!(
            Tlsa {
                usage: 2,
                selector: 0,
                matching: 2,
                data: vec![]
            }
            .usable()
        );
        assert_eq!(spki(b"\x30\x03\x02\x01"), None, "truncated DER is refused");
    }

    #[test]
    fn tlsa_rrsets_are_usable_unusable_or_absent() {
        let t = |usage, selector, matching| Tlsa {
            usage,
            selector,
            matching,
            data: vec![1, 2, 3],
        };
        assert_eq!(HostTlsa::classify(Vec::new()), HostTlsa::None);
        // Only PKIX usages, or unknown selectors and matching types:
        // mandatory TLS, no authentication (RFC 7672 section 2.2).
        for only in [
            vec![t(0, 1, 1)],
            vec![t(1, 1, 1), t(0, 0, 1)],
            vec![t(3, 2, 1)],
            vec![t(2, 1, 3)],
            vec![t(4, 1, 1)],
        ] {
            assert_eq!(
                HostTlsa::classify(only.clone()),
                HostTlsa::Unusable(only.clone()),
                "{only:?}"
            );
        }
        // Mixed: the usable records authenticate, all are evidence.
        let mixed = vec![t(1, 1, 1), t(3, 1, 1), t(3, 9, 1)];
        match HostTlsa::classify(mixed.clone()) {
            HostTlsa::Usable { usable, all } => {
                assert_eq!(usable, vec![t(3, 1, 1)]);
                assert_eq!(all, mixed);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod spki_tests {
    use super::*;

    fn sha256(d: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, d)
            .as_ref()
            .to_vec()
    }

    fn record(data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data,
        }
    }

    /// Certificates made by the openssl command line (see
    /// tests/data/dane/README.md), with their SPKI digests as openssl
    /// computes them: long-form lengths all the way, many extensions, a
    /// v1 certificate without a version field.
    const OPENSSL_CERTS: [(&[u8], &str); 2] = [
        (
            include_bytes!("../../tests/data/dane/rsa4096-ext.der"),
            "e88bb202d9294fd4a09c1029187342f9a1b95f493acb011348f276df6df0ae23",
        ),
        (
            include_bytes!("../../tests/data/dane/v1.der"),
            "49fcc3fc6c0a21a21fdf67da3c2d666e428494425bd36c8af5a6c81560ec6a78",
        ),
    ];

    #[test]
    fn odd_but_valid_der_matches_the_spki_openssl_computed() {
        for (der, want) in OPENSSL_CERTS {
            let want = hex::decode(want).unwrap();
            let got = spki(der).expect("webpki reads the certificate");
            assert_eq!(sha256(got.as_ref()), want);
            assert!(record(want.clone()).matches(der));
            let mut other = want.clone();
            other[0] ^= 1;
            assert!(!record(other).matches(der));
        }
    }

    #[test]
    fn an_unknown_critical_extension_still_yields_the_spki() {
        // A DANE-TA certificate is a trust anchor, and webpki ignores
        // what it does not know in one (as `RootCertStore::add` does).
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["mx.example.test".into(); 1]).unwrap();
        let mut ext =
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![5, 0]);
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let got = spki(&der).expect("SPKI found");
        assert_eq!(got.as_ref(), key.public_key_der().as_slice());
        assert!(record(sha256(&key.public_key_der())).matches(&der));
    }

    #[test]
    fn garbage_fails_closed() {
        let (der, digest) = OPENSSL_CERTS[0];
        let good = record(hex::decode(digest).unwrap());
        assert!(good.matches(der));
        // Every truncation, trailing bytes, a corrupted length, nothing.
        for cut in 0..der.len() {
            assert_eq!(spki(&der[..cut]), None, "cut at {cut}");
            assert!(!good.matches(&der[..cut]), "cut at {cut}");
        }
        let mut trailing = der.to_vec();
        trailing.push(0);
        assert_eq!(spki(&trailing), None);
        let mut bad_length = der.to_vec();
        bad_length[3] ^= 0x01;
        assert_eq!(spki(&bad_length), None);
        for junk in [
            &b""[..],
            b"\x30\x03\x02\x01",
            b"\x30\x80\x00\x00",
            b"\x30\x84\xff\xff\xff\xff",
            b"-----BEGIN CERTIFICATE-----",
        ] {
            assert_eq!(spki(junk), None, "{junk:?}");
            assert!(!good.matches(junk));
        }
        // A bare SPKI is not a certificate.
        let (v1, _) = OPENSSL_CERTS[1];
        let bare = spki(v1).unwrap();
        assert_eq!(spki(bare.as_ref()), None);
    }
}

/// The local part as RFC 7929 section 3 hashes it: without the enclosing
/// quotes and quoting backslashes of a quoted local part, in Unicode NFC.
/// (Case is kept: the RFC hashes the local part as given.)
fn openpgpkey_local(local: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let unquoted = match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    c => out.push(c),
                }
            }
            out
        }
        None => local.to_string(),
    };
    unquoted.nfc().collect()
}

#[cfg(test)]
mod openpgpkey_tests {
    use super::openpgpkey_local;

    #[test]
    fn the_local_part_is_unquoted_and_nfc() {
        assert_eq!(openpgpkey_local("hugh"), "hugh");
        assert_eq!(openpgpkey_local("Hugh"), "Hugh");
        assert_eq!(openpgpkey_local("\"john smith\""), "john smith");
        assert_eq!(openpgpkey_local("\"a\\\"b\""), "a\"b");
        // e + combining acute (U+0301) is hashed as precomposed é.
        assert_eq!(openpgpkey_local("jose\u{301}"), "jos\u{e9}");
        // RFC 7929 section 3's example: hugh@example.com.
        let h = ring::digest::digest(&ring::digest::SHA256, openpgpkey_local("hugh").as_bytes());
        assert_eq!(
            hex::encode(&h.as_ref()[..28]),
            "c93f1e400f26708f98cb19d936620da35eec8f72e57f9eec01c1afd6"
        );
    }
}
