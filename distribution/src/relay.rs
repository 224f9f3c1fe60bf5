//! A relay (`tern relay`): one subscription upstream to the control plane, fanned out to the
//! nodes below it, so that the control plane keeps one connection per relay rather than per
//! node and each bundle crosses the long link once.
//!
//! Upstream it is a node that subscribes with [`NodeMessage::RelayHello`]: it fetches every
//! bundle of each update, verifies it (hash and signature, as a node does), keeps it and the
//! state on disk, and acknowledges. Downstream it is a control plane: a QUIC endpoint (its
//! certificate carries the distribution name; only certificates from the control plane's CA
//! get in) that sends each node the changes since the node's revision, computed from the
//! relay's own state ([`RelayedState::update_for`]), and serves bundles from its disk.
//! What happens below (a node connects, applies, refuses, leaves) goes up as
//! [`NodeMessage::Downstream`]; after reconnecting upstream the relay reports again every
//! node connected to it. The control plane checks each node's certificate against its
//! enrolments and may answer [`ToRelay::Refuse`], which ends that node's connection.
//!
//! With the control plane unreachable, the relay goes on serving what it has, including
//! after its own restart.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_proto::VerifyingKey;
use tern_proto::distribution::{Assignment, DownstreamEvent, NodeInfo, NodeMessage, RelayedState, ToRelay, Update};
use tokio::sync::{mpsc, watch};

use crate::agent::{SessionError, connect, fetch};
use crate::framing::{AbortOnDrop, StreamError, read_frame, reader, write_frame};
use crate::identity::{Identity, IdentityError, peer_fingerprint};
use crate::local::{LocalState, verify};
use crate::serve::{Ended, accept, answer_fetches};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub struct RelayConfig {
    /// The control plane's API URLs (replicas in turn); the distribution endpoint is the
    /// same host and port over UDP.
    pub upstream: Vec<String>,
    pub join_token: Option<String>,
    /// The relay's name, region and place, and the address nodes reach it on.
    pub info: NodeInfo,
    /// The bound UDP socket of the distribution endpoint for nodes.
    pub socket: std::net::UdpSocket,
    pub data: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("the relay has not enrolled yet: give --join-token (the control plane's data directory has it)")]
    NoToken,
    #[error("the relay's data directory {0}: {1}")]
    Data(PathBuf, std::io::Error),
    #[error("the relay's identity cannot serve nodes: {0}")]
    Tls(String),
    #[error("cannot open the relay's endpoint: {0}")]
    Listen(std::io::Error),
}

