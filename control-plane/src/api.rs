//! The control plane's HTTP/JSON API. Every route but `/v1/health` and
//! `/v1/signing-key` needs `Authorization: Bearer <admin token>`.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/deployments` | body: a bundle in wire form, header `tern-bundle-id`; validates, stores, signs, records a new version and makes it active |
//! | `GET /v1/functions` | what every function runs |
//! | `GET /v1/functions/{name}/versions` | every version, oldest first, and the active one |
//! | `POST /v1/functions/{name}/rollback` | body `{"to": "3"}` or `{}`: makes an older version active |
//! | `PUT /v1/functions/{name}/secrets/{KEY}` | body: the value (UTF-8, at most 5 KiB); sealed at rest, reaches the function as `env.KEY` |
//! | `GET /v1/functions/{name}/secrets` | the names of its secrets (never values) |
//! | `POST /v1/functions/{name}/rollout` | body `{"version": "3", "percent": 20, "header": "x-canary=1", "sticky": "x-user"}`: sends some requests to a candidate version; `percent` 0 with no `header` ends it |
//! | `GET /v1/signing-key` | the Ed25519 public key bundles are signed with (hex) |
//! | `POST /v1/tokens` | body `{"ttl_s": 3600}`: a join token that expires (at most 30 days); answers it once, the store keeps its hash |
//! | `POST /v1/nodes` | with the join token (or the admin token): enrols a node, body `{"node": {name, region, location, listen}, "csr": PEM}`; answers its certificate, the CA certificate and the signing key |
//! | `POST /v1/relays` | with the join token (or the admin token): enrols a relay, same body and answer; its certificate also serves nodes under the distribution name |
//! | `GET /v1/topology[?after=N]` | with the join token (or the admin token), for routers: every enrolled node (name, region, location, listen address, connected) and every function's routes and placement; with `after`, answers as soon as a revision newer than `N` commits, or after a second |
//! | `GET /v1/status` | every function's active version, every node's applied revision (and the relay it is connected through, if any), every relay, and how far the latest revision has spread |
//! | `GET /v1/revisions/{n}` | how far revision `n` has spread: which nodes serve it, which are pending or offline, and the propagation time once done |
//!
//! Errors answer `{"error": code, "message": ...}` with a status that fits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tern_proto::{Bundle, BundleId};
use tokio::net::TcpListener;

use tern_proto::distribution::NodeInfo;
use tern_proto::rollout::RolloutRule;
use tokio::sync::watch;

use crate::ca::Authority;
use crate::deploy::{self, DeployError};
use crate::fleet::{Fleet, progress};
use crate::keys::Secrets;
use crate::store::{Active, Commit, NodeRecord, Store, StoreError, Version};
use crate::tokens::{self, TokenCheck, TokenRecord};
use crate::vault::{Vault, check_secret};

/// How long `GET /v1/topology?after=N` waits for a revision newer than `N`.
pub const TOPOLOGY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest bundle a deploy may upload.
pub const MAX_BUNDLE_BYTES: usize = 64 << 20;

pub struct ControlPlane<S> {
    store: S,
    secrets: Secrets,
    authority: Authority,
    vault: Vault,
    fleet: Fleet,
    /// The latest committed revision, watched by every node's subscription.
    revision: watch::Sender<u64>,
}

/// Why a request was refused.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if let StoreError::Conflict(message) = e {
            return Self::new(StatusCode::CONFLICT, "concurrent_change", message);
        }
        tracing::error!("{e}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store_failed", e.to_string())
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        let (status, code) = match e {
            DeployError::RouteConflict { .. } => (StatusCode::CONFLICT, "route_conflict"),
            DeployError::UnknownFunction(_) | DeployError::NoSuchVersion { .. } => (StatusCode::NOT_FOUND, "not_found"),
            DeployError::NothingToRollBackTo(_) | DeployError::Ambiguous { .. } => {
                (StatusCode::CONFLICT, "no_rollback_target")
            }
            DeployError::CandidateIsActive { .. } => (StatusCode::CONFLICT, "rollout_conflict"),
            DeployError::NoCandidate(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        Self::new(status, code, e.to_string())
    }
}

pub(crate) use crate::clock::now_ms;

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string() + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

impl<S: Store> ControlPlane<S> {
    pub async fn new(store: S, secrets: Secrets, authority: Authority, vault: Vault) -> Result<Self, StoreError> {
        let (revision, _) = watch::channel(store.revision().await?);
        Ok(Self { store, secrets, authority, vault, fleet: Fleet::default(), revision })
    }

