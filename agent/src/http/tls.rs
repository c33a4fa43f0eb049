//! HTTPS toward LAN backends (`backend_https`).
//!
//! The certificate is deliberately NOT verified. Why this is acceptable here:
//! - LAN devices (NAS, routers, cameras, printers) serve self-signed certificates, or ones for
//!   names the gateway cannot know; verifying would make `backend_https` unusable.
//! - The client's TLS was already terminated at the hub, which verified nothing of the LAN
//!   either; the hub-to-gateway leg is inside the WireGuard tunnel.
//! - This last hop never leaves the gateway's own LAN; TLS here exists because the device
//!   insists on it, not to authenticate it.
//!
//! The handshake signatures are still checked (the peer must hold the key of the certificate it
//! shows), and SNI carries the route's domain so virtual-hosted backends pick the right site.

use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Accepts any server certificate (see the module documentation for why).
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

/// The client configuration for LAN backends (ring provider, TLS 1.2 and 1.3, no verification).
pub(crate) fn client_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// TLS handshake over `tcp` with SNI `domain` (an IP address or an invalid name sends no SNI).
pub(crate) async fn connect(
    tcp: TcpStream,
    domain: &str,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let name = match ServerName::try_from(domain.to_owned()) {
        Ok(n) => n,
        Err(_) => ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
    };
    TlsConnector::from(config).connect(name, tcp).await
}
