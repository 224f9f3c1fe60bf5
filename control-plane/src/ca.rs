//! The control plane's certificate authority, which makes the distribution channel mutual
//! TLS: it issues each node's certificate at enrollment (from the node's own key, sent as a
//! certificate signing request, with the subject replaced by the enrolled name), each
//! relay's (which also serves nodes under the distribution name), and the control plane's
//! own distribution certificate. Its key (`ca-key.pem`, owner-only) and
//! certificate (`ca.pem`) are created at first start under the data directory and kept.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::keys::{DataDirError, read_or_create};

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM, as nodes are given it.
    pub certificate_pem: String,
    certificate_der: CertificateDer<'static>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the certificate signing request is not valid: {0}")]
    BadRequest(String),
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
}

impl Authority {
    /// Loads the authority under `dir`, creating it at first start.
    pub fn open(dir: &Path) -> Result<Self, DataDirError> {
        let key_path = dir.join("ca-key.pem");
        let key_pem = read_or_create(&key_path, || {
            KeyPair::generate().map(|k| k.serialize_pem().into_bytes()).map_err(|e| e.to_string())
        })
        .map_err(|e| DataDirError::new(&key_path, e))?;
        let key = KeyPair::from_pem(&String::from_utf8_lossy(&key_pem)).map_err(|e| DataDirError::new(&key_path, e))?;
        let cert_path = dir.join("ca.pem");
        let cert_pem = read_or_create(&cert_path, || {
            ca_params().self_signed(&key).map(|c| c.pem().into_bytes()).map_err(|e| e.to_string())
        })
        .map_err(|e| DataDirError::new(&cert_path, e))?;
        let certificate_pem = String::from_utf8_lossy(&cert_pem).into_owned();
        let certificate_der = rustls::pki_types::pem::PemObject::from_pem_slice(&cert_pem)
            .map_err(|e| DataDirError::new(&cert_path, format!("not a PEM certificate: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&certificate_pem, key).map_err(|e| DataDirError::new(&cert_path, e))?;
        Ok(Self { issuer, certificate_pem, certificate_der })
    }

    /// A certificate for node `name` from its signing request (PEM).
    pub fn issue_node(&self, name: &str, csr_pem: &str) -> Result<String, CaError> {
        self.issue(name, csr_pem, false)
    }

    /// A certificate for relay `name`: a client of the control plane, and a server that
    /// nodes accept under [`tern_proto::distribution::SERVER_NAME`].
    pub fn issue_relay(&self, name: &str, csr_pem: &str) -> Result<String, CaError> {
        self.issue(name, csr_pem, true)
    }

    fn issue(&self, name: &str, csr_pem: &str, relay: bool) -> Result<String, CaError> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadRequest(e.to_string()))?;
        let mut names = vec![name.to_string()];
        if relay {
            names.push(tern_proto::distribution::SERVER_NAME.to_string());
        }
        let mut params = CertificateParams::new(names).map_err(|e| CaError::Issue(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = if relay {
            vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        csr.params = params;
        csr.signed_by(&self.issuer).map(|c| c.pem()).map_err(|e| CaError::Issue(e.to_string()))
    }

    /// The TLS configuration of the distribution endpoint: a fresh server certificate for
    /// [`tern_proto::distribution::SERVER_NAME`], and only clients with a certificate from
    /// this authority.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, CaError> {
        let issue = |e: &dyn std::fmt::Display| CaError::Issue(e.to_string());
        let key = KeyPair::generate().map_err(|e| issue(&e))?;
        let mut params =
            CertificateParams::new(vec![tern_proto::distribution::SERVER_NAME.to_string()]).map_err(|e| issue(&e))?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| issue(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.certificate_der.clone()).map_err(|e| issue(&e))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| issue(&e))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| issue(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert.der().clone()], key_der)
            .map_err(|e| issue(&e))?;
        config.alpn_protocols = vec![tern_proto::distribution::ALPN.to_vec()];
        Ok(config)
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "Tern control plane CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

pub use tern_distribution::identity::fingerprint;