    /// Follows the revisions other replicas commit to a shared store, until the process
    /// ends (at once for a store nobody shares).
    pub async fn follow(&self) {
        self.store.follow(self.revision.clone()).await;
    }

    /// Makes `revision` the latest known, unless a newer one is known already (another
    /// replica's commit may arrive first).
    pub fn advance(&self, revision: u64) {
        self.revision.send_if_modified(|r| {
            let newer = revision > *r;
            *r = (*r).max(revision);
            newer
        });
    }

    /// Node `name`'s connection changed here: tells the other replicas (a no-op for a
    /// store nobody shares). A failure is logged: the other replicas see the node a little
    /// later, when it next acknowledges.
    pub async fn publish(&self, name: &str) {
        let live = self.fleet.get(name).filter(|n| n.connected);
        if let Err(e) = self.store.publish_live(name, live.as_ref()).await {
            tracing::warn!(node = name, "cannot share the node's state with the other replicas: {e}");
        }
    }

    /// What `function` runs now, if it exists.
    async fn active_of(&self, function: &str) -> Result<Option<Active>, StoreError> {
        Ok(self.store.active().await?.into_iter().find(|a| a.function == function))
    }

    /// Every node's connection as this replica and the others know it.
    async fn live(&self) -> Result<std::collections::BTreeMap<String, crate::fleet::NodeLive>, StoreError> {
        Ok(crate::fleet::merge(self.fleet.snapshot(), self.store.live().await?))
    }

