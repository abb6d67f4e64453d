//! TLS for https and mcp+https probes: the system's trusted roots, loaded
//! once and only when a target needs them, and classification of handshake
//! failures.

use std::io;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tether_resilience::failure::TlsError;
use tether_resilience::{Cause, Failure, Phase};

/// A client configuration that verifies certificates against the system's
/// roots, or, when `insecure`, accepts any certificate (the handshake's
/// signatures are still checked).
pub(crate) fn client_config(insecure: bool) -> Result<Arc<ClientConfig>, Failure> {
    type Built = Result<Arc<ClientConfig>, String>;
    static VERIFIED: OnceLock<Built> = OnceLock::new();
    static INSECURE: OnceLock<Built> = OnceLock::new();
    let cell = if insecure { &INSECURE } else { &VERIFIED };
    cell.get_or_init(|| build(insecure).map(Arc::new))
        .clone()
        .map_err(|e| {
            Failure::new(Phase::Tls, Cause::LocalResource, format!("set up TLS: {e}"))
                .with_verdict(tether_resilience::Verdict::Permanent)
        })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(insecure: bool) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(system_roots())
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for cert in loaded.certs {
        // A malformed system certificate is skipped, not fatal: the others
        // still verify.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!(
            "no trusted root certificates found on this system; https targets will fail verification"
        );
    }
    roots
}

/// Names a TLS handshake failure while doing `what`.
pub(crate) fn classify(err: &io::Error, what: &str) -> Failure {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        let failure = Failure::from_io(err, Phase::Tls, what);
        return match failure.cause {
            Cause::ResetBeforeResponse => Failure::tls(
                TlsError::Handshake,
                what,
                "the peer closed the connection during the TLS handshake",
            ),
            _ => failure,
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => {
            Failure::tls(TlsError::Certificate, what, certificate_words(cert))
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            Failure::tls(TlsError::NotTls, what, tls)
        }
        rustls::Error::AlertReceived(alert) => Failure::tls(
            TlsError::Handshake,
            what,
            format!("the server refused the handshake ({alert:?})"),
        ),
        other => Failure::tls(TlsError::Handshake, what, other),
    }
}

fn certificate_words(err: &CertificateError) -> String {
    match err {
        CertificateError::UnknownIssuer => {
            "certificate is not trusted: unknown issuer (self-signed, or a private CA?)".to_string()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate has expired".to_string()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate is not valid yet (is the clock right?)".to_string()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "certificate is not valid for this host name".to_string()
        }
        other => format!("invalid certificate: {other:?}"),
    }
}

/// The server name to verify, from a URL host.
pub(crate) fn server_name(host: &url::Host<&str>) -> Result<ServerName<'static>, String> {
    match host {
        url::Host::Domain(d) => ServerName::try_from(d.to_string())
            .map_err(|e| format!("'{d}' is not a TLS server name ({e})")),
        url::Host::Ipv4(ip) => Ok(ServerName::IpAddress(std::net::IpAddr::V4(*ip).into())),
        url::Host::Ipv6(ip) => Ok(ServerName::IpAddress(std::net::IpAddr::V6(*ip).into())),
    }
}

/// Accepts any certificate, for `#insecure` targets.
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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
