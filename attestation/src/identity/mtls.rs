//! rustls verifiers for peers holding broker-issued identities (feature `mtls`): the relying
//! party's side. A SPIFFE certificate names its workload only in a URI SAN, never a DNS name, so
//! a client cannot use rustls's DNS-name check; [`SpiffeServerVerifier`] checks the chain to the
//! trust bundle with webpki (server-auth usage) and then the expected SPIFFE ID.
//! [`SpiffeClientVerifier`] wraps rustls's `WebPkiClientVerifier` (chain to the bundle,
//! client-auth usage, a certificate required) and admits only SPIFFE IDs of one trust domain.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, VerifierBuilderError, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use super::inspect_certificate;

/// The one SPIFFE ID of `cert`, as a rustls certificate error when it has none (or several).
pub fn peer_spiffe_id(cert: &CertificateDer<'_>) -> Result<String, rustls::Error> {
    let invalid = |why: String| {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            std::io::Error::other(why),
        ))))
    };
    inspect_certificate(cert)
        .map_err(|e| invalid(e.to_string()))?
        .spiffe_id()
        .map(str::to_owned)
        .ok_or_else(|| invalid("the certificate names no single SPIFFE ID".into()))
}

/// Verifies a server's certificate: its chain to `roots` and its SPIFFE ID, which must be exactly
/// the expected one (in place of a DNS name).
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    /// Trusts `roots` (the broker's bundle) for a server named `expected`
    /// (`spiffe://<trust-domain>/…`).
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: impl Into<String>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            roots,
            expected: expected.into(),
            provider,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if peer_spiffe_id(end_entity)? != self.expected {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies a client's certificate, which is required: its chain to the roots, and a SPIFFE ID in
/// one trust domain.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    /// `spiffe://<trust-domain>/`.
    prefix: String,
}

impl SpiffeClientVerifier {
    /// Trusts `roots` (the broker's bundle) for clients of `trust_domain`.
    pub fn new(
        roots: Arc<RootCertStore>,
        trust_domain: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, VerifierBuilderError> {
        Ok(Self {
            chain: WebPkiClientVerifier::builder_with_provider(roots, provider).build()?,
            prefix: format!("spiffe://{trust_domain}/"),
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if !peer_spiffe_id(end_entity)?.starts_with(&self.prefix) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