    /// The opened secrets of `function`, for its nodes; a value that cannot be opened is
    /// left out and logged.
    pub async fn open_secrets(&self, function: &str) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        for (name, sealed) in self.store.secrets(function).await? {
            match self.vault.unseal(&format!("{function}/{name}"), &sealed) {
                Ok(value) => {
                    out.insert(name, String::from_utf8_lossy(&value).into_owned());
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
        Ok(out)
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The latest committed revision, as it changes.
    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Serves the API on `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req, remote).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(%remote, "connection ended: {e}");
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<Full<Bytes>> {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        match self.route(req).await {
            Ok((status, value)) => {
                tracing::info!(%remote, %method, %path, status = status.as_u16(), "api");
                json_response(status, value)
            }
            Err(e) => {
                tracing::info!(%remote, %method, %path, status = e.status.as_u16(), error = e.code, "api: {}", e.message);
                json_response(e.status, json!({ "error": e.code, "message": e.message }))
            }
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let path: Vec<String> = req.uri().path().trim_matches('/').split('/').map(str::to_string).collect();
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        match (req.method(), path.as_slice()) {
            (&Method::GET, ["v1", "health"]) => return Ok((StatusCode::OK, json!({ "ok": true }))),
            (&Method::GET, ["v1", "signing-key"]) => {
                let key = self.secrets.signing.verifying_key();
                let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
                return Ok((StatusCode::OK, json!({ "algorithm": "ed25519", "public_key": hex })));
            }
            (&Method::POST, ["v1", "nodes"]) => {
                self.authorize_join(&req).await?;
                return self.enroll(req, false).await;
            }
            (&Method::POST, ["v1", "relays"]) => {
                self.authorize_join(&req).await?;
                return self.enroll(req, true).await;
            }
            (&Method::GET, ["v1", "topology"]) => {
                self.authorize_join(&req).await?;
                // `?after=N`: a router that has revision N waits (up to a second) for the next.
                let after =
                    req.uri().query().and_then(|q| q.strip_prefix("after=")).and_then(|n| n.parse::<u64>().ok());
                if let Some(after) = after {
                    let mut revisions = self.revision.subscribe();
                    let newer = revisions.wait_for(|r| *r > after);
                    let _ = tokio::time::timeout(TOPOLOGY_WAIT, newer).await;
                }
                return self.topology().await;
            }
            _ => {}
        }
        self.authorize(&req)?;
        match (req.method().clone(), path.as_slice()) {
            (Method::POST, ["v1", "deployments"]) => self.deploy(req).await,
            (Method::GET, ["v1", "functions"]) => {
                Ok((StatusCode::OK, json!({ "functions": self.store.active().await? })))
            }
            (Method::GET, ["v1", "functions", name, "versions"]) => self.versions(name).await,
            (Method::GET, ["v1", "status"]) => self.status().await,
            (Method::POST, ["v1", "tokens"]) => {
                let body = read_body(req, 64 * 1024).await?;
                self.create_token(&body).await
            }
            (Method::PUT, ["v1", "functions", name, "secrets", key]) => {
                let (name, key) = (name.to_string(), key.to_string());
                let body = read_body(req, 64 * 1024).await?;
                self.put_secret(&name, &key, &body).await
            }
            (Method::GET, ["v1", "functions", name, "secrets"]) => {
                let names: Vec<String> = self.store.secrets(name).await?.into_iter().map(|(n, _)| n).collect();
                Ok((StatusCode::OK, json!({ "function": name, "secrets": names })))
            }
            (Method::POST, ["v1", "functions", name, "rollout"]) => {
                let name = name.to_string();
                let body = read_body(req, 64 * 1024).await?;
                self.rollout(&name, &body).await
            }
            (Method::GET, ["v1", "revisions", revision]) => {
                let revision = revision
                    .parse()
                    .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "a revision is a number"))?;
                Ok((StatusCode::OK, self.progress(revision).await?))
            }
            (Method::POST, ["v1", "functions", name, "rollback"]) => {
                let name = name.to_string();
                let body = read_body(req, 64 * 1024).await?;
                let to: Option<String> = if body.is_empty() {
                    None
                } else {
                    let value: serde_json::Value = serde_json::from_slice(&body)
                        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("body: {e}")))?;
                    value
                        .get("to")
                        .and_then(|v| v.as_str().map(str::to_string).or_else(|| Some(v.to_string())))
                        .filter(|s| s != "null")
                };
                self.rollback(&name, to.as_deref()).await
            }
            _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API route")),
        }
    }

    fn authorize(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        if self.secrets.is_admin(bearer(req)?) { Ok(()) } else { Err(bad_token()) }
    }

    /// Nodes enrol (and routers read the topology) with the data directory's join token, a
    /// created join token that has not expired, or the admin token.
    async fn authorize_join(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        let token = bearer(req)?;
        if self.secrets.is_join(token) || self.secrets.is_admin(token) {
            return Ok(());
        }
        let record = self.store.token(&tokens::hash(token)).await?.filter(|r| r.role == "join");
        match tokens::check(record.as_ref(), now_ms()) {
            TokenCheck::Valid => Ok(()),
            TokenCheck::Expired { at_ms } => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_expired",
                format!(
                    "this join token expired at {} ({} s ago); an admin creates a new one with `tern token create`",
                    crate::clock::rfc3339(at_ms),
                    now_ms().saturating_sub(at_ms) / 1000
                ),
            )),
            TokenCheck::Unknown => Err(bad_token()),
        }
    }

    /// Creates a join token: body `{"ttl_s": 3600}` (at most 30 days).
    async fn create_token(&self, body: &[u8]) -> Result<(StatusCode, serde_json::Value), ApiError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Request {
            ttl_s: u64,
            #[serde(default)]
            role: Option<String>,
        }
        let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
        let request: Request = serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))?;
        if request.role.as_deref().is_some_and(|r| r != "join") {
            return Err(bad("only join tokens can be created (role \"join\")".into()));
        }
        let ttl_ms = request.ttl_s.saturating_mul(1000);
        if ttl_ms == 0 || ttl_ms > tokens::MAX_TTL_MS {
            return Err(bad(format!("ttl_s must be from 1 to {} (30 days)", tokens::MAX_TTL_MS / 1000)));
        }
        let token =
            tokens::generate().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no_randomness", e))?;
        let now = now_ms();
        let record =
            TokenRecord { hash: tokens::hash(&token), role: "join".into(), created_ms: now, expires_ms: now + ttl_ms };
        self.store.put_token(&record).await?;
        tracing::info!(role = "join", expires = %crate::clock::rfc3339(record.expires_ms), "token created");
        Ok((
            StatusCode::CREATED,
            json!({ "token": token, "role": "join", "expires_ms": record.expires_ms,
                "expires": crate::clock::rfc3339(record.expires_ms) }),
        ))
    }

    async fn deploy(&self, req: Request<Incoming>) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_bundle", message);
        let expected: BundleId = req
            .headers()
            .get("tern-bundle-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("the tern-bundle-id header (64 hex digits) is missing or malformed".into()))?;
        let wire = read_body(req, MAX_BUNDLE_BYTES).await?;
        let bundle = Bundle::from_wire(&wire, expected).map_err(|e| bad(format!("the bundle was refused: {e}")))?;
        let function = bundle.name().to_string();
        let id = bundle.id().to_string();
        self.store.put_bundle(&id, &wire).await?;
        let signature = self.secrets.signing.sign(bundle.id()).to_string();
        // Another deploy of the same function (through this replica or another) may take
        // the version number between reading and committing: decide again.
        let mut attempts = 0;
        loop {
            match self.record(&function, &id, &signature, Claims::of(&bundle)).await {
                Err(e) if e.code == "concurrent_change" && attempts < 8 => attempts += 1,
                result => return result,
            }
        }
    }

    /// Makes bundle `id` what `function` runs: a new version, or the earlier version with
    /// the same bundle, or nothing when it runs it already.
    async fn record(
        &self,
        function: &str,
        id: &str,
        signature: &str,
        claims: Claims,
    ) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let versions = self.store.versions(function).await?;
        let active = self.active_of(function).await?;
        if let Some(active) = active.filter(|a| a.bundle == id) {
            // Already what the function runs: nothing changes, no new revision.
            let signature = versions.iter().find(|v| v.number == active.version).map(|v| v.signature.clone());
            return Ok((
                StatusCode::OK,
                json!({ "function": function, "version": active.version, "bundle": id,
                "signature": signature, "revision": active.revision, "new": false, "unchanged": true }),
            ));
        }
        if let Some(same) = versions.iter().rev().find(|v| v.bundle == id) {
            // Deploying what was deployed before makes that version active again.
            let target = same.clone();
            let revision = self.activate(&target, None, claims).await?;
            return Ok((
                StatusCode::OK,
                json!({ "function": function, "version": target.number, "bundle": id,
                "signature": target.signature, "revision": revision, "new": false }),
            ));
        }
        let version = Version {
            function: function.to_string(),
            number: deploy::next_number(&versions),
            bundle: id.to_string(),
            signature: signature.to_string(),
            created_ms: now_ms(),
        };
        let revision = self.activate(&version, Some(version.clone()), claims).await?;
        tracing::info!(%function, version = version.number, bundle = %&id[..12], revision, "deployed");
        Ok((
            StatusCode::CREATED,
            json!({ "function": function, "version": version.number, "bundle": id, "signature": signature,
                "revision": revision, "new": true }),
        ))
    }

    /// Makes `version` what its function runs (recording it first when `new`).
    async fn activate(&self, version: &Version, new: Option<Version>, claims: Claims) -> Result<u64, ApiError> {
        let Claims { routes, placement } = claims;
        let active = Active {
            function: version.function.clone(),
            version: version.number,
            bundle: version.bundle.clone(),
            signature: version.signature.clone(),
            revision: 0,
            routes: routes.clone(),
            rollout: None,
            placement,
        };
        let function = version.function.clone();
        let check = move |current: &[Active]| -> Result<(), ApiError> {
            deploy::check_routes(&function, &routes, current).map_err(ApiError::from)
        };
        let revision =
            self.store.commit(Commit { new_version: new, active, at_ms: now_ms(), secret: None }, &check).await?;
        self.advance(revision);
        Ok(revision)
    }

    /// Seals and stores a secret, and makes a revision so that nodes get it.
    async fn put_secret(
        &self,
        function: &str,
        name: &str,
        value: &[u8],
    ) -> Result<(StatusCode, serde_json::Value), ApiError> {
        check_secret(name, value).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_secret", e))?;
        let active = self.active_of(function).await?.ok_or_else(|| DeployError::UnknownFunction(function.into()))?;
        let entry = format!("{function}/{name}");
        let sealed = self.vault.seal(&entry, value);
        let commit = Commit {
            new_version: None,
            active: Active { revision: 0, ..active },
            at_ms: now_ms(),
            secret: Some((entry, sealed)),
        };
        let revision = self.store.commit(commit, &|_| Ok::<_, ApiError>(())).await?;
        self.advance(revision);
        tracing::info!(function, secret = name, revision, "secret set");
        Ok((StatusCode::OK, json!({ "function": function, "secret": name, "revision": revision })))
    }

    async fn rollout(&self, name: &str, body: &[u8]) -> Result<(StatusCode, serde_json::Value), ApiError> {
        #[derive(serde::Deserialize)]
        struct Request {
            version: Option<serde_json::Value>,
            percent: u32,
            header: Option<String>,
            sticky: Option<String>,
        }
        let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
        let request: Request = serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))?;
        let rule = RolloutRule::new(request.percent, request.header.as_deref(), request.sticky.as_deref())
            .map_err(|e| bad(e.to_string()))?;
        let wanted = request.version.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
        let versions = self.store.versions(name).await?;
        let active = self.active_of(name).await?.ok_or_else(|| DeployError::UnknownFunction(name.into()))?;
        let candidate = deploy::rollout_candidate(name, &versions, &active, wanted.as_deref(), rule)?;
        let stable = active.version;
        let active = Active { rollout: candidate.clone(), revision: 0, ..active };
        let commit = Commit { new_version: None, active, at_ms: now_ms(), secret: None };
        let revision = self.store.commit(commit, &|_| Ok::<_, ApiError>(())).await?;
        self.advance(revision);
        tracing::info!(function = name, stable, candidate = ?candidate.as_ref().map(|c| c.version), revision, "rollout");
        Ok((StatusCode::OK, json!({ "function": name, "stable": stable, "rollout": candidate, "revision": revision })))
    }

    /// Enrols a node, or with `relay` a relay: names are shared, and one cannot take the
    /// other's.
    async fn enroll(&self, req: Request<Incoming>, relay: bool) -> Result<(StatusCode, serde_json::Value), ApiError> {
        #[derive(serde::Deserialize)]
        struct Enrolment {
            node: NodeInfo,
            csr: String,
        }
        let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_enrolment", message);
        let body = read_body(req, 64 * 1024).await?;
        let enrolment: Enrolment = serde_json::from_slice(&body).map_err(|e| bad(format!("body: {e}")))?;
        crate::fleet::check_node(&enrolment.node).map_err(bad)?;
        let name = &enrolment.node.name;
        if let Some(other) = self.store.nodes().await?.into_iter().find(|n| &n.info.name == name && n.relay != relay) {
            let (what, other_what) = if other.relay { ("node", "relay") } else { ("relay", "node") };
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "name_taken",
                format!("{name:?} is enrolled as a {other_what}; give this {what} another name"),
            ));
        }
        let certificate = if relay {
            self.authority.issue_relay(name, &enrolment.csr)
        } else {
            self.authority.issue_node(name, &enrolment.csr)
        }
        .map_err(|e| bad(e.to_string()))?;
        let der: rustls::pki_types::CertificateDer =
            rustls::pki_types::pem::PemObject::from_pem_slice(certificate.as_bytes())
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "issue_failed", e.to_string()))?;
        let record = NodeRecord {
            info: enrolment.node.clone(),
            fingerprint: crate::ca::fingerprint(&der),
            enrolled_ms: now_ms(),
            relay,
        };
        self.store.put_node(&record).await?;
        let role = if relay { "relay" } else { "node" };
        tracing::info!(node = %record.info.name, region = %record.info.region, role, "enrolled");
        let key = self.secrets.signing.verifying_key();
        let signing_key: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        Ok((
            StatusCode::CREATED,
            json!({ "certificate": certificate, "ca": self.authority.certificate_pem, "signing_key": signing_key }),
        ))
    }

    /// How far `revision` has spread over the enrolled nodes.
    async fn progress(&self, revision: u64) -> Result<serde_json::Value, ApiError> {
        let committed_ms = self.store.changes_since(revision.saturating_sub(1)).await?.first().map(|c| c.at_ms);
        let Some(committed_ms) = committed_ms.filter(|_| revision > 0) else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no revision {revision}")));
        };
        let enrolled: Vec<String> =
            self.store.nodes().await?.into_iter().filter(|n| !n.relay).map(|n| n.info.name).collect();
        let progress = progress(revision, committed_ms, &self.live().await?, &enrolled);
        Ok(serde_json::to_value(progress).expect("progress serializes"))
    }

    /// Every enrolled node (or with `relays`, every relay) as it last described itself, with
    /// what this control plane knows of its connection.
    async fn enrolled(&self, relays: bool) -> Result<Vec<(NodeInfo, Option<crate::fleet::NodeLive>)>, ApiError> {
        let mut live = self.live().await?;
        Ok(self
            .store
            .nodes()
            .await?
            .into_iter()
            .filter(|record| record.relay == relays)
            .map(|record| {
                let node = live.remove(&record.info.name);
                (node.as_ref().and_then(|n| n.info.clone()).unwrap_or(record.info), node)
            })
            .collect())
    }

    async fn status(&self) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let revision = self.store.revision().await?;
        let changes = self.store.changes_since(0).await?;
        let nodes: Vec<serde_json::Value> = self
            .enrolled(false)
            .await?
            .into_iter()
            .map(|(info, node)| {
                let node = node.as_ref();
                let applied = node.map(|n| n.applied);
                let versions = applied.map(|r| crate::fleet::versions_at(&changes, r));
                let via = node.filter(|n| n.connected).and_then(|n| n.via.clone());
                json!({ "name": info.name, "region": info.region, "location": info.location, "listen": info.listen,
                    "connected": node.is_some_and(|n| n.connected), "via": via, "applied": applied,
                    "versions": versions, "refused": node.and_then(|n| n.refused.clone()) })
            })
            .collect();
        let relays: Vec<serde_json::Value> = self
            .enrolled(true)
            .await?
            .into_iter()
            .map(|(info, relay)| {
                let relay = relay.as_ref();
                json!({ "name": info.name, "region": info.region, "listen": info.listen,
                    "connected": relay.is_some_and(|r| r.connected), "applied": relay.map(|r| r.applied),
                    "refused": relay.and_then(|r| r.refused.clone()) })
            })
            .collect();
        let latest = if revision > 0 { Some(self.progress(revision).await?) } else { None };
        Ok((
            StatusCode::OK,
            json!({ "revision": revision, "functions": self.store.active().await?, "nodes": nodes, "relays": relays,
                "latest": latest }),
        ))
    }

    /// What a router needs: every enrolled node (where it is and how to reach it) and every
    /// function's routes and placement.
    async fn topology(&self) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let nodes: Vec<serde_json::Value> = self
            .enrolled(false)
            .await?
            .into_iter()
            .map(|(info, node)| {
                json!({ "name": info.name, "region": info.region, "location": info.location, "listen": info.listen,
                    "connected": node.as_ref().is_some_and(|n| n.connected) })
            })
            .collect();
        let functions: Vec<serde_json::Value> = self
            .store
            .active()
            .await?
            .into_iter()
            .map(|a| json!({ "name": a.function, "routes": a.routes, "placement": a.placement }))
            .collect();
        Ok((
            StatusCode::OK,
            json!({ "revision": self.store.revision().await?, "nodes": nodes, "functions": functions }),
        ))
    }

    async fn versions(&self, name: &str) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let versions = self.store.versions(name).await?;
        if versions.is_empty() {
            return Err(DeployError::UnknownFunction(name.into()).into());
        }
        let active = self.active_of(name).await?;
        Ok((StatusCode::OK, json!({ "function": name, "active": active.map(|a| a.version), "versions": versions })))
    }

    async fn rollback(&self, name: &str, to: Option<&str>) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let versions = self.store.versions(name).await?;
        let active = self.active_of(name).await?;
        let target = deploy::rollback_target(name, &versions, active.as_ref(), to)?.clone();
        let wire = self.store.bundle(&target.bundle).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("version {} of {name} has no bundle {}", target.number, target.bundle))
        })?;
        let expected: BundleId = target.bundle.parse().map_err(|()| StoreError::Corrupt("bad bundle id".into()))?;
        let bundle = Bundle::from_wire(&wire, expected).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let revision = self.activate(&target, None, Claims::of(&bundle)).await?;
        tracing::info!(function = name, version = target.number, revision, "rolled back");
        Ok((
            StatusCode::OK,
            json!({ "function": name, "version": target.number, "bundle": target.bundle,
            "revision": revision }),
        ))
    }
}

/// What an active version's manifest tells the rest of the platform: its routes (checked
/// for conflicts) and its placement (for the router).
struct Claims {
    routes: Vec<String>,
    placement: Vec<String>,
}

impl Claims {
    fn of(bundle: &Bundle) -> Self {
        let routes = bundle.manifest.routes.iter().map(|r| r.as_str().to_string()).collect();
        Self { routes, placement: bundle.manifest.placement.clone() }
    }
}

/// The request's bearer token.
fn bearer(req: &Request<Incoming>) -> Result<&str, ApiError> {
    let header = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no_token",
            "send `Authorization: Bearer <token>` (tern: --token or TERN_TOKEN)",
        )
    })
}

fn bad_token() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "bad_token", "the token is not valid")
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {} MiB", limit >> 20),
        )),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("reading the body: {e}"))),
    }
}
