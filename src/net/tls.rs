//! Client TLS (delivery, the probes, HTTPS fetches): rustls with the
//! WebPKI roots plus `[tls] extra_ca`,
//! TLS 1.2 and 1.3 only.
//!
//! Two client configurations: `verified` fails the handshake on a bad
//! certificate (for the hops that must be authenticated), `opportunistic`
//! completes it whatever the certificate (RFC 7435: encryption without
//! authentication beats plaintext) and the certificate is checked after the
//! handshake so the evidence can say whether it would have verified.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// What the TLS session to the remote looked like.
#[derive(Debug, Clone, serde::Serialize, Default, PartialEq, Eq)]
pub struct TlsEvidence {
    pub version: String,
    pub cipher: String,
    /// Whether the certificate chain verified for the host name under the
    /// configured roots.
    pub cert_verified: bool,
    /// Why it did not verify.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_cert_sha256: Option<String>,
    /// The TLSA record that authenticated the server (DANE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dane_match: Option<String>,
}

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("tls.extra_ca {path}: {reason}")]
    ExtraCa { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// The trust and client configurations every outbound connection uses.
#[derive(Clone)]
pub struct TlsClients {
    pub verified: Arc<rustls::ClientConfig>,
    pub opportunistic: Arc<rustls::ClientConfig>,
    verifier: Arc<WebPkiServerVerifier>,
}

impl std::fmt::Debug for TlsClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClients")
    }
}

/// The crypto provider used everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The WebPKI roots plus every certificate in `extra_ca` files.
pub fn root_store(extra_ca: &[std::path::PathBuf]) -> Result<RootCertStore, TlsSetupError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra_ca {
        let err = |reason: String| TlsSetupError::ExtraCa {
            path: path.display().to_string(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate in the file".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| err(e.to_string()))?;
        }
    }
    Ok(roots)
}

impl TlsClients {
    /// Builds both configurations from the configured trust.
    pub fn new(extra_ca: &[std::path::PathBuf]) -> Result<TlsClients, TlsSetupError> {
        let provider = provider();
        let roots = Arc::new(root_store(extra_ca)?);
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
        let versions: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        let verified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        let opportunistic = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        Ok(TlsClients {
            verified: Arc::new(verified),
            opportunistic: Arc::new(opportunistic),
            verifier,
        })
    }

    /// Checks a peer chain against the trusted roots for `name`, after an
    /// opportunistic handshake; `Err` says why it does not verify.
    pub fn check(&self, chain: &[CertificateDer<'_>], name: &str) -> Result<(), String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err("no certificate presented".into());
        };
        let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        self.verifier
            .verify_server_cert(leaf, intermediates, &server_name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Completes handshakes whatever the certificate (signatures over the
/// handshake are still checked); used only for opportunistic TLS, where the
/// alternative is plaintext.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The conventional name of a TLS version (`TLSv1.3`), as OpenSSL and
/// Postfix logs spell it.
pub fn version_name(v: Option<rustls::ProtocolVersion>) -> String {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
        Some(other) => format!("{other:?}"),
        None => "TLS".into(),
    }
}
