//! A node's (or a relay's) identity on the distribution channel: its private key (generated
//! on the node, never sent), the certificate the control plane issued for it at enrolment,
//! the control plane's CA certificate and bundle-signing key, all kept in the node's data
//! directory (`identity.json`, owner-only) so that a restarted node needs neither the join
//! token nor the control plane to start serving. Also the TLS configurations built from it:
//! a node's client side, and a relay's server side towards the nodes below it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tern_proto::VerifyingKey;
use tern_proto::distribution::{ALPN, NodeInfo};

#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    key_pem: String,
    certificate_pem: String,
    ca_pem: String,
    /// The control plane's Ed25519 public key, hex.
    signing_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {what}")]
    File { path: PathBuf, what: String },
    /// Worth trying again later: the control plane could not be reached or failed.
    #[error("cannot enrol with the control plane at {url}: {what}")]
    Unreachable { url: String, what: String },
    /// Not worth trying again: the control plane said no.
    #[error("the control plane refused the enrolment ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the enrolment answer is unusable: {0}")]
    BadAnswer(String),
}

const FILE: &str = "identity.json";

impl Identity {
    /// The identity kept in `dir`, if the node enrolled before.
    pub fn load(dir: &Path) -> Result<Option<Self>, IdentityError> {
        let path = dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(IdentityError::File { path, what: format!("cannot read it: {e}") }),
        };
        let identity: Self = serde_json::from_slice(&bytes)
            .map_err(|e| IdentityError::File { path: path.clone(), what: format!("not a node identity: {e}") })?;
        identity.verifying_key().map_err(|e| IdentityError::File { path, what: e })?;
        Ok(Some(identity))
    }

    /// Enrols `node` (a relay with `relay`) with the control plane at `url` using `token`,
    /// and keeps the identity in `dir`.
    pub async fn enroll(
        dir: &Path,
        url: &str,
        token: &str,
        node: &NodeInfo,
        relay: bool,
    ) -> Result<Self, IdentityError> {
        let unreachable = |what: String| IdentityError::Unreachable { url: url.to_string(), what };
        let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::BadAnswer(e.to_string()))?;
        let csr = rcgen::CertificateParams::new(vec![node.name.clone()])
            .and_then(|params| params.serialize_request(&key))
            .and_then(|csr| csr.pem())
            .map_err(|e| IdentityError::BadAnswer(e.to_string()))?;
        let body = serde_json::json!({ "node": node, "csr": csr }).to_string();
        let route = if relay { "relays" } else { "nodes" };
        let request = http::Request::post(format!("{}/v1/{route}", url.trim_end_matches('/')))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(format!("bad URL: {e}")))?;
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let response = client.request(request).await.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if status.is_server_error() {
            return Err(unreachable(format!("it answered {status}")));
        }
        if !status.is_success() {
            let message = answer["message"].as_str().unwrap_or("no message").to_string();
            return Err(IdentityError::Refused { status: status.as_u16(), message });
        }
        let field = |name: &str| {
            answer[name].as_str().map(str::to_string).ok_or_else(|| IdentityError::BadAnswer(format!("no {name}")))
        };
        let identity = Self {
            name: node.name.clone(),
            key_pem: key.serialize_pem(),
            certificate_pem: field("certificate")?,
            ca_pem: field("ca")?,
            signing_key: field("signing_key")?,
        };
        identity.verifying_key().map_err(IdentityError::BadAnswer)?;
        identity.client_config().map_err(IdentityError::BadAnswer)?;
        identity.save(dir)?;
        Ok(identity)
    }

    fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        let path = dir.join(FILE);
        let temporary = dir.join(format!("{FILE}.tmp"));
        let fail =
            |e: std::io::Error| IdentityError::File { path: path.clone(), what: format!("cannot write it: {e}") };
        let _ = std::fs::remove_file(&temporary);
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary).map_err(fail)?;
        std::io::Write::write_all(&mut file, &serde_json::to_vec_pretty(self).expect("identity serializes"))
            .and_then(|()| file.sync_all())
            .map_err(fail)?;
        std::fs::rename(&temporary, &path).map_err(fail)
    }

    /// The key bundles must be signed with.
    pub fn verifying_key(&self) -> Result<VerifyingKey, String> {
        let bytes: Option<Vec<u8>> = (self.signing_key.len() == 64)
            .then(|| (0..32).map(|i| u8::from_str_radix(&self.signing_key[2 * i..2 * i + 2], 16).ok()).collect())
            .flatten();
        bytes
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| "the signing key is not 32 bytes of hex".to_string())
    }

    /// This identity's certificate, key, and a root store holding only the control plane's CA.
    fn tls_parts(&self) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>, rustls::RootCertStore), String> {
        let certificate = CertificateDer::from_pem_slice(self.certificate_pem.as_bytes()).map_err(|e| e.to_string())?;
        let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).map_err(|e| e.to_string())?;
        Ok((certificate, key, roots))
    }

    /// TLS for the distribution channel: this node's certificate, and only the control
    /// plane's CA trusted.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, String> {
        let (certificate, key, roots) = self.tls_parts()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![certificate], key)
            .map_err(|e| e.to_string())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport()));
        Ok(config)
    }

    /// A relay's distribution endpoint towards its nodes: its certificate (issued for
    /// [`tern_proto::distribution::SERVER_NAME`] too), and only clients with a certificate
    /// from the control plane's CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, String> {
        let (certificate, key, roots) = self.tls_parts()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![certificate], key)
            .map_err(|e| e.to_string())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport()));
        Ok(config)
    }
}

/// Either end notices a vanished peer within seconds, and NAT bindings stay open.
pub fn transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(2)));
    transport.max_idle_timeout(Some(std::time::Duration::from_secs(8).try_into().expect("small")));
    transport
}

/// SHA-256 of a certificate's DER, as 64 hex digits: how the control plane recognises an
/// enrolled node or relay on the distribution channel.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of the certificate `connection`'s peer presented, if any.
pub fn peer_fingerprint(connection: &quinn::Connection) -> Option<String> {
    let chain = connection.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|certificate| fingerprint(certificate))
}
