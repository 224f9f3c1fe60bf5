//! Outbound `fetch` performs real HTTPS: a function fetches from a TLS server this test
//! starts on loopback with a certificate from a throwaway CA. Trusted through
//! `tern dev --ca-cert`, the request goes through; without it, certificate verification
//! refuses it.
mod support;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio_rustls::rustls;

struct Upstream {
    url: String,
    ca_pem: String,
}

/// An HTTPS server for `localhost` answering "secure hello", signed by a fresh CA.
async fn https_upstream() -> Upstream {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "tern test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&server_key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"secure hello"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    Upstream { url: format!("https://localhost:{port}/"), ca_pem: ca_cert.pem() }
}

fn fetcher(upstream: &str) -> Project {
    Project::with_manifest(
        &format!("name = \"fetcher\"\nmain = \"index.js\"\n[vars]\nUPSTREAM = \"{upstream}\"\n"),
        &[(
            "index.js",
            r#"export default { async fetch(request, env) {
                try {
                    const r = await fetch(env.UPSTREAM);
                    return new Response(`${r.status} ${await r.text()}`);
                } catch (e) {
                    return new Response(`failed: ${e.message} ${e.cause ?? ""}`, { status: 502 });
                }
            } };"#,
        )],
    )
}

#[tokio::test]
async fn fetch_speaks_https_to_a_trusted_upstream() {
    let upstream = https_upstream().await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &upstream.ca_pem).unwrap();
    let project = fetcher(&upstream.url);
    let ca_arg = ca.path().to_str().unwrap().to_string();
    // The upstream is on loopback, which functions reach only with --allow-loopback.
    let tern = Tern::dev_with(&[project.path()], &["--ca-cert", &ca_arg, "--allow-loopback"]);
    let a = get(&tern, "x", "/").await;
    assert_eq!((a.status, a.text.as_str()), (200, "200 secure hello"));
}

#[tokio::test]
async fn fetch_refuses_an_upstream_whose_certificate_it_cannot_verify() {
    let upstream = https_upstream().await;
    let project = fetcher(&upstream.url);
    let tern = Tern::dev_with(&[project.path()], &["--allow-loopback"]);
    let a = get(&tern, "x", "/").await;
    assert_eq!(a.status, 502, "{}", a.text);
    assert!(a.text.to_lowercase().contains("certificate"), "the reason names the certificate: {}", a.text);
}

#[test]
fn a_ca_file_without_certificates_stops_startup_with_its_name() {
    let project = fetcher("https://localhost:1/");
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "nothing here").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["dev", "--port", "0", "--ca-cert"])
        .arg(bad.path())
        .arg(project.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no PEM certificate") && stderr.contains(bad.path().to_str().unwrap()), "{stderr}");
}
