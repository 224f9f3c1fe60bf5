//! The node's side of the distribution channel. At start it serves what it applied last
//! (from [`crate::local`]), then keeps one QUIC connection to the control plane: it enrols
//! first if it has no identity, subscribes with its revision, and for each update fetches
//! the bundles it lacks, verifies every one (hash and signature), keeps them on disk, hands
//! the whole new state to the node, and acknowledges. An update with any bundle that fails
//! is refused whole and reported; the node keeps serving what it had. After a disconnect it
//! reconnects with backoff and resumes from its revision. Given relays, it subscribes
//! through them first (in turn) and to the control plane when none answers; it always
//! enrols with the control plane.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tern_proto::distribution::{AppliedState, Assignment, BundleAnswer, NodeInfo, NodeMessage, SERVER_NAME, Update};
use tern_proto::rollout::Serving;
use tern_proto::{Bundle, VerifyingKey};

use crate::framing::{StreamError, read_frame, write_frame};
use crate::identity::{Identity, IdentityError};
use crate::local::{LocalState, verify};

/// Largest bundle a node accepts (the control plane refuses larger at deploy).
const MAX_BUNDLE_BYTES: u64 = 64 << 20;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub struct AgentConfig {
    /// The control plane's API, `http://host:port`; its distribution endpoint is the same
    /// host and port over UDP. With several (replicas sharing a store), the node uses the
    /// first that answers and moves to the next when it stops answering.
    pub control_plane: Vec<String>,
    /// Relays' distribution endpoints (`host:port`, UDP), tried before the control plane.
    pub relays: Vec<String>,
    pub join_token: Option<String>,
    pub node: NodeInfo,
    pub data: PathBuf,
}

/// What the node does with a verified state: serve exactly these functions, returning once
/// they are ready.
pub type Apply = Arc<dyn Fn(Vec<Serving>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("the node has not enrolled yet: give --join-token (the control plane's data directory has it)")]
    NoToken,
    #[error("the node's data directory {0}: {1}")]
    Data(PathBuf, std::io::Error),
}

/// Why a subscription upstream (a node's, or a relay's) ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("{0}")]
    Stream(#[from] StreamError),
    #[error("the control plane closed the subscription")]
    Closed,
}

