//! The control plane's commands: `tern control-plane` (serve the API) and the user's side,
//! `tern deploy`, `tern versions`, `tern rollback`, which speak its HTTP/JSON API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tern_control_plane::api::ControlPlane;
use tern_control_plane::keys::Secrets;
use tern_control_plane::store::EmbeddedStore;

/// Where the API is and who is asking.
#[derive(clap::Args, Clone, Debug)]
pub struct Credentials {
    /// The control plane's API, e.g. http://127.0.0.1:7700.
    #[arg(long = "control-plane", env = "TERN_CONTROL_PLANE", default_value = "http://127.0.0.1:7700")]
    pub url: String,
    /// A bearer token (the control plane's `admin-token` file holds the admin's).
    #[arg(long, env = "TERN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `tern control-plane`: the API on `listen`, state and secrets under `data`.
pub async fn serve(listen: SocketAddr, data: &Path) -> anyhow::Result<()> {
    let secrets = Secrets::open(data)?;
    let store = EmbeddedStore::open(&data.join("state.redb"))?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    println!("tern control-plane: listening on http://{addr}");
    println!("tern control-plane: admin token in {}", secrets.admin_token_path.display());
    let plane = Arc::new(ControlPlane::new(store, secrets));
    tokio::select! {
        () = plane.serve(listener) => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Sends one API request; returns the JSON answer, or fails with the API's message.
async fn call(
    credentials: &Credentials,
    method: http::Method,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}{path}", credentials.url.trim_end_matches('/'));
    let mut request = http::Request::builder().method(method).uri(&url);
    if let Some(token) = &credentials.token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request.body(Full::new(body)).with_context(|| format!("bad control plane URL {url:?}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.with_context(|| {
        format!("cannot reach the control plane at {} (--control-plane or TERN_CONTROL_PLANE)", credentials.url)
    })?;
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

/// `tern deploy PATH`: uploads the project as a new version and makes it active.
pub async fn deploy(path: &Path, credentials: &Credentials) -> anyhow::Result<()> {
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

/// `tern rollback NAME [--to V]`.
pub async fn rollback(name: &str, to: Option<&str>, credentials: &Credentials) -> anyhow::Result<()> {
    let body = serde_json::json!({ "to": to }).to_string();
    let answer =
        call(credentials, http::Method::POST, &format!("/v1/functions/{name}/rollback"), &[], body.into()).await?;
    println!(
        "{name} now runs version {} (bundle {}, revision {})",
        answer["version"],
        &answer["bundle"].as_str().unwrap_or_default()[..12],
        answer["revision"]
    );
    Ok(())
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS`.
fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_civil() {
        assert_eq!(super::format_ms(0), "1970-01-01 00:00:00");
        assert_eq!(super::format_ms(1_795_305_600_000), "2026-11-22 00:00:00");
    }
}
