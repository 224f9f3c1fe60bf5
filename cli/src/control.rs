//! The control plane's commands: `tern control-plane` (serve the API and the distribution
//! endpoint) and the user's side, `tern deploy`, `tern versions`, `tern rollback`,
//! `tern rollout`, `tern status`, which speak its HTTP/JSON API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tern_control_plane::api::ControlPlane;
use tern_control_plane::ca::Authority;
use tern_control_plane::etcd::{EtcdStore, EtcdUrl, KeySharing};
use tern_control_plane::keys::Secrets;
use tern_control_plane::store::{EmbeddedStore, Store};
use tern_control_plane::vault::Vault;

/// Where the API is and who is asking.
#[derive(clap::Args, Clone, Debug)]
pub struct Credentials {
    /// The control plane's API, e.g. http://127.0.0.1:7700; replicas as a comma-separated
    /// list, tried in turn when one cannot be reached.
    #[arg(long = "control-plane", env = "TERN_CONTROL_PLANE", default_value = "http://127.0.0.1:7700")]
    pub url: String,
    /// A bearer token (the control plane's `admin-token` file holds the admin's).
    #[arg(long, env = "TERN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `tern control-plane`: the API on `listen` (TCP), the distribution endpoint on the same
/// port over UDP (QUIC), keys under `data`, the state in `data` or, with `store`, in etcd.
pub async fn serve(listen: SocketAddr, data: &Path, store: Option<EtcdUrl>) -> anyhow::Result<()> {
    match store {
        None => {
            let (secrets, authority, vault) = open_keys(data)?;
            let store = EmbeddedStore::open(&data.join("state.redb"))?;
            serve_with(listen, store, secrets, authority, vault, "embedded").await
        }
        Some(url) => {
            std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
                .create(data)
                .with_context(|| format!("cannot create {}", data.display()))?;
            let store = EtcdStore::connect(&url, Some(data)).await?;
            // Keys come from the cluster when another replica made them, else from here.
            store.share_keys(data, KEY_FILES, KeySharing::Take).await?;
            open_keys(data)?;
            store.share_keys(data, KEY_FILES, KeySharing::Publish).await?;
            let (secrets, authority, vault) = open_keys(data)?;
            let name = format!("etcd {}{}", url.endpoints.join(","), url.prefix);
            serve_with(listen, store, secrets, authority, vault, &name).await
        }
    }
}

/// The data directory's files that every replica sharing a store must hold alike.
const KEY_FILES: &[&str] = &["signing-key.pk8", "admin-token", "join-token", "ca-key.pem", "ca.pem", "secrets-key"];

fn open_keys(data: &Path) -> anyhow::Result<(Secrets, Authority, Vault)> {
    Ok((Secrets::open(data)?, Authority::open(data)?, Vault::open(data)?))
}

async fn serve_with<S: Store>(
    listen: SocketAddr,
    store: S,
    secrets: Secrets,
    authority: Authority,
    vault: Vault,
    store_name: &str,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let tls = authority.server_config()?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("the TLS setup does not suit QUIC")?;
    let mut quic = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    quic.transport_config(Arc::new(tern_distribution::identity::transport()));
    let endpoint = quinn::Endpoint::server(quic, addr)
        .with_context(|| format!("cannot open the distribution endpoint on udp {addr}"))?;
    println!("tern control-plane: listening on http://{addr}");
    println!("tern control-plane: distribution (QUIC) on udp {addr}");
    println!("tern control-plane: state in {store_name}");
    println!("tern control-plane: admin token in {}", secrets.admin_token_path.display());
    println!("tern control-plane: join token in {}", secrets.join_token_path.display());
    let plane = Arc::new(ControlPlane::new(store, secrets, authority, vault).await?);
    tokio::spawn(tern_control_plane::distribute::serve(plane.clone(), endpoint));
    let follower = plane.clone();
    tokio::spawn(async move { follower.follow().await });
    tokio::select! {
        () = plane.serve(listener) => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// The control plane's addresses in `list` (comma-separated: replicas sharing a store).
pub(crate) fn urls(list: &str) -> Vec<String> {
    list.split(',').map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()).collect()
}

/// Sends one API request; returns the JSON answer, or fails with the API's message. With
/// several control plane addresses, one that cannot be connected to is passed over for the
/// next (the request never reached it, so nothing happens twice).
pub(crate) async fn call(
    credentials: &Credentials,
    method: http::Method,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> anyhow::Result<serde_json::Value> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let urls = urls(&credentials.url);
    let mut response = None;
    for (n, base) in urls.iter().enumerate() {
        let url = format!("{base}{path}");
        let mut request = http::Request::builder().method(method.clone()).uri(&url);
        if let Some(token) = &credentials.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request =
            request.body(Full::new(body.clone())).with_context(|| format!("bad control plane URL {url:?}"))?;
        match client.request(request).await {
            Ok(answer) => {
                response = Some(answer);
                break;
            }
            Err(e) if e.is_connect() && n + 1 < urls.len() => {
                eprintln!("tern: cannot reach the control plane at {base} ({e}); trying {}", urls[n + 1]);
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot reach the control plane at {base} (--control-plane or TERN_CONTROL_PLANE)"
                )));
            }
        }
    }
    let response = response.with_context(|| format!("no control plane address in {:?}", credentials.url))?;
    let status = response.status();
    let bytes = response.into_body().collect().await.context("reading the control plane's answer")?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("the control plane answered {status} with something that is not JSON"))?;
    if !status.is_success() {
        let message = value["message"].as_str().unwrap_or("no message");
        bail!("the control plane refused ({status}, {}): {message}", value["error"].as_str().unwrap_or("error"));
    }
    Ok(value)
}

