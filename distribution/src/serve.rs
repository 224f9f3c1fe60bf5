//! The serving side of the distribution channel that the control plane and relays share:
//! accepting nodes' connections (each served by a task of its own) and answering bundle
//! fetches, one per stream.

use std::future::Future;

use tern_proto::distribution::{BundleAnswer, NodeMessage};

use crate::framing::{StreamError, read_frame, write_frame};

/// How a node's connection ended, as a server tells it.
pub trait Ended: std::fmt::Display {
    /// The reason the node was turned away, which it is told as the connection closes.
    fn refusal(&self) -> Option<&str>;
}

/// Serves each connection `endpoint` accepts with `serve`, until the endpoint closes.
pub async fn accept<F, Fut, E>(endpoint: quinn::Endpoint, serve: F)
where
    F: Fn(quinn::Connection) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Ended,
{
    while let Some(incoming) = endpoint.accept().await {
        let serve = serve.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::info!(%remote, "a node's connection failed its handshake: {e}");
                    return;
                }
            };
            if let Err(e) = serve(connection.clone()).await {
                tracing::info!(%remote, "node connection ended: {e}");
                if let Some(reason) = e.refusal() {
                    connection.close(1u32.into(), reason.as_bytes());
                }
            }
        });
    }
}

/// Answers the bundle fetches `connection` opens (after its subscription stream), each with
/// the wire bytes `bundle` finds for the id, or its error.
pub async fn answer_fetches<F, Fut>(connection: quinn::Connection, bundle: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, String>> + Send,
{
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let bundle = bundle.clone();
        tokio::spawn(async move {
            let answer = async {
                let Some(NodeMessage::Fetch { bundle: id }) = read_frame(&mut recv).await? else {
                    return Ok(Some("a fetch stream must start with fetch"));
                };
                match bundle(id).await {
                    Ok(wire) => {
                        write_frame(&mut send, &BundleAnswer { size: Some(wire.len() as u64), error: None }).await?;
                        send.write_all(&wire).await.map_err(StreamError::from)?;
                    }
                    Err(error) => write_frame(&mut send, &BundleAnswer { size: None, error: Some(error) }).await?,
                }
                let _ = send.finish();
                Ok::<_, StreamError>(None)
            };
            match answer.await {
                Ok(None) => {}
                Ok(Some(refused)) => tracing::info!("a bundle fetch was refused: {refused}"),
                Err(e) => tracing::info!("a bundle fetch failed: {e}"),
            }
        });
    }
}
