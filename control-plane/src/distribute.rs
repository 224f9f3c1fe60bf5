//! The control plane's side of the distribution channel: a QUIC endpoint (mutual TLS under
//! [`crate::ca`]) where each enrolled node keeps one connection. On the subscription stream
//! it sends the node every assignment newer than the node's revision, as soon as a change is
//! committed, and records the node's acknowledgements in the [`crate::fleet`]; on other
//! streams it serves bundles by id.

use std::sync::Arc;

use tern_distribution::framing::{StreamError, read_frame, write_frame};
use tern_proto::distribution::{Assignment, BundleAnswer, NodeMessage, Update, changes_after};

use crate::api::{ControlPlane, now_ms};
use crate::ca::fingerprint;
use crate::store::{Active, Store, StoreError};

#[derive(Debug, thiserror::Error)]
enum DistributionError {
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("{0}")]
    Stream(#[from] StreamError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("refused: {0}")]
    Refused(String),
}

/// Serves nodes on `endpoint` until it is closed.
pub async fn serve<S: Store>(plane: Arc<ControlPlane<S>>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let plane = plane.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::info!(%remote, "a node's connection failed its handshake: {e}");
                    return;
                }
            };
            if let Err(e) = serve_node(&plane, &connection).await {
                tracing::info!(%remote, "node connection ended: {e}");
                if let DistributionError::Refused(reason) = &e {
                    connection.close(1u32.into(), reason.as_bytes());
                }
            }
        });
    }
}

async fn serve_node<S: Store>(
    plane: &Arc<ControlPlane<S>>,
    connection: &quinn::Connection,
) -> Result<(), DistributionError> {
    let certificate = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned())
        .ok_or_else(|| DistributionError::Refused("no client certificate".into()))?;
    let print = fingerprint(&certificate);
    let record = plane.store().nodes().await?.into_iter().find(|n| n.fingerprint == print).ok_or_else(|| {
        DistributionError::Refused(
            "this certificate belongs to no enrolled node (it was replaced by a newer enrolment)".into(),
        )
    })?;
    let (mut send, mut recv) = connection.accept_bi().await?;
    let Some(NodeMessage::Hello { node, applied }) = read_frame(&mut recv).await? else {
        return Err(DistributionError::Refused("the subscription must start with hello".into()));
    };
    if node.name != record.info.name {
        return Err(DistributionError::Refused(format!(
            "this certificate was issued to node {:?}, not {:?}",
            record.info.name, node.name
        )));
    }
    let name = node.name.clone();
    tracing::info!(node = %name, region = %node.region, applied, "node connected");
    let session = plane.fleet().connected(node, applied, now_ms());
    plane.publish(&name).await;
    let fetches = tokio::spawn(serve_fetches(plane.clone(), connection.clone()));
    let result = subscription(plane, &name, applied, &mut send, recv).await;
    fetches.abort();
    plane.fleet().disconnected(&name, session);
    plane.publish(&name).await;
    tracing::info!(node = %name, "node disconnected");
    result
}

/// Sends updates as revisions are committed, and takes the node's acknowledgements.
async fn subscription<S: Store>(
    plane: &Arc<ControlPlane<S>>,
    name: &str,
    applied: u64,
    send: &mut quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), DistributionError> {
    // Frames are read by a task of their own: a read cut short by a select would lose bytes.
    let (messages_tx, mut messages) = tokio::sync::mpsc::channel(16);
    let reader = tokio::spawn(async move {
        loop {
            let message = read_frame::<NodeMessage>(&mut recv).await;
            let end = !matches!(message, Ok(Some(_)));
            if messages_tx.send(message).await.is_err() || end {
                return;
            }
        }
    });
    let _reader = AbortOnDrop(reader);
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
            write_frame(send, &update).await?;
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
                Some(other) => return Err(DistributionError::Refused(format!("unexpected message {other:?}"))),
            },
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

/// Answers bundle requests, one per stream.
async fn serve_fetches<S: Store>(plane: Arc<ControlPlane<S>>, connection: quinn::Connection) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let plane = plane.clone();
        tokio::spawn(async move {
            let answer = async {
                let Some(NodeMessage::Fetch { bundle }) = read_frame(&mut recv).await? else {
                    return Err(DistributionError::Refused("a fetch stream must start with fetch".into()));
                };
                match plane.store().bundle(&bundle).await? {
                    Some(wire) => {
                        let answer = BundleAnswer { size: Some(wire.len() as u64), error: None };
                        write_frame(&mut send, &answer).await?;
                        send.write_all(&wire).await.map_err(StreamError::from)?;
                    }
                    None => {
                        let answer = BundleAnswer { size: None, error: Some(format!("no bundle {bundle}")) };
                        write_frame(&mut send, &answer).await?;
                    }
                }
                let _ = send.finish();
                Ok(())
            };
            if let Err(e) = answer.await {
                tracing::info!("a bundle fetch failed: {e}");
            }
        });
    }
}
