//! Cloud connectors on the wire: the client certificate asked for during
//! STARTTLS, which connectors it identifies, and the tenant check at the
//! end of DATA.
//!
//! The TLS handshake accepts any client certificate whose holder proves
//! its key (the signatures are checked by rustls' `WebPkiClientVerifier`),
//! and no certificate at all: an ordinary client, or an on-prem server in
//! `allow_networks` with a self-signed certificate, must still get TLS.
//! Trust is decided after the handshake, per connector: the chain must
//! verify against that connector's own roots (webpki, with validity dates
//! and the extended key usage checked) and the certificate must carry one
//! of its names. Only then may the client relay, and only for messages
//! whose tenant headers match.
//!
//! The usage may be clientAuth or serverAuth (or absent): a mail server
//! presents its server certificate when it connects as a client, and
//! most public CAs stopped putting clientAuth into TLS server certificates
//! in 2026, so a cloud's certificate may lack it. Any other usage (code
//! signing, e-mail protection only) is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::DistinguishedName;
use rustls::RootCertStore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::data::{HeaderFacts, SingleHeader};
use crate::config::ConnectorSettings;

/// Errors loading the connectors' roots.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("relay.connectors `{connector}`: cannot read {}: {source}", path.display())]
    Read {
        connector: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("relay.connectors `{connector}`: {}: {detail}", path.display())]
    BadRoot {
        connector: String,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "relay.connectors `{connector}`: client_cert_roots hold no CA certificate (PEM files, or folders of *.pem / *.crt)"
    )]
    NoRoots { connector: String },
    #[error("relay.connectors `{connector}`: cannot build the certificate verifier: {detail}")]
    Verifier { connector: String, detail: String },
    #[error(
        "relay.connectors `{connector}`: private_ca = true, but client_cert_roots hold a public CA ({subject}) that issues certificates to anyone: set tenant_id or originator_org instead"
    )]
    PublicRoot { connector: String, subject: String },
}

/// One connector, ready to check certificates.
struct Connector {
    settings: ConnectorSettings,
    /// This connector's roots only.
    roots: RootCertStore,
}

/// Every configured connector, and the verifier the STARTTLS handshake
/// uses when there is at least one.
pub struct Connectors {
    list: Vec<Connector>,
    handshake: Option<Arc<dyn ClientCertVerifier>>,
}

impl Connectors {
    /// Loads every connector's roots; fails on the first unreadable one.
    pub fn load(settings: &[ConnectorSettings]) -> Result<Connectors, ConnectorError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut all = RootCertStore::empty();
        let mut list = Vec::new();
        for s in settings {
            let roots = load_roots(&s.name, &s.cert_roots)?;
            if s.private_ca {
                refuse_public_roots(&s.name, &roots)?;
            }
            all.roots.extend(roots.roots.iter().cloned());
            list.push(Connector {
                settings: s.clone(),
                roots,
            });
        }
        let handshake = match list.first() {
            None => None,
            Some(first) => {
                let inner = verifier(&first.settings.name, all, provider)?;
                Some(Arc::new(AnyClientCertificate { inner }) as Arc<dyn ClientCertVerifier>)
            }
        };
        Ok(Connectors { list, handshake })
    }

    /// The verifier for the STARTTLS handshake, when connectors exist.
    pub fn client_verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.handshake.clone()
    }

    /// The connectors (by index) that the client's certificate chain
    /// (leaf first) identifies: a name matches and the chain verifies
    /// against that connector's roots.
    pub fn identify(&self, chain: &[CertificateDer<'_>]) -> Vec<usize> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Vec::new();
        };
        let names = certificate_names(leaf);
        tracing::debug!(names = ?names, "client certificate presented");
        let now = UnixTime::now();
        let mut out = Vec::new();
        for (i, c) in self.list.iter().enumerate() {
            let named = names
                .iter()
                .any(|n| c.settings.cert_names.iter().any(|p| p.matches(n)));
            if !named {
                continue;
            }
            match chain_verifies(&c.roots, leaf, intermediates, now) {
                Ok(()) => out.push(i),
                Err(e) => {
                    tracing::info!(connector = %c.settings.name, error = %e, "client certificate carries a connector name but does not verify against its roots")
                }
            }
        }
        out
    }

    /// The connector's name, for logs and the client record.
    pub fn name(&self, index: usize) -> &str {
        self.list
            .get(index)
            .map(|c| c.settings.name.as_str())
            .unwrap_or("")
    }

    /// The first of `matched` whose tenant check the message passes.
    pub fn admit(&self, matched: &[usize], facts: &HeaderFacts) -> Result<usize, Vec<String>> {
        let mut why = Vec::new();
        for &i in matched {
            let Some(c) = self.list.get(i) else { continue };
            match tenant_check(&c.settings, facts) {
                Ok(()) => return Ok(i),
                Err(reason) => why.push(format!("{}: {reason}", c.settings.name)),
            }
        }
        Err(why)
    }
}

