//! The control plane's side of the distribution channel: a QUIC endpoint (mutual TLS under
//! [`crate::ca`]) where each enrolled node keeps one connection. On the subscription stream
//! it sends the node every assignment newer than the node's revision, as soon as a change is
//! committed, and records the node's acknowledgements in the [`crate::fleet`]; on other
//! streams it serves bundles by id. A relay subscribes the same way and also reports the
//! nodes below it ([`Below`]), which enter the fleet as if connected here.

use std::collections::HashMap;
use std::sync::Arc;

use tern_distribution::framing::{StreamError, read_frame, reader, write_frame};
use tern_proto::distribution::{Assignment, DownstreamEvent, NodeMessage, ToRelay, Update, changes_after};

use crate::api::{ControlPlane, now_ms};
use crate::store::{Active, Store, StoreError};
use tern_distribution::identity::peer_fingerprint;
use tern_distribution::serve::{Ended, accept, answer_fetches};

#[derive(Debug, thiserror::Error)]
enum DistributionError {
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("refused: {0}")]
    Refused(String),
}

impl Ended for DistributionError {
    fn refusal(&self) -> Option<&str> {
        if let DistributionError::Refused(reason) = self { Some(reason) } else { None }
    }
}

/// Serves nodes (and relays) on `endpoint` until it is closed.
pub async fn serve<S: Store>(plane: Arc<ControlPlane<S>>, endpoint: quinn::Endpoint) {
    accept(endpoint, move |connection| {
        let plane = plane.clone();
        async move { serve_node(&plane, &connection).await }
    })
    .await
}

async fn serve_node<S: Store>(
    plane: &Arc<ControlPlane<S>>,
    connection: &quinn::Connection,
) -> Result<(), DistributionError> {
    let print =
        peer_fingerprint(connection).ok_or_else(|| DistributionError::Refused("no client certificate".into()))?;
    let record = plane.store().nodes().await?.into_iter().find(|n| n.fingerprint == print).ok_or_else(|| {
        DistributionError::Refused(
            "this certificate belongs to no enrolled node or relay (it was replaced by a newer enrolment)".into(),
        )
    })?;
    let (mut send, mut recv) = connection.accept_bi().await?;
    let (node, applied, relay) = match read_frame(&mut recv).await? {
        Some(NodeMessage::Hello { node, applied }) => (node, applied, false),
        Some(NodeMessage::RelayHello { relay, applied }) => (relay, applied, true),
        _ => return Err(DistributionError::Refused("the subscription must start with hello".into())),
    };
    if node.name != record.info.name {
        return Err(DistributionError::Refused(format!(
            "this certificate was issued to {} {:?}, not {:?}",
            role(record.relay),
            record.info.name,
            node.name
        )));
    }
    if relay != record.relay {
        return Err(DistributionError::Refused(format!(
            "{:?} is enrolled as a {}, and subscribed as a {}",
            node.name,
            role(record.relay),
            role(relay)
        )));
    }
    let name = node.name.clone();
    tracing::info!(node = %name, region = %node.region, applied, role = role(relay), "connected");
    let session = plane.fleet().connected(node, applied, now_ms());
    plane.publish(&name).await;
    let from = plane.clone();
    let fetches = tokio::spawn(answer_fetches(connection.clone(), move |id| {
        let plane = from.clone();
        async move {
            match plane.store().bundle(&id).await {
                Ok(Some(wire)) => Ok(wire),
                Ok(None) => Err(format!("no bundle {id}")),
                Err(e) => Err(format!("bundle {id}: {e}")),
            }
        }
    }));
    let mut below = relay.then(|| Below { relay: name.clone(), sessions: HashMap::new() });
    let result = subscription(plane, &name, applied, &mut send, recv, below.as_mut()).await;
    fetches.abort();
    if let Some(below) = below {
        below.lost(plane).await;
    }
    plane.fleet().disconnected(&name, session);
    plane.publish(&name).await;
    tracing::info!(node = %name, role = role(relay), "disconnected");
    result
}

fn role(relay: bool) -> &'static str {
    if relay { "relay" } else { "node" }
}

/// The nodes connected through one relay, as it reports them.
struct Below {
    relay: String,
    /// Each node's session in the fleet, by name.
    sessions: HashMap<String, u64>,
}

