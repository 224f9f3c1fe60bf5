//! The egress policy through the real binary: outbound `fetch` to loopback, private,
//! link-local and metadata addresses is refused in every spelling, through redirects and
//! through DNS, unless `tern.toml` `[egress] allow` or `tern dev --allow-loopback` opens it;
//! requests looping through Tern are cut after 16 hops.
//!
//! A plain HTTP server on 127.0.0.1 stands in for the internal service an attacker wants:
//! a request the policy let through would reach it and say `REACHED`.

mod support;

use std::net::SocketAddr;

use support::{Project, Tern, get};

const PROBE: &str = r#"export default { async fetch(req) {
  const target = new URL(req.url).searchParams.get("u");
  try { const r = await fetch(target); return new Response("REACHED " + r.status + " " + await r.text()); }
  catch (e) { return new Response("refused: " + e.name + ": " + e.message); }
} };"#;

/// An HTTP/1.1 server on 127.0.0.1: `/` answers `internal` (`internal, told the policy` if
/// Tern's internal `tern-egress` header reached it), `/to?u=URL` redirects there.
async fn internal_service() -> SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let body = if req.headers().contains_key("tern-egress") {
                        "internal, told the policy"
                    } else {
                        "internal"
                    };
                    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    if let Some(target) = req.uri().query().and_then(|q| q.strip_prefix("u=")) {
                        *response.status_mut() = http::StatusCode::FOUND;
                        response.headers_mut().insert("location", target.parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn probe(tern: &Tern, host: &str, target: &str) -> String {
    let query: String = url_encode(target);
    get(tern, host, &format!("/?u={query}")).await.text
}

fn url_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[tokio::test]
async fn every_spelling_of_a_private_destination_is_refused() {
    let service = internal_service().await;
    let port = service.port();
    let p = Project::new("probe", &[("index.js", PROBE)]);
    let tern = Tern::dev(&[p.path()]);
    let spellings = [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),  // a name that resolves to loopback
        format!("http://2130706433:{port}/"), // decimal
        format!("http://0x7f000001:{port}/"), // hex
        format!("http://0177.0.0.1:{port}/"), // octal
        format!("http://127.1:{port}/"),      // short form
        format!("http://[::ffff:127.0.0.1]:{port}/"), // IPv4-mapped IPv6
        format!("http://[::1]:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_string(), // cloud metadata
        "http://metadata.google.internal/".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://172.16.0.1/".to_string(),
        "http://192.168.1.1/".to_string(),
        "http://100.64.0.1/".to_string(), // CGNAT
        "http://[fd00:ec2::254]/".to_string(),
        "http://[fe80::1]/".to_string(),
    ];
    for target in &spellings {
        let answer = probe(&tern, "probe.localhost", target).await;
        assert!(answer.starts_with("refused: TypeError: fetch to"), "{target}: {answer}");
        assert!(answer.contains("refused by the egress policy"), "{target}: {answer}");
    }
}

#[tokio::test]
async fn allow_loopback_opens_loopback_only_and_redirects_are_checked_at_every_hop() {
    let service = internal_service().await;
    let p = Project::new("probe", &[("index.js", PROBE)]);
    let tern = Tern::dev_with(&[p.path()], &["--allow-loopback"]);
    assert_eq!(probe(&tern, "probe.localhost", &format!("http://{service}/")).await, "REACHED 200 internal");
    assert!(probe(&tern, "probe.localhost", "http://10.0.0.1/").await.contains("refused by the egress policy"));
    // A reachable server that redirects to a refused one: the redirect is refused.
    let redirect = format!("http://{service}/to?u=http://169.254.169.254/latest/meta-data/");
    let answer = probe(&tern, "probe.localhost", &redirect).await;
    assert!(answer.contains("refused by the egress policy"), "{answer}");
}

#[tokio::test]
async fn bug_a_redirect_to_a_private_ipv6_literal_was_followed() {
    // deno_permissions' deny list takes IPv6 addresses, not ranges: the first URL was
    // checked by Tern's op, but a redirect hop only by that list.
    let service = internal_service().await;
    let p = Project::new("probe", &[("index.js", PROBE)]);
    let tern = Tern::dev_with(&[p.path()], &["--allow-loopback"]);
    for target in ["http://[fc00::1]/", "http://[fe80::2]/", "http://[fd12:3456::1]:8080/", "http://[::ffff:a00:1]/"] {
        let redirect = format!("http://{service}/to?u={target}");
        let answer = probe(&tern, "probe.localhost", &redirect).await;
        assert!(answer.contains("refused by the egress policy"), "{target}: {answer}");
    }
}

#[tokio::test]
async fn egress_allow_in_tern_toml_opens_exactly_what_it_names() {
    let service = internal_service().await;
    let p = Project::with_manifest(
        "name = \"allowed\"\nmain = \"index.js\"\n[egress]\nallow = [\"127.0.0.1\"]\n",
        &[("index.js", PROBE)],
    );
    let other = Project::new("other", &[("index.js", PROBE)]);
    let tern = Tern::dev(&[p.path(), other.path()]);
    let target = format!("http://{service}/");
    assert_eq!(probe(&tern, "allowed.localhost", &target).await, "REACHED 200 internal");
    let port = service.port();
    let answer = probe(&tern, "allowed.localhost", &format!("http://127.0.0.2:{port}/")).await;
    assert!(answer.contains("refused by the egress policy"), "127.0.0.2 is not allowed: {answer}");
    let answer = probe(&tern, "other.localhost", &target).await;
    assert!(answer.contains("refused by the egress policy"), "another function gains nothing: {answer}");
}

#[tokio::test]
async fn a_function_fetching_itself_is_cut_after_16_hops() {
    let p = Project::new(
        "narcissus",
        &[(
            "index.js",
            r#"export default { async fetch(req) {
                const hops = req.headers.get("tern-hops") ?? "0";
                const r = await fetch(req.url);
                return new Response(r.body, { status: r.status, headers: { "tern-error": r.headers.get("tern-error") ?? "", "x-deepest": r.headers.get("x-deepest") ?? hops } });
            } };"#,
        )],
    );
    let tern = Tern::dev_with(&[p.path()], &["--allow-loopback"]);
    // The only project answers any Host; its own address makes `request.url` fetchable.
    let a = get(&tern, &tern.addr.to_string(), "/").await;
    assert_eq!(a.status, 508, "{}", a.text);
    assert_eq!(a.header("tern-error"), Some("loop_detected"));
    assert_eq!(a.header("x-deepest"), Some("16"), "the deepest request that ran had come through 16 hops");
    assert!(tern.wait_for_output("too many times").await);
}