/// Why a message fails a connector's tenant check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantMismatch {
    Missing(&'static str),
    Different(&'static str),
    Conflicting(&'static str),
}

impl std::fmt::Display for TenantMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TenantMismatch::Missing(h) => write!(f, "no {h} header"),
            TenantMismatch::Different(h) => write!(f, "{h} names another organisation"),
            TenantMismatch::Conflicting(h) => write!(f, "{h} appears with different values"),
        }
    }
}

const TENANT_HEADER: &str = "X-MS-Exchange-CrossTenant-Id";
const ORG_HEADER: &str = "X-OriginatorOrg";

/// Checks the message's tenant headers against the connector. Each
/// configured value must be present, once or repeated identically: a
/// second, different value means someone added their own.
pub fn tenant_check(c: &ConnectorSettings, facts: &HeaderFacts) -> Result<(), TenantMismatch> {
    if let Some(want) = &c.tenant_id {
        single(&facts.cross_tenant_id, TENANT_HEADER, |v| {
            v.eq_ignore_ascii_case(want)
        })?;
    }
    if let Some(want) = &c.originator_org {
        single(&facts.originator_org, ORG_HEADER, |v| {
            let v = v.strip_suffix('.').unwrap_or(v);
            v.eq_ignore_ascii_case(want)
        })?;
    }
    Ok(())
}

fn single(
    h: &SingleHeader,
    name: &'static str,
    ok: impl Fn(&str) -> bool,
) -> Result<(), TenantMismatch> {
    match h {
        SingleHeader::Absent => Err(TenantMismatch::Missing(name)),
        SingleHeader::Conflicting => Err(TenantMismatch::Conflicting(name)),
        SingleHeader::One(v) if ok(v) => Ok(()),
        SingleHeader::One(_) => Err(TenantMismatch::Different(name)),
    }
}

/// Accepts any certificate at the handshake (trust is decided per
/// connector afterwards, see the module comment) but lets rustls'
/// verifier check the handshake signatures, so the client proves it holds
/// the certificate's key.
#[derive(Debug)]
struct AnyClientCertificate {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Not trust: `Connectors::identify` verifies per connector before
        // a certificate grants anything.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `private_ca` promises roots that issue certificates to this
/// organisation alone: a root of the public Web PKI (the Mozilla list
/// sealgate ships, by subject and key) breaks that promise.
fn refuse_public_roots(connector: &str, roots: &RootCertStore) -> Result<(), ConnectorError> {
    let public = roots.roots.iter().find(|a| {
        webpki_roots::TLS_SERVER_ROOTS.iter().any(|p| {
            p.subject.as_ref() == a.subject.as_ref()
                && p.subject_public_key_info.as_ref() == a.subject_public_key_info.as_ref()
        })
    });
    match public {
        None => Ok(()),
        Some(a) => Err(ConnectorError::PublicRoot {
            connector: connector.to_string(),
            subject: common_names(a.subject.as_ref()).join(", "),
        }),
    }
}

/// Whether `leaf` (with `intermediates`) chains to `roots`, is valid now
/// and may be used for clientAuth or serverAuth (see the module comment).
fn chain_verifies(
    roots: &RootCertStore,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), webpki::Error> {
    let cert = webpki::EndEntityCert::try_from(leaf)?;
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let verify = |usage| {
        cert.verify_for_usage(algs, &roots.roots, intermediates, now, usage, None, None)
            .map(|_| ())
    };
    match verify(webpki::KeyUsage::client_auth()) {
        #[allow(deprecated)]
        Err(webpki::Error::RequiredEkuNotFoundContext(_) | webpki::Error::RequiredEkuNotFound) => {
            verify(webpki::KeyUsage::server_auth())
        }
        other => other,
    }
}

fn verifier(
    connector: &str,
    roots: RootCertStore,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, ConnectorError> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| ConnectorError::Verifier {
            connector: connector.to_string(),
            detail: e.to_string(),
        })
}

