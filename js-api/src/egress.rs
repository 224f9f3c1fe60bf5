//! The one seam every outbound `fetch` passes through.
//!
//! deno_fetch performs the HTTP(S) request; before it connects it asks the
//! [`PermissionsContainer`] in the isolate's state (`check_net_url` for the URL, then
//! `check_net_resolved` for each address the host name resolves to), resolves names with
//! the resolver in its [`Options`], and verifies TLS against the root store given there.
//! Tern builds all of these here from an [`Egress`], so the policy of the limits issue
//! (private ranges, metadata addresses, hop counts) lands in this module and nowhere else.

use std::sync::Arc;

use deno_error::JsErrorBox;
use deno_fetch::Options;
use deno_permissions::{PermissionsContainer, RuntimePermissionDescriptorParser};
use deno_tls::RootCertStoreProvider;
use deno_tls::rustls::RootCertStore;

/// What outbound requests a function may make.
#[derive(Debug, Clone, Default)]
pub enum EgressPolicy {
    /// Any destination. The default until the egress policy lands; `tern dev` uses it.
    #[default]
    AllowAll,
}

/// Everything about a function's outbound requests.
#[derive(Clone, Default)]
pub struct Egress {
    pub policy: EgressPolicy,
    /// Certificate authorities trusted for HTTPS; `None` means the Mozilla roots alone.
    pub roots: Option<Arc<TrustedRoots>>,
}

/// The Mozilla roots (webpki-roots) plus extra certificate authorities, for example a
/// company CA or a local test CA.
pub struct TrustedRoots(RootCertStore);

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(String),
    #[error("{0}: {1}")]
    Unreadable(String, String),
}

impl TrustedRoots {
    /// The Mozilla roots plus every certificate in the PEM texts (named for errors).
    pub fn with_extra_pem<'a>(pems: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Self, TrustError> {
        let mut store = deno_tls::create_default_root_cert_store();
        for (name, pem) in pems {
            let mut reader = std::io::BufReader::new(pem);
            let mut added = 0;
            for cert in deno_tls::rustls_pemfile::certs(&mut reader) {
                let cert = cert.map_err(|e| TrustError::Unreadable(name.to_string(), e.to_string()))?;
                store.add(cert).map_err(|e| TrustError::Unreadable(name.to_string(), e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(TrustError::NoCertificate(name.to_string()));
            }
        }
        Ok(Self(store))
    }
}

impl RootCertStoreProvider for TrustedRoots {
    fn get_or_try_init(&self) -> Result<&RootCertStore, JsErrorBox> {
        Ok(&self.0)
    }
}

/// The `User-Agent` a function's outbound requests carry unless it sets one.
pub const USER_AGENT: &str = concat!("Tern/", env!("CARGO_PKG_VERSION"));

pub fn fetch_options(egress: &Egress) -> Options {
    Options {
        user_agent: USER_AGENT.to_string(),
        root_cert_store_provider: egress.roots.clone().map(|r| r as Arc<dyn RootCertStoreProvider>),
        ..Default::default()
    }
}

pub fn permissions(policy: &EgressPolicy) -> PermissionsContainer {
    let parser = Arc::new(RuntimePermissionDescriptorParser::new(sys_traits::impls::RealSys));
    match policy {
        EgressPolicy::AllowAll => PermissionsContainer::allow_all(parser),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_roots_need_a_certificate_and_say_which_file() {
        let e = TrustedRoots::with_extra_pem([("ca.pem", &b"not a certificate"[..])]).err().unwrap();
        assert_eq!(e.to_string(), "ca.pem: no PEM certificate in it");
        assert!(TrustedRoots::with_extra_pem([]).is_ok());
    }
}