/// Runs the relay until the process ends; fails only when it cannot go on at all. `ready`
/// gets the bound address once nodes can connect (with the kept state loaded).
pub async fn run(config: RelayConfig, ready: tokio::sync::oneshot::Sender<SocketAddr>) -> Result<(), RelayError> {
    let local = LocalState::open(&config.data).map_err(|e| RelayError::Data(config.data.clone(), e))?;
    let identity = match Identity::load(&config.data)?.filter(|id| id.name == config.info.name) {
        Some(identity) => identity,
        None => enroll(&config).await?,
    };
    let key = identity.verifying_key().map_err(RelayError::Tls)?;
    let (state, bundles) = local.load(&key);
    tracing::info!(revision = state.revision, functions = state.functions.len(), "relaying the kept state");
    let relayed = RelayedState { full_below: state.revision, state, reset: false };
    let relay = Arc::new(Relay {
        state: watch::Sender::new(Arc::new(relayed)),
        local,
        key,
        verified: Mutex::new(bundles.into_keys().collect()),
        below: Mutex::new(Below::default()),
        upstream: Mutex::new(None),
    });
    let server = identity.server_config().map_err(RelayError::Tls)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), config.socket, runtime)
        .map_err(RelayError::Listen)?;
    let bound = endpoint.local_addr().map_err(RelayError::Listen)?;
    let serving = relay.clone();
    tokio::spawn(accept(endpoint, move |connection| {
        let relay = serving.clone();
        async move { serve_node(&relay, &connection).await }
    }));
    let _ = ready.send(bound);

    let mut backoff = BACKOFF_FIRST;
    let mut which = 0;
    loop {
        let url = config.upstream.get(which % config.upstream.len().max(1)).cloned().unwrap_or_default();
        match relay.session(&url, &config.info, &identity).await {
            Ok(()) => {}
            Err(e) => tracing::warn!("upstream ({url}): {e}; reconnecting"),
        }
        relay.below().upstream = None;
        let was_connected = relay.upstream.lock().unwrap_or_else(|p| p.into_inner()).take().is_some();
        which += 1;
        if was_connected {
            backoff = BACKOFF_FIRST;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Enrols with the first control plane that answers.
async fn enroll(config: &RelayConfig) -> Result<Identity, RelayError> {
    let token = config.join_token.as_deref().ok_or(RelayError::NoToken)?;
    let mut backoff = BACKOFF_FIRST;
    for which in 0.. {
        let url = config.upstream.get(which % config.upstream.len().max(1)).cloned().unwrap_or_default();
        match Identity::enroll(&config.data, &url, token, &config.info, true).await {
            Ok(identity) => {
                tracing::info!(relay = %config.info.name, "enrolled with the control plane");
                return Ok(identity);
            }
            Err(e @ IdentityError::Unreachable { .. }) => tracing::warn!("{e}; trying again"),
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    unreachable!("the loop only ends by returning")
}

struct Relay {
    /// What the relay serves, watched by every node's subscription.
    state: watch::Sender<Arc<RelayedState>>,
    local: LocalState,
    key: VerifyingKey,
    /// Bundles on disk that were verified, by id.
    verified: Mutex<HashSet<String>>,
    below: Mutex<Below>,
    /// The connection upstream while there is one.
    upstream: Mutex<Option<quinn::Connection>>,
}

/// The nodes connected to the relay, and the way to report on them upstream.
#[derive(Default)]
struct Below {
    nodes: HashMap<String, Downstream>,
    /// Frames for the control plane, while the relay is subscribed.
    upstream: Option<mpsc::UnboundedSender<NodeMessage>>,
    sessions: u64,
}

struct Downstream {
    info: NodeInfo,
    applied: u64,
    fingerprint: String,
    session: u64,
    connection: quinn::Connection,
}

impl Below {
    fn report(&self, node: &str, event: DownstreamEvent) {
        if let Some(upstream) = &self.upstream {
            let _ = upstream.send(NodeMessage::Downstream { node: node.to_string(), event });
        }
    }

    fn connected(node: &Downstream) -> DownstreamEvent {
        DownstreamEvent::Connected {
            info: node.info.clone(),
            applied: node.applied,
            fingerprint: node.fingerprint.clone(),
        }
    }
}

impl Relay {
    fn below(&self) -> std::sync::MutexGuard<'_, Below> {
        self.below.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> Arc<RelayedState> {
        self.state.borrow().clone()
    }

    /// One subscription upstream, until it ends.
    async fn session(&self, url: &str, info: &NodeInfo, identity: &Identity) -> Result<(), SessionError> {
        let (_endpoint, connection) = connect(url, identity).await.map_err(SessionError::Connect)?;
        let (mut send, mut recv) = connection.open_bi().await?;
        let applied = self.current().state.revision;
        write_frame(&mut send, &NodeMessage::RelayHello { relay: info.clone(), applied }).await?;
        tracing::info!(address = %connection.remote_address(), revision = applied, "relay subscribed upstream");
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = Some(connection.clone());
        // Frames upstream go through one writer: the relay's own acknowledgements and what
        // happens below it. Every node already connected is reported first.
        let (frames, mut outgoing) = mpsc::unbounded_channel();
        {
            let mut below = self.below();
            for (name, node) in &below.nodes {
                let _ = frames.send(NodeMessage::Downstream { node: name.clone(), event: Below::connected(node) });
            }
            below.upstream = Some(frames.clone());
        }
        let writer = tokio::spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                if write_frame(&mut send, &frame).await.is_err() {
                    return;
                }
            }
        });
        let _writer = AbortOnDrop(writer);
        while let Some(frame) = read_frame::<ToRelay>(&mut recv).await? {
            match frame {
                ToRelay::Update(update) => {
                    let reply = match self.apply(&connection, &update).await {
                        Ok(()) => NodeMessage::Applied { revision: update.revision },
                        Err(reason) => {
                            tracing::error!(
                                revision = update.revision,
                                "update refused, relaying what was there: {reason}"
                            );
                            NodeMessage::Refused { revision: update.revision, reason }
                        }
                    };
                    let _ = frames.send(reply);
                }
                ToRelay::Refuse { node, reason } => {
                    tracing::warn!(node, "the control plane refused a node below this relay: {reason}");
                    if let Some(node) = self.below().nodes.remove(&node) {
                        node.connection.close(1u32.into(), reason.as_bytes());
                    }
                }
            }
        }
        Err(SessionError::Closed)
    }

    /// Takes `update` whole (every bundle fetched, verified and kept) or not at all, then
    /// offers it to the nodes below.
    async fn apply(&self, connection: &quinn::Connection, update: &Update) -> Result<(), String> {
        let next = self.current().with(update);
        for part in next.state.functions.values().flat_map(Assignment::parts) {
            if self.verified.lock().unwrap_or_else(|p| p.into_inner()).contains(&part.bundle) {
                continue;
            }
            if self.local.bundle(&part, &self.key).is_err() {
                let wire = fetch(connection, &part.bundle).await?;
                verify(&part, &wire, &self.key).map_err(|e| e.to_string())?;
                self.local.put_bundle(&part.bundle, &wire).map_err(|e| format!("keeping the bundle: {e}"))?;
            }
            self.verified.lock().unwrap_or_else(|p| p.into_inner()).insert(part.bundle.clone());
        }
        self.local.save(&next.state).map_err(|e| format!("keeping the state: {e}"))?;
        tracing::info!(revision = next.state.revision, functions = next.state.functions.len(), "relaying");
        let used: HashSet<String> =
            next.state.functions.values().flat_map(Assignment::parts).map(|a| a.bundle).collect();
        self.local.prune(&next.state);
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).retain(|id| used.contains(id));
        self.state.send_replace(Arc::new(next));
        Ok(())
    }

    /// A bundle for a node below: from disk, else (pruned meanwhile, or never kept) passed
    /// through from upstream. The node verifies it either way.
    async fn bundle(&self, id: &str) -> Result<Vec<u8>, String> {
        if let Some(wire) = self.local.wire(id) {
            return Ok(wire);
        }
        let upstream = self.upstream.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match upstream {
            Some(connection) => fetch(&connection, id).await,
            None => Err(format!("no bundle {id} here, and the control plane is unreachable")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum NodeError {
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("{0}")]
    Stream(#[from] StreamError),
    #[error("refused: {0}")]
    Refused(String),
}

impl Ended for NodeError {
    fn refusal(&self) -> Option<&str> {
        if let NodeError::Refused(reason) = self { Some(reason) } else { None }
    }
}

async fn serve_node(relay: &Arc<Relay>, connection: &quinn::Connection) -> Result<(), NodeError> {
    let fingerprint = peer_fingerprint(connection).ok_or_else(|| NodeError::Refused("no client certificate".into()))?;
    let (mut send, mut recv) = connection.accept_bi().await?;
    let (info, applied) = match read_frame(&mut recv).await? {
        Some(NodeMessage::Hello { node, applied }) => (node, applied),
        Some(NodeMessage::RelayHello { .. }) => {
            return Err(NodeError::Refused("a relay subscribes to the control plane, not to another relay".into()));
        }
        _ => return Err(NodeError::Refused("the subscription must start with hello".into())),
    };
    let name = info.name.clone();
    let session = {
        let mut below = relay.below();
        below.sessions += 1;
        let node = Downstream { info, applied, fingerprint, session: below.sessions, connection: connection.clone() };
        below.report(&name, Below::connected(&node));
        // A newer connection of the same node replaces the older one.
        if let Some(older) = below.nodes.insert(name.clone(), node) {
            older.connection.close(0u32.into(), b"replaced by a newer connection");
        }
        below.sessions
    };
    tracing::info!(node = %name, applied, "node connected");
    let from = relay.clone();
    let fetches = tokio::spawn(answer_fetches(connection.clone(), move |id| {
        let relay = from.clone();
        async move { relay.bundle(&id).await }
    }));
    let result = subscription(relay, &name, applied, &mut send, recv).await;
    fetches.abort();
    let mut below = relay.below();
    if below.nodes.get(&name).is_some_and(|n| n.session == session) {
        below.nodes.remove(&name);
        below.report(&name, DownstreamEvent::Disconnected);
        tracing::info!(node = %name, "node disconnected");
    }
    result
}

/// Sends the node the relay's state as it changes, and reports its acknowledgements.
async fn subscription(
    relay: &Arc<Relay>,
    name: &str,
    applied: u64,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), NodeError> {
    let (mut messages, _reader) = reader::<NodeMessage>(recv);
    let mut states = relay.state.subscribe();
    // `base`: what the node serves; `sent`: the relay's revision last considered, so that a
    // refused update is not sent again until something new arrives.
    let (mut base, mut sent) = (applied, None);
    loop {
        let current = states.borrow_and_update().clone();
        if sent != Some(current.state.revision) {
            if let Some(update) = current.update_for(base) {
                write_frame(send, &update).await?;
            }
            sent = Some(current.state.revision);
        }
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return Ok(()) },
            message = messages.recv() => match message.transpose()?.flatten() {
                None => return Ok(()),
                Some(NodeMessage::Applied { revision }) => {
                    base = revision;
                    let mut below = relay.below();
                    if let Some(node) = below.nodes.get_mut(name) {
                        node.applied = revision;
                    }
                    below.report(name, DownstreamEvent::Applied { revision });
                }
                Some(NodeMessage::Refused { revision, reason }) => {
                    tracing::warn!(node = name, revision, "node refused an update: {reason}");
                    relay.below().report(name, DownstreamEvent::Refused { revision, reason });
                }
                Some(other) => return Err(NodeError::Refused(format!("unexpected message {other:?}"))),
            },
        }
    }
}
