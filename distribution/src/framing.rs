//! Frames ([`tern_proto::distribution`]) over QUIC streams.

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
