//! A function's response body as it leaves the isolate: one buffer, or chunks the function
//! streams through a bounded channel whose two ends ([`stream`]) are the isolate's
//! [`StreamSender`] and the connection's [`StreamBody`]. A streamed body ends cleanly only
//! when the function closed it, and can be aborted from any thread.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};

/// Chunks of a streamed response body in flight between the isolate and the connection.
pub(super) const RESPONSE_CHANNEL_CHUNKS: usize = 8;

/// A response body: empty, one buffer, chunks streamed from the isolate, or a body piped
/// from an isolate host process.
pub enum ResponseBody {
    Full(Option<Bytes>),
    Stream(StreamBody),
    Piped(http_body_util::combinators::BoxBody<Bytes, StreamAborted>),
}

/// A body the function streams: its chunks, in a bounded channel. It ends cleanly only when
/// the function closed the stream (`closed`); if the sender goes away otherwise (the isolate
/// ended or failed while the stream was open) the body fails, so that the client never takes
/// a truncated body for a whole one. `abort` fails it at once, from any thread (see
/// [`super::Replies::fail_all`]), whatever the channel holds.
pub struct StreamBody {
    chunks: mpsc::Receiver<Result<Bytes, StreamAborted>>,
    closed: Arc<AtomicBool>,
    abort: Option<oneshot::Receiver<String>>,
}

impl StreamBody {
    pub(super) fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, StreamAborted>>> {
        if let Some(abort) = &mut self.abort {
            match Pin::new(abort).poll(cx) {
                Poll::Ready(Ok(why)) => {
                    self.abort = None;
                    self.chunks.close();
                    return Poll::Ready(Some(Err(StreamAborted(why))));
                }
                // Closed or failed the ordinary way: no abort will come.
                Poll::Ready(Err(_)) => self.abort = None,
                Poll::Pending => {}
            }
        }
        match std::task::ready!(self.chunks.poll_recv(cx)) {
            Some(chunk) => Poll::Ready(Some(chunk)),
            None if self.closed.load(Ordering::Acquire) => Poll::Ready(None),
            None => Poll::Ready(Some(Err(StreamAborted(
                "the function's isolate ended before it closed the response stream".into(),
            )))),
        }
    }
}

/// The isolate's end of a [`StreamBody`].
pub(super) struct StreamSender {
    pub(super) chunks: mpsc::Sender<Result<Bytes, StreamAborted>>,
    closed: Arc<AtomicBool>,
}

impl StreamSender {
    /// The function closed the stream: once its chunks are read, the body ends cleanly.
    pub(super) fn close(self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// A streamed body's two ends, and the switch that aborts it from any thread.
pub(super) fn stream() -> (StreamSender, StreamBody, oneshot::Sender<String>) {
    let (chunks, rx) = mpsc::channel(RESPONSE_CHANNEL_CHUNKS);
    let (abort, on_abort) = oneshot::channel();
    let closed = Arc::new(AtomicBool::new(false));
    (StreamSender { chunks, closed: closed.clone() }, StreamBody { chunks: rx, closed, abort: Some(on_abort) }, abort)
}

/// The function's response stream errored after the head was sent.
#[derive(Debug, thiserror::Error)]
#[error("the function's response stream failed: {0}")]
pub struct StreamAborted(pub String);

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = StreamAborted;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream(body) => body.poll_chunk(cx).map(|chunk| chunk.map(|r| r.map(Frame::data))),
            Self::Piped(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(None) => true,
            Self::Piped(body) => body.is_end_stream(),
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream(_) => SizeHint::default(),
            Self::Piped(body) => body.size_hint(),
        }
    }
}