/// Runs the node's side until the process ends; fails only when it cannot go on at all
/// (no identity and no token, a refused enrolment, an unusable data directory). `restored`
/// fires once the kept state (if any) is applied, before anything goes over the network.
pub async fn run(
    config: AgentConfig,
    apply: Apply,
    restored: tokio::sync::oneshot::Sender<()>,
) -> Result<(), AgentError> {
    let local = LocalState::open(&config.data).map_err(|e| AgentError::Data(config.data.clone(), e))?;
    let mut identity = Identity::load(&config.data)?.filter(|id| id.name == config.node.name);
    let mut agent =
        Agent { local, state: AppliedState::default(), bundles: HashMap::new(), apply, connected_once: false };
    if let Some(identity) = &identity {
        agent.restore(identity).await;
    }
    let _ = restored.send(());
    let mut backoff = BACKOFF_FIRST;
    // Which of the addresses is tried next: relays first, then the control plane's.
    let upstreams: Vec<String> = config.relays.iter().chain(&config.control_plane).cloned().collect();
    let mut which = 0;
    loop {
        let url = config.control_plane.get(which % config.control_plane.len().max(1)).cloned().unwrap_or_default();
        let current = match &identity {
            Some(identity) => identity.clone(),
            None => {
                let token = config.join_token.as_deref().ok_or(AgentError::NoToken)?;
                match Identity::enroll(&config.data, &url, token, &config.node, false).await {
                    Ok(enrolled) => {
                        tracing::info!(node = %config.node.name, "enrolled with the control plane");
                        agent.restore(&enrolled).await;
                        identity = Some(enrolled.clone());
                        enrolled
                    }
                    Err(e @ IdentityError::Unreachable { .. }) => {
                        tracing::warn!("{e}; trying again");
                        which += 1;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let upstream = upstreams.get(which % upstreams.len().max(1)).cloned().unwrap_or_default();
        match agent.session(&upstream, &config, &current).await {
            Ok(()) => {}
            Err(e) => tracing::warn!("distribution ({upstream}): {e}; reconnecting"),
        }
        which += 1;
        if agent.connected_once {
            backoff = BACKOFF_FIRST;
            agent.connected_once = false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

struct Agent {
    local: LocalState,
    state: AppliedState,
    /// Verified bundles of the current state, by id.
    bundles: HashMap<String, Arc<Bundle>>,
    apply: Apply,
    connected_once: bool,
}

impl Agent {
    /// Serves what was applied before the restart.
    async fn restore(&mut self, identity: &Identity) {
        let Ok(key) = identity.verifying_key() else { return };
        let (state, bundles) = self.local.load(&key);
        tracing::info!(revision = state.revision, functions = state.functions.len(), "serving the kept state");
        self.state = state;
        self.bundles = bundles;
        (self.apply)(serving(&self.state, &self.bundles)).await;
    }

    async fn session(&mut self, url: &str, config: &AgentConfig, identity: &Identity) -> Result<(), SessionError> {
        let key = identity.verifying_key().map_err(SessionError::Connect)?;
        let (_endpoint, connection) = connect(url, identity).await.map_err(SessionError::Connect)?;
        let (mut send, mut recv) = connection.open_bi().await?;
        write_frame(&mut send, &NodeMessage::Hello { node: config.node.clone(), applied: self.state.revision }).await?;
        tracing::info!(address = %connection.remote_address(), revision = self.state.revision, "subscribed");
        self.connected_once = true;
        while let Some(update) = read_frame::<Update>(&mut recv).await? {
            let reply = match self.update(&connection, &key, &update).await {
                Ok(()) => NodeMessage::Applied { revision: update.revision },
                Err(reason) => {
                    tracing::error!(revision = update.revision, "update refused, serving what was there: {reason}");
                    NodeMessage::Refused { revision: update.revision, reason }
                }
            };
            write_frame(&mut send, &reply).await?;
        }
        Err(SessionError::Closed)
    }

    /// Applies `update` whole, or not at all.
    async fn update(
        &mut self,
        connection: &quinn::Connection,
        key: &VerifyingKey,
        update: &Update,
    ) -> Result<(), String> {
        let next = self.state.with(update);
        let mut bundles = HashMap::new();
        for assignment in next.functions.values().flat_map(Assignment::parts) {
            let assignment = &assignment;
            if let Some(bundle) = self.bundles.get(&assignment.bundle) {
                bundles.insert(assignment.bundle.clone(), bundle.clone());
                continue;
            }
            let bundle = match self.local.bundle(assignment, key) {
                Ok(bundle) => bundle,
                Err(_) => {
                    let wire = fetch(connection, &assignment.bundle).await?;
                    let bundle = verify(assignment, &wire, key).map_err(|e| e.to_string())?;
                    self.local.put_bundle(&assignment.bundle, &wire).map_err(|e| format!("keeping the bundle: {e}"))?;
                    bundle
                }
            };
            bundles.insert(assignment.bundle.clone(), Arc::new(bundle));
        }
        self.local.save(&next).map_err(|e| format!("keeping the state: {e}"))?;
        (self.apply)(serving(&next, &bundles)).await;
        tracing::info!(revision = next.revision, functions = next.functions.len(), "applied");
        self.state = next;
        self.bundles = bundles;
        self.local.prune(&self.state);
        Ok(())
    }
}

/// What `state` serves, from its verified `bundles` (by id).
fn serving(state: &AppliedState, bundles: &HashMap<String, Arc<Bundle>>) -> Vec<Serving> {
    state
        .functions
        .values()
        .filter_map(|a| {
            // Secrets reach the function as `env`, like `[vars]` (and over them).
            let with_secrets =
                |b: &Arc<Bundle>| if a.secrets.is_empty() { b.clone() } else { Arc::new(b.with_vars(&a.secrets)) };
            let stable = with_secrets(bundles.get(&a.bundle)?);
            let candidate =
                a.rollout.as_ref().and_then(|c| Some((with_secrets(bundles.get(&c.bundle)?), c.rule.clone())));
            Some(Serving { stable, candidate })
        })
        .collect()
}

/// A connection to the distribution endpoint at `url` (the control plane's API URL, or a
/// relay's `host:port`) as `identity`; the endpoint must live as long as the connection.
pub(crate) async fn connect(url: &str, identity: &Identity) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let client = identity.client_config()?;
    let address = resolve(url).await?;
    let bind: SocketAddr = if address.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("valid");
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(client);
    let connection = endpoint
        .connect(address, SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    Ok((endpoint, connection))
}

/// A bundle's wire bytes from the control plane (or a relay).
pub(crate) async fn fetch(connection: &quinn::Connection, id: &str) -> Result<Vec<u8>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("fetching bundle {}: {e}", &id[..id.len().min(12)]);
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| fail(&e))?;
    write_frame(&mut send, &NodeMessage::Fetch { bundle: id.to_string() }).await.map_err(|e| fail(&e))?;
    let _ = send.finish();
    let answer: BundleAnswer = read_frame(&mut recv).await.map_err(|e| fail(&e))?.ok_or_else(|| fail(&"no answer"))?;
    let size = match (answer.size, answer.error) {
        (Some(size), _) if size <= MAX_BUNDLE_BYTES => size as usize,
        (Some(size), _) => return Err(fail(&format!("{size} bytes is more than a bundle may have"))),
        (None, error) => return Err(fail(&error.unwrap_or_default())),
    };
    let wire = recv.read_to_end(size).await.map_err(|e| fail(&e))?;
    if wire.len() != size {
        return Err(fail(&format!("{} bytes of {size} arrived", wire.len())));
    }
    Ok(wire)
}

/// The UDP address of the distribution endpoint: the API URL's host and port.
async fn resolve(url: &str) -> Result<SocketAddr, String> {
    let authority = url.split("://").nth(1).unwrap_or(url).split('/').next().unwrap_or_default();
    let authority = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    tokio::net::lookup_host(&authority)
        .await
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to nothing"))
}
