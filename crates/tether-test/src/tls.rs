//! A TLS server with a self-signed certificate, in front of a script.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

use crate::http::{Io, Reply, ScriptServer};

/// Serves `replies` over TLS with a fresh self-signed certificate for
/// `localhost` and 127.0.0.1, which no system trusts.
pub async fn self_signed(replies: Vec<Reply>) -> ScriptServer {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    ScriptServer::serve_with(listener, replies, move |stream| {
        let acceptor = acceptor.clone();
        Box::pin(async move {
            acceptor
                .accept(stream)
                .await
                .ok()
                .map(|s| Box::new(s) as Box<dyn Io>)
        })
    })
}
