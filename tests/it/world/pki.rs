//! Test PKI: a private CA issuing server certificates, plus self-signed certs.
//!
//! Everything uses rcgen (ECDSA P-256 keys) and the rustls ring provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A leaf (or self-signed) certificate with its private key.
#[derive(Debug)]
pub struct TestCert {
    /// PEM of the leaf certificate only.
    pub cert_pem: String,
    /// PEM of the PKCS#8 private key.
    pub key_pem: String,
    /// PEM of the leaf followed by the issuing CA certificate (just the leaf when
    /// self-signed).
    pub chain_pem: String,
    /// DER of the leaf certificate.
    pub cert_der: CertificateDer<'static>,
    /// DER (PKCS#8) of the private key.
    pub key_der: PrivatePkcs8KeyDer<'static>,
    /// DER of the issuing CA certificate (None when self-signed).
    pub issuer_der: Option<CertificateDer<'static>>,
}

impl Clone for TestCert {
    fn clone(&self) -> Self {
        TestCert {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            chain_pem: self.chain_pem.clone(),
            cert_der: self.cert_der.clone(),
            key_der: self.key_der.clone_key(),
            issuer_der: self.issuer_der.clone(),
        }
    }
}

impl TestCert {
    /// The private key as a rustls `PrivateKeyDer`.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }

    /// Leaf followed by the issuer (if any), as DER.
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        let mut v = vec![self.cert_der.clone()];
        if let Some(i) = &self.issuer_der {
            v.push(i.clone());
        }
        v
    }

    /// Writes `<stem>.crt` (leaf certificate PEM only) and `<stem>.key` (PKCS#8 PEM) into
    /// `dir`; returns `(cert_path, key_path)`.
    pub fn write(&self, dir: impl AsRef<Path>, stem: &str) -> Result<(PathBuf, PathBuf)> {
        self.write_inner(dir.as_ref(), stem, &self.cert_pem)
    }

    /// Like [`TestCert::write`] but the certificate file holds the full chain
    /// (leaf then CA).
    pub fn write_chain(&self, dir: impl AsRef<Path>, stem: &str) -> Result<(PathBuf, PathBuf)> {
        self.write_inner(dir.as_ref(), stem, &self.chain_pem)
    }

    fn write_inner(&self, dir: &Path, stem: &str, cert: &str) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert)
            .with_context(|| format!("write {}", cert_path.display()))?;
        std::fs::write(&key_path, &self.key_pem)
            .with_context(|| format!("write {}", key_path.display()))?;
        Ok((cert_path, key_path))
    }

    /// A rustls server config presenting this certificate (chain), TLS 1.2 and 1.3.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(self.chain_der(), self.private_key())?;
        Ok(Arc::new(cfg))
    }
}

/// The ring crypto provider, explicitly (never the process default).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config trusting exactly `roots` (ring provider, TLS 1.2 + 1.3).
pub fn client_config_with_roots(roots: RootCertStore) -> Result<Arc<rustls::ClientConfig>> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A private certificate authority.
pub struct TestCa {
    pub name: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("name", &self.name).finish()
    }
}

impl TestCa {
    /// Creates a new self-signed CA whose subject CN (and O) is `name`.
    pub fn new(name: &str) -> Self {
        Self::try_new(name).expect("creating test CA")
    }

    pub fn try_new(name: &str) -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            name: name.to_string(),
            cert,
            key,
        })
    }

    /// PEM of the CA certificate.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// DER of the CA certificate.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Writes the CA certificate as `<dir>/<name>-ca.pem` (name sanitised) and returns
    /// the path.
    pub fn write_pem(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let stem: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{stem}-ca.pem"));
        std::fs::write(&path, self.cert_pem())
            .with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// A root store containing only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert_der())
            .expect("test CA certificate is a valid trust anchor");
        roots
    }

    /// A rustls client config trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config_with_roots(self.root_store()).expect("client config")
    }

    /// Issues a server certificate (EKU serverAuth + clientAuth) for `names`
    /// (DNS names or IP addresses; the first one is also the CN).
    pub fn issue(&self, names: &[&str]) -> TestCert {
        self.issue_with(names, |_| {})
            .expect("issuing test certificate")
    }

    /// Issues a certificate that expired in 2001 (valid 2000-01-01 .. 2001-01-01).
    pub fn issue_expired(&self, names: &[&str]) -> TestCert {
        self.issue_with(names, |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
        .expect("issuing expired test certificate")
    }

    /// Issues a certificate after letting `customize` adjust the rcgen parameters
    /// (validity, EKU, SANs...). Use `rcgen::date_time_ymd` for dates.
    pub fn issue_with(
        &self,
        names: &[&str],
        customize: impl FnOnce(&mut CertificateParams),
    ) -> Result<TestCert> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params(names)?;
        params.use_authority_key_identifier_extension = true;
        customize(&mut params);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let cert_pem = cert.pem();
        let chain_pem = format!("{}{}", cert_pem, self.cert.pem());
        Ok(TestCert {
            cert_pem,
            key_pem: key.serialize_pem(),
            chain_pem,
            cert_der: cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
            issuer_der: Some(self.cert_der()),
        })
    }
}

fn leaf_params(names: &[&str]) -> Result<CertificateParams> {
    let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("sealgate test"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// A self-signed leaf certificate for `names` (not a CA; will not validate under WebPKI
/// unless pinned, e.g. via DANE-EE).
pub fn self_signed(names: &[&str]) -> TestCert {
    self_signed_with(names, |_| {}).expect("self-signed test certificate")
}

/// Self-signed certificate after customizing the rcgen parameters.
pub fn self_signed_with(
    names: &[&str],
    customize: impl FnOnce(&mut CertificateParams),
) -> Result<TestCert> {
    let key = KeyPair::generate()?;
    let mut params = leaf_params(names)?;
    customize(&mut params);
    let cert = params.self_signed(&key)?;
    let cert_pem = cert.pem();
    Ok(TestCert {
        chain_pem: cert_pem.clone(),
        cert_pem,
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
        issuer_der: None,
    })
}