/// `tern deploy PATH`: uploads the project as a new version and makes it active; with
/// `wait`, then waits (at most that long) until every connected node serves it.
pub async fn deploy(path: &Path, wait: Option<Duration>, credentials: &Credentials) -> anyhow::Result<()> {
    let bundle = crate::project::load(path)?;
    let id = bundle.id().to_string();
    let answer =
        call(credentials, http::Method::POST, "/v1/deployments", &[("tern-bundle-id", id)], bundle.to_wire().into())
            .await?;
    let verb = match (answer["new"] == true, answer["unchanged"] == true) {
        (true, _) => "deployed",
        (false, true) => "unchanged:",
        (false, false) => "reactivated",
    };
    println!(
        "{verb} {} version {} (bundle {}, revision {})",
        answer["function"].as_str().unwrap_or_default(),
        answer["version"],
        &answer["bundle"].as_str().unwrap_or_default()[..12],
        answer["revision"]
    );
    follow(&answer, wait, credentials).await
}

/// With `wait`, follows the revision an API answer made until every connected node serves it.
async fn follow(answer: &serde_json::Value, wait: Option<Duration>, credentials: &Credentials) -> anyhow::Result<()> {
    match (wait, answer["revision"].as_u64()) {
        (Some(timeout), Some(revision)) => wait_until_live(credentials, revision, timeout).await,
        _ => Ok(()),
    }
}