impl Below {
    /// Records what happened to `node` below the relay; answers a refusal for a node that is
    /// no current enrolment.
    async fn event<S: Store>(
        &mut self,
        plane: &Arc<ControlPlane<S>>,
        node: String,
        event: DownstreamEvent,
    ) -> Result<Option<ToRelay>, DistributionError> {
        let known = self.sessions.contains_key(&node);
        match event {
            DownstreamEvent::Connected { info, applied, fingerprint } => {
                let records = plane.store().nodes().await?;
                let current = records.iter().find(|r| r.fingerprint == fingerprint && !r.relay);
                let refusal = match current {
                    None => Some("its certificate belongs to no enrolled node (a newer enrolment replaced it)".into()),
                    Some(r) if r.info.name != node || info.name != node => {
                        Some(format!("its certificate was issued to node {:?}, not {node:?}", r.info.name))
                    }
                    Some(_) => None,
                };
                if let Some(reason) = refusal {
                    tracing::info!(relay = %self.relay, node, "refused a node below the relay: {reason}");
                    return Ok(Some(ToRelay::Refuse { node, reason }));
                }
                tracing::info!(relay = %self.relay, node, applied, "node connected through the relay");
                let session = plane.fleet().connected_via(info, applied, now_ms(), Some(self.relay.clone()));
                self.sessions.insert(node.clone(), session);
            }
            DownstreamEvent::Applied { revision } if known => plane.fleet().applied(&node, revision, now_ms()),
            DownstreamEvent::Refused { revision, reason } if known => {
                tracing::warn!(relay = %self.relay, node, revision, "node refused an update: {reason}");
                plane.fleet().refused(&node, revision, reason);
            }
            DownstreamEvent::Disconnected if known => {
                let session = self.sessions.remove(&node).unwrap_or_default();
                plane.fleet().disconnected(&node, session);
                tracing::info!(relay = %self.relay, node, "node disconnected from the relay");
            }
            // Events of a node refused above, or already gone.
            _ => return Ok(None),
        }
        plane.publish(&node).await;
        Ok(None)
    }

    /// The relay's connection ended: its nodes are no longer connected (they come back
    /// through it, another relay, or directly).
    async fn lost<S: Store>(self, plane: &Arc<ControlPlane<S>>) {
        for (node, session) in self.sessions {
            plane.fleet().disconnected(&node, session);
            plane.publish(&node).await;
        }
    }
}

/// Sends updates as revisions are committed, and takes the node's acknowledgements.
async fn subscription<S: Store>(
    plane: &Arc<ControlPlane<S>>,
    name: &str,
    applied: u64,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
    mut below: Option<&mut Below>,
) -> Result<(), DistributionError> {
    let (mut messages, _reader) = reader::<NodeMessage>(recv);
    let mut revisions = plane.revisions();
    // With replicas, this one may not have heard of the newest commits yet: never answer a
    // node from behind what it has.
    plane.advance(plane.store().revision().await?);
    // `base`: what the node serves, which updates are computed from; `sent`: the revision
    // last sent, so that a refused update is not sent again until something new is committed.
    let (mut base, mut sent) = (applied, applied);
    loop {
        let current = *revisions.borrow_and_update();
        if current != sent {
            let mut update = update_for(plane.store(), base, current).await?;
            for assignment in &mut update.assignments {
                assignment.secrets = plane.open_secrets(&assignment.function).await?;
            }
            if below.is_some() {
                write_frame(send, &ToRelay::Update(update)).await?;
            } else {
                write_frame(send, &update).await?;
            }
            sent = current;
        }
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return Ok(()) },
            message = messages.recv() => match message.transpose()?.flatten() {
                None => return Ok(()),
                Some(NodeMessage::Applied { revision }) => {
                    base = revision;
                    plane.fleet().applied(name, revision, now_ms());
                    plane.publish(name).await;
                }
                Some(NodeMessage::Refused { revision, reason }) => {
                    tracing::warn!(node = name, revision, "node refused an update: {reason}");
                    plane.fleet().refused(name, revision, reason);
                    plane.publish(name).await;
                }
                Some(NodeMessage::Downstream { node, event }) if below.is_some() => {
                    let below = below.as_deref_mut().expect("checked");
                    if let Some(refusal) = below.event(plane, node, event).await? {
                        write_frame(send, &refusal).await?;
                    }
                }
                Some(other) => return Err(DistributionError::Refused(format!("unexpected message {other:?}"))),
            },
        }
    }
}

/// The update that brings a node from revision `from` to `current`.
async fn update_for(store: &impl Store, from: u64, current: u64) -> Result<Update, StoreError> {
    if from > current {
        // The node is ahead of this control plane's log (its state was reset): start over.
        let assignments = store.active().await?.iter().map(assignment).collect();
        return Ok(Update { revision: current, full: true, assignments });
    }
    let log: Vec<Assignment> = store.changes_since(from).await?.iter().map(|c| assignment(&c.active)).collect();
    let revision = log.last().map_or(current, |a| a.revision);
    Ok(Update { revision, full: false, assignments: changes_after(from, &log) })
}

fn assignment(active: &Active) -> Assignment {
    Assignment {
        function: active.function.clone(),
        version: active.version,
        bundle: active.bundle.clone(),
        signature: active.signature.clone(),
        revision: active.revision,
        rollout: active.rollout.clone(),
        secrets: Default::default(),
    }
}
