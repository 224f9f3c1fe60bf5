//! Frames ([`tern_proto::distribution`]) over QUIC streams, and a stream's frames read by a
//! task of their own (a read cut short by a `select!` would lose bytes).

use serde::Serialize;
use serde::de::DeserializeOwned;
use tern_proto::distribution::{FrameError, decode_frame, encode_frame, frame_length};

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the stream failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("the stream failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The next frame, or `None` when the peer finished the stream between frames.
pub async fn read_frame<T: DeserializeOwned>(stream: &mut quinn::RecvStream) -> Result<Option<T>, StreamError> {
    let mut prefix = [0u8; 4];
    match stream.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; frame_length(prefix)?];
    stream.read_exact(&mut body).await?;
    Ok(Some(decode_frame(&body)?))
}

pub async fn write_frame<T: Serialize>(stream: &mut quinn::SendStream, message: &T) -> Result<(), StreamError> {
    Ok(stream.write_all(&encode_frame(message)).await?)
}

/// A task that reads `stream`'s frames into a channel until the stream ends or fails (the
/// last item says which); it stops when the returned guard is dropped.
pub fn reader<T: DeserializeOwned + Send + 'static>(
    mut stream: quinn::RecvStream,
) -> (tokio::sync::mpsc::Receiver<Result<Option<T>, StreamError>>, AbortOnDrop) {
    let (frames_tx, frames) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            let frame = read_frame::<T>(&mut stream).await;
            let end = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    (frames, AbortOnDrop(task))
}

/// Aborts its task when dropped: a task that lives only as long as the scope holding it.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