/// Follows `revision` until every connected node serves it, printing progress on stderr.
async fn wait_until_live(credentials: &Credentials, revision: u64, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut shown = String::new();
    loop {
        let progress =
            call(credentials, http::Method::GET, &format!("/v1/revisions/{revision}"), &[], Bytes::new()).await?;
        let names = |key: &str| -> Vec<String> {
            progress[key].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
        };
        let (live, pending, offline) = (names("live"), names("pending"), names("offline"));
        let refused: Vec<String> = progress["refused"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|pair| format!("{} ({})", pair[0].as_str().unwrap_or("?"), pair[1].as_str().unwrap_or("?")))
            .collect();
        if !refused.is_empty() {
            bail!(
                "revision {revision} was refused by: {}; those nodes keep serving the previous version",
                refused.join(", ")
            );
        }
        let offline_note = if offline.is_empty() {
            String::new()
        } else {
            format!("; offline, will catch up when they reconnect: {}", offline.join(", "))
        };
        if pending.is_empty() {
            match progress["propagation_ms"].as_u64() {
                Some(ms) => println!("live on {} node{} in {ms} ms{offline_note}", live.len(), plural(live.len())),
                None => println!("no node is connected{offline_note}"),
            }
            return Ok(());
        }
        let line = format!(
            "waiting: live on {}/{} nodes, pending: {}",
            live.len(),
            live.len() + pending.len(),
            pending.join(", ")
        );
        if line != shown {
            eprintln!("{line}");
            shown = line;
        }
        if started.elapsed() > timeout {
            bail!(
                "revision {revision} is not live everywhere after {timeout:?}: pending on {} (`tern status` shows more)",
                pending.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `tern status [NAME]`: what every function runs, what every node serves, and how far the
/// latest change has spread.
pub async fn status(name: Option<&str>, credentials: &Credentials) -> anyhow::Result<()> {
    let status = call(credentials, http::Method::GET, "/v1/status", &[], Bytes::new()).await?;
    let functions: Vec<&serde_json::Value> = status["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| name.is_none_or(|n| f["function"] == n))
        .collect();
    if let Some(name) = name
        && functions.is_empty()
    {
        bail!("no function {name:?} is deployed");
    }
    println!("{:<24} {:<8} {:<14} {:<8}", "FUNCTION", "VERSION", "BUNDLE", "REVISION");
    for f in &functions {
        let rollout = match f["rollout"]["version"].as_u64() {
            Some(v) => format!("  rollout: version {v} for {}% of clients", f["rollout"]["rule"]["percent"]),
            None => String::new(),
        };
        println!(
            "{:<24} {:<8} {:<14} {:<8}{rollout}",
            f["function"].as_str().unwrap_or_default(),
            f["version"].to_string(),
            &f["bundle"].as_str().unwrap_or_default()[..12],
            f["revision"].to_string()
        );
    }
    println!();
    println!("{:<16} {:<12} {:<10} {:<16} {:<9} RUNS", "NODE", "REGION", "STATE", "VIA", "REVISION");
    for node in status["nodes"].as_array().into_iter().flatten() {
        let state = if node["connected"] == true { "connected" } else { "offline" };
        // Directly, or the relay it is connected through.
        let via = match (node["connected"] == true, node["via"].as_str()) {
            (false, _) => "-",
            (true, Some(relay)) => relay,
            (true, None) => "direct",
        };
        let runs: Vec<String> = functions
            .iter()
            .map(|f| {
                let function = f["function"].as_str().unwrap_or_default();
                match node["versions"][function].as_u64() {
                    Some(v) if Some(v) == f["version"].as_u64() => format!("{function}@{v}"),
                    Some(v) => format!("{function}@{v} (behind)"),
                    None => format!("{function}: none"),
                }
            })
            .collect();
        println!(
            "{:<16} {:<12} {:<10} {:<16} {:<9} {}",
            node["name"].as_str().unwrap_or_default(),
            node["region"].as_str().unwrap_or_default(),
            state,
            via,
            node["applied"].as_u64().map_or("-".into(), |r| r.to_string()),
            runs.join(" ")
        );
    }
    let relays = status["relays"].as_array().filter(|r| !r.is_empty());
    if let Some(relays) = relays {
        println!();
        println!("{:<16} {:<12} {:<10} {:<9} ADDRESS", "RELAY", "REGION", "STATE", "REVISION");
        for relay in relays {
            let state = if relay["connected"] == true { "connected" } else { "offline" };
            println!(
                "{:<16} {:<12} {:<10} {:<9} {}",
                relay["name"].as_str().unwrap_or_default(),
                relay["region"].as_str().unwrap_or_default(),
                state,
                relay["applied"].as_u64().map_or("-".into(), |r| r.to_string()),
                relay["listen"].as_str().unwrap_or_default()
            );
        }
    }
    let latest = &status["latest"];
    if latest.is_object() {
        let count = |key: &str| latest[key].as_array().map_or(0, Vec::len);
        let spread = match latest["propagation_ms"].as_u64() {
            Some(ms) => format!("live on {} connected node{} in {ms} ms", count("live"), plural(count("live"))),
            None => format!(
                "live on {}/{} connected nodes",
                count("live"),
                count("live") + count("pending") + count("refused")
            ),
        };
        println!();
        println!("latest revision {}: {spread}", latest["revision"]);
    }
    Ok(())
}

/// `tern versions NAME`.
pub async fn versions(name: &str, credentials: &Credentials) -> anyhow::Result<()> {
    let answer =
        call(credentials, http::Method::GET, &format!("/v1/functions/{name}/versions"), &[], Bytes::new()).await?;
    let active = answer["active"].as_u64();
    println!("{:<8} {:<14} {:<26} ", "VERSION", "BUNDLE", "DEPLOYED (UTC)");
    for v in answer["versions"].as_array().into_iter().flatten() {
        let number = v["number"].as_u64().unwrap_or_default();
        let marker = if Some(number) == active { "  (active)" } else { "" };
        println!(
            "{:<8} {:<14} {:<26}{marker}",
            number,
            &v["bundle"].as_str().unwrap_or_default()[..12],
            format_ms(v["created_ms"].as_u64().unwrap_or_default())
        );
    }
    Ok(())
}

/// `tern rollback NAME [--to V]`, waiting like `tern deploy`.
pub async fn rollback(
    name: &str,
    to: Option<&str>,
    wait: Option<Duration>,
    credentials: &Credentials,
) -> anyhow::Result<()> {
    let body = serde_json::json!({ "to": to }).to_string();
    let answer =
        call(credentials, http::Method::POST, &format!("/v1/functions/{name}/rollback"), &[], body.into()).await?;
    println!(
        "{name} now runs version {} (bundle {}, revision {})",
        answer["version"],
        &answer["bundle"].as_str().unwrap_or_default()[..12],
        answer["revision"]
    );
    follow(&answer, wait, credentials).await
}

/// `tern secret put FUNCTION NAME`: the value from standard input (one trailing newline
/// dropped, so `echo` works).
pub async fn secret_put(function: &str, name: &str, credentials: &Credentials) -> anyhow::Result<()> {
    let mut value = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut value).context("reading the value from standard input")?;
    if value.ends_with(b"\n") {
        value.pop();
        if value.ends_with(b"\r") {
            value.pop();
        }
    }
    let path = format!("/v1/functions/{function}/secrets/{name}");
    let answer = call(credentials, http::Method::PUT, &path, &[], value.into()).await?;
    println!("secret {name} set for {function} (revision {})", answer["revision"]);
    follow(&answer, Some(Duration::from_secs(30)), credentials).await
}

/// `tern secret list FUNCTION`: names only.
pub async fn secret_list(function: &str, credentials: &Credentials) -> anyhow::Result<()> {
    let answer =
        call(credentials, http::Method::GET, &format!("/v1/functions/{function}/secrets"), &[], Bytes::new()).await?;
    for name in answer["secrets"].as_array().into_iter().flatten() {
        println!("{}", name.as_str().unwrap_or_default());
    }
    Ok(())
}

/// `tern token create --ttl D`: the token on standard output, its expiry on standard error.
pub async fn token_create(ttl: Duration, credentials: &Credentials) -> anyhow::Result<()> {
    let body = serde_json::json!({ "role": "join", "ttl_s": ttl.as_secs() }).to_string();
    let answer = call(credentials, http::Method::POST, "/v1/tokens", &[], body.into()).await?;
    println!("{}", answer["token"].as_str().unwrap_or_default());
    eprintln!("join token, valid until {}", answer["expires"].as_str().unwrap_or_default());
    Ok(())
}

pub struct Rollout {
    pub version: Option<String>,
    pub percent: u32,
    pub header: Option<String>,
    pub sticky_header: Option<String>,
}

/// `tern rollout NAME --version V --percent P [--header N=V] [--sticky-header N]`.
pub async fn rollout(
    name: &str,
    rollout: Rollout,
    wait: Option<Duration>,
    credentials: &Credentials,
) -> anyhow::Result<()> {
    let body = serde_json::json!({ "version": rollout.version, "percent": rollout.percent,
        "header": rollout.header, "sticky": rollout.sticky_header })
    .to_string();
    let answer =
        call(credentials, http::Method::POST, &format!("/v1/functions/{name}/rollout"), &[], body.into()).await?;
    let candidate = &answer["rollout"];
    if candidate.is_null() {
        println!("{name} runs version {} for everyone (revision {})", answer["stable"], answer["revision"]);
    } else {
        let rule = &candidate["rule"];
        let mut who = format!("{}% of clients", rule["percent"]);
        if let Some(header) = rule["header"].as_array() {
            who += &format!(
                " and requests with {}: {}",
                header[0].as_str().unwrap_or_default(),
                header[1].as_str().unwrap_or_default()
            );
        }
        println!(
            "{name}: version {} for {who}, version {} for the rest (revision {})",
            candidate["version"], answer["stable"], answer["revision"]
        );
    }
    follow(&answer, wait, credentials).await
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
fn format_ms(ms: u64) -> String {
    tern_control_plane::clock::rfc3339(ms).replace('T', " ").trim_end_matches('Z').to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_civil() {
        assert_eq!(super::format_ms(0), "1970-01-01 00:00:00");
        assert_eq!(super::format_ms(1_795_305_600_000), "2026-11-22 00:00:00");
    }
}