/// Reads every CA certificate from PEM files and folders of PEM files.
fn load_roots(connector: &str, paths: &[PathBuf]) -> Result<RootCertStore, ConnectorError> {
    let mut store = RootCertStore::empty();
    for path in paths {
        for file in pem_files(connector, path)? {
            add_pem_file(connector, &file, &mut store)?;
        }
    }
    if store.is_empty() {
        return Err(ConnectorError::NoRoots {
            connector: connector.to_string(),
        });
    }
    Ok(store)
}

/// The file itself, or a folder's `*.pem` and `*.crt` files in name order.
fn pem_files(connector: &str, path: &Path) -> Result<Vec<PathBuf>, ConnectorError> {
    let read = |source| ConnectorError::Read {
        connector: connector.to_string(),
        path: path.to_path_buf(),
        source,
    };
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read)? {
        let p = entry.map_err(read)?.path();
        let pem = matches!(p.extension().and_then(|e| e.to_str()), Some("pem" | "crt"));
        if pem && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

fn add_pem_file(
    connector: &str,
    file: &Path,
    store: &mut RootCertStore,
) -> Result<(), ConnectorError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |detail: String| ConnectorError::BadRoot {
        connector: connector.to_string(),
        path: file.to_path_buf(),
        detail,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|e| bad(format!("cannot read: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    for cert in certs {
        store
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(())
}

/// The DNS names in the certificate's SAN extension; only when it has
/// none, its subject common names (RFC 6125 section 6.4.4: a CN is not
/// looked at when DNS SANs are present). Empty when the certificate
/// cannot be parsed.
fn certificate_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return Vec::new();
    };
    let names: Vec<String> = cert.valid_dns_names().map(str::to_string).collect();
    if names.is_empty() {
        return common_names(cert.subject());
    }
    names
}

/// OID 2.5.4.3 (commonName), DER contents.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The commonName values of a subject (the contents of the Name
/// SEQUENCE: RDN SETs of type-and-value SEQUENCEs). Values that are not
/// text we can compare (BMPString and the like) are skipped.
fn common_names(subject: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rdns = subject;
    while let Some((0x31, set, rest)) = tlv(rdns) {
        rdns = rest;
        let mut attrs = set;
        while let Some((0x30, attr, rest)) = tlv(attrs) {
            attrs = rest;
            let Some((0x06, oid, value)) = tlv(attr) else {
                continue;
            };
            if oid != CN_OID {
                continue;
            }
            // UTF8String, PrintableString, IA5String.
            if let Some((0x0c | 0x13 | 0x16, text, _)) = tlv(value) {
                if let Ok(s) = std::str::from_utf8(text) {
                    out.push(s.to_string());
                }
            }
        }
    }
    out
}

/// One DER tag-length-value: `(tag, contents, rest)`, or `None` when the
/// input is short or malformed.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes.iter().try_fold(0usize, |acc, &b| {
            acc.checked_mul(256)?.checked_add(b.into())
        })?;
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CertNamePattern;

    fn connector(tenant: Option<&str>, org: Option<&str>) -> ConnectorSettings {
        ConnectorSettings {
            name: "m365".into(),
            cert_names: vec![CertNamePattern::parse("*.mail.protection.outlook.com").unwrap()],
            cert_roots: Vec::new(),
            tenant_id: tenant.map(str::to_string),
            originator_org: org.map(str::to_string),
            private_ca: false,
        }
    }

    fn facts(headers: &str) -> HeaderFacts {
        super::super::data::header_facts(headers.as_bytes())
    }

    const T: &str = "0b6c2a2e-1111-4222-8333-444455556666";

    #[test]
    fn tenant_id_must_be_present_once_and_equal() {
        let c = connector(Some(T), None);
        let ok = [
            format!("X-MS-Exchange-CrossTenant-Id: {T}\r\n"),
            format!("x-ms-exchange-crosstenant-id:   {}  \r\n", T.to_uppercase()),
            format!("X-MS-Exchange-CrossTenant-Id:\r\n {T}\r\n"),
            format!("X-MS-Exchange-CrossTenant-Id: {T}\r\nX-MS-Exchange-CrossTenant-Id: {T}\r\n"),
        ];
        for h in ok {
            assert_eq!(tenant_check(&c, &facts(&h)), Ok(()), "{h:?}");
        }
        let other = "ffffffff-1111-4222-8333-444455556666";
        let bad = [
            (
                "Subject: x\r\n".to_string(),
                TenantMismatch::Missing(TENANT_HEADER),
            ),
            (
                format!("X-MS-Exchange-CrossTenant-Id: {other}\r\n"),
                TenantMismatch::Different(TENANT_HEADER),
            ),
            (
                "X-MS-Exchange-CrossTenant-Id:\r\n".to_string(),
                TenantMismatch::Missing(TENANT_HEADER),
            ),
            (
                format!("X-MS-Exchange-CrossTenant-Id: {T}x\r\n"),
                TenantMismatch::Different(TENANT_HEADER),
            ),
            (
                format!(
                    "X-MS-Exchange-CrossTenant-Id: {T}\r\nX-MS-Exchange-CrossTenant-Id: {other}\r\n"
                ),
                TenantMismatch::Conflicting(TENANT_HEADER),
            ),
            (
                format!(
                    "X-MS-Exchange-CrossTenant-Id: {other}\r\nX-MS-Exchange-CrossTenant-Id: {T}\r\n"
                ),
                TenantMismatch::Conflicting(TENANT_HEADER),
            ),
            (
                format!("X-MS-Exchange-CrossTenant-Idx: {T}\r\n"),
                TenantMismatch::Missing(TENANT_HEADER),
            ),
            // The organisation header does not stand in for the tenant id.
            (
                "X-OriginatorOrg: hospital.example\r\n".to_string(),
                TenantMismatch::Missing(TENANT_HEADER),
            ),
        ];
        for (h, want) in bad {
            assert_eq!(tenant_check(&c, &facts(&h)), Err(want), "{h:?}");
        }
    }

    #[test]
    fn originator_org_and_both_checks() {
        let c = connector(None, Some("hospital.example"));
        assert_eq!(
            tenant_check(&c, &facts("X-OriginatorOrg: Hospital.Example.\r\n")),
            Ok(())
        );
        assert_eq!(
            tenant_check(&c, &facts("X-OriginatorOrg: evil.example\r\n")),
            Err(TenantMismatch::Different(ORG_HEADER))
        );
        assert_eq!(
            tenant_check(&c, &facts("X-OriginatorOrg: sub.hospital.example\r\n")),
            Err(TenantMismatch::Different(ORG_HEADER))
        );
        let both = connector(Some(T), Some("hospital.example"));
        let h = format!("X-MS-Exchange-CrossTenant-Id: {T}\r\n");
        assert_eq!(
            tenant_check(&both, &facts(&h)),
            Err(TenantMismatch::Missing(ORG_HEADER))
        );
        let h =
            format!("X-MS-Exchange-CrossTenant-Id: {T}\r\nX-OriginatorOrg: hospital.example\r\n");
        assert_eq!(tenant_check(&both, &facts(&h)), Ok(()));
        // No tenant configured: nothing to check.
        assert_eq!(tenant_check(&connector(None, None), &facts("")), Ok(()));
    }

    #[test]
    fn der_reader_refuses_short_and_oversized_lengths() {
        assert_eq!(tlv(&[]), None);
        assert_eq!(tlv(&[0x30]), None);
        assert_eq!(tlv(&[0x30, 0x02, 0x00]), None);
        assert_eq!(tlv(&[0x30, 0x80]), None);
        assert_eq!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(tlv(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(
            tlv(&[0x30, 0x81, 0x01, 0xaa, 0xbb]),
            Some((0x30, &[0xaa][..], &[0xbb][..]))
        );
        // Every truncation of a real subject is handled without a panic.
        let subject = cn_subject("relay.hospital.example");
        assert_eq!(common_names(&subject), vec!["relay.hospital.example"]);
        for cut in 0..subject.len() {
            let _ = common_names(&subject[..cut]);
        }
    }

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
        file: PathBuf,
    }

    fn ca(dir: &Path, name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let file = dir.join(format!("{name}.pem"));
        std::fs::write(&file, cert.pem()).unwrap();
        Ca { cert, key, file }
    }

    fn leaf(
        ca: &Ca,
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Vec<CertificateDer<'static>> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
        vec![cert.der().clone(), ca.cert.der().clone()]
    }

    fn settings(name: &str, pattern: &str, roots: &Ca, tenant: &str) -> ConnectorSettings {
        ConnectorSettings {
            name: name.into(),
            cert_names: vec![CertNamePattern::parse(pattern).unwrap()],
            cert_roots: vec![roots.file.clone()],
            tenant_id: Some(tenant.into()),
            originator_org: None,
            private_ca: false,
        }
    }

    #[test]
    fn a_certificate_identifies_a_connector_only_by_its_own_names_and_roots() {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, CodeSigning, ServerAuth};
        let dir = tempfile::tempdir().unwrap();
        let partner = ca(dir.path(), "partner");
        let other = ca(dir.path(), "other");
        let t2 = "11111111-1111-4222-8333-444455556666";
        let connectors = Connectors::load(&[
            settings("a", "*.mail.protection.outlook.com", &partner, T),
            settings("b", "*.mail.protection.outlook.com", &partner, t2),
            // Names of `c`, roots of `other`.
            settings("c", "relay.hospital.example", &other, T),
        ])
        .unwrap();
        assert!(connectors.client_verifier().is_some());
        let good = leaf(&partner, &["eur01.mail.protection.outlook.com"], ClientAuth);
        assert_eq!(connectors.identify(&good), [0, 1]);
        // Only the leaf, no intermediates: the leaf is issued by the root.
        assert_eq!(connectors.identify(&good[..1]), [0, 1]);
        // The tenant picks among the matching connectors.
        let h = format!("X-MS-Exchange-CrossTenant-Id: {t2}\r\n");
        assert_eq!(connectors.admit(&[0, 1], &facts(&h)), Ok(1));
        assert!(connectors.admit(&[0, 1], &facts("")).is_err());
        assert!(connectors.admit(&[], &facts(&h)).is_err());

        for (case, chain) in [
            (
                "name of no connector",
                leaf(&partner, &["mx.other.test"], ClientAuth),
            ),
            // c's name, but from a's and b's CA.
            (
                "name of c, roots of a",
                leaf(&partner, &["relay.hospital.example"], ClientAuth),
            ),
            // a's name from c's CA.
            (
                "name of a, roots of c",
                leaf(&other, &["eur01.mail.protection.outlook.com"], ClientAuth),
            ),
            (
                "for code signing only",
                leaf(
                    &partner,
                    &["eur01.mail.protection.outlook.com"],
                    CodeSigning,
                ),
            ),
            ("no certificate", Vec::new()),
            (
                "not a certificate",
                vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])],
            ),
        ] {
            assert_eq!(connectors.identify(&chain), Vec::<usize>::new(), "{case}");
        }
        let from_c = leaf(&other, &["relay.hospital.example"], ClientAuth);
        assert_eq!(connectors.identify(&from_c), [2]);
        // A server certificate without clientAuth, as most public CAs
        // issue them since 2026, still identifies.
        let server_only = leaf(&partner, &["eur01.mail.protection.outlook.com"], ServerAuth);
        assert_eq!(connectors.identify(&server_only), [0, 1]);
    }

    /// RFC 6125: with DNS SANs present the subject CN is not a name of
    /// the certificate; without any, the CN is.
    #[test]
    fn the_common_name_counts_only_without_dns_names() {
        let dir = tempfile::tempdir().unwrap();
        let partner = ca(dir.path(), "partner");
        let connectors =
            Connectors::load(&[settings("c", "relay.hospital.example", &partner, T)]).unwrap();
        let with_cn = |sans: &[&str]| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(
                sans.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "relay.hospital.example");
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.signed_by(&key, &partner.cert, &partner.key).unwrap();
            vec![cert.der().clone()]
        };
        assert_eq!(
            connectors.identify(&with_cn(&["mx.other.test"])),
            Vec::<usize>::new()
        );
        assert_eq!(connectors.identify(&with_cn(&[])), [0]);
    }

    /// `private_ca` with a public root (the system's ISRG Root X1, also in
    /// the shipped Mozilla list) is refused; with a private root it loads.
    #[test]
    fn private_ca_refuses_public_roots() {
        let dir = tempfile::tempdir().unwrap();
        let own = ca(dir.path(), "own");
        let mut s = settings("c", "relay.hospital.example", &own, T);
        s.tenant_id = None;
        s.private_ca = true;
        assert!(Connectors::load(std::slice::from_ref(&s)).is_ok());
        s.cert_roots
            .push(PathBuf::from("/etc/ssl/certs/ISRG_Root_X1.pem"));
        match Connectors::load(&[s]) {
            Err(e @ ConnectorError::PublicRoot { .. }) => {
                assert!(e.to_string().contains("ISRG Root X1"), "{e}")
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn unusable_roots_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let partner = ca(dir.path(), "partner");
        let mut s = settings("a", "relay.hospital.example", &partner, T);
        // A folder: its .pem and .crt files count, nothing else.
        let folder = dir.path().join("roots");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("notes.txt"), "not pem").unwrap();
        s.cert_roots = vec![folder.clone()];
        assert!(matches!(
            Connectors::load(std::slice::from_ref(&s)),
            Err(ConnectorError::NoRoots { .. })
        ));
        std::fs::copy(&partner.file, folder.join("partner.crt")).unwrap();
        assert!(Connectors::load(std::slice::from_ref(&s)).is_ok());
        std::fs::write(
            folder.join("broken.pem"),
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(matches!(
            Connectors::load(std::slice::from_ref(&s)),
            Err(ConnectorError::BadRoot { .. })
        ));
        s.cert_roots = vec![dir.path().join("missing.pem")];
        assert!(Connectors::load(std::slice::from_ref(&s)).is_err());
        // No connectors: no certificate is asked for.
        assert!(Connectors::load(&[]).unwrap().client_verifier().is_none());
    }

    /// `SET { SEQUENCE { OID 2.5.4.10, "Org" } } SET { SEQUENCE { OID 2.5.4.3, cn } }`
    fn cn_subject(cn: &str) -> Vec<u8> {
        fn wrap(tag: u8, inner: &[u8]) -> Vec<u8> {
            let mut v = vec![tag, inner.len() as u8];
            v.extend_from_slice(inner);
            v
        }
        let org = wrap(
            0x31,
            &wrap(
                0x30,
                &[wrap(0x06, &[0x55, 4, 10]), wrap(0x0c, b"Org")].concat(),
            ),
        );
        let cn = wrap(
            0x31,
            &wrap(
                0x30,
                &[wrap(0x06, CN_OID), wrap(0x13, cn.as_bytes())].concat(),
            ),
        );
        [org, cn].concat()
    }
}
