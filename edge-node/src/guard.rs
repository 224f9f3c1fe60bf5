//! The limits the node enforces around one exchange, outside the isolate: request and
//! response body sizes and the wall clock of the whole exchange.
//!
//! A request body with a `Content-Length` over the function's limit is refused before the
//! function runs (413); a chunked one fails the function's body read once it passes the
//! limit. The wall clock covers the response head (503 `wall_time_exceeded`) and then the
//! body: a response still streaming at the deadline, or one that passes the response body
//! limit, is cut (the connection or HTTP/2 stream is reset, since the status is gone).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tern_js_api::exchange::BoxError;
use tokio::time::{Instant, Sleep};

/// Why a response body was cut.
#[derive(Debug, thiserror::Error)]
pub enum BodyCut {
    #[error("the response was still streaming when the function's wall time limit ({0} ms) ran out")]
    WallTime(u128),
    #[error("the response body passed the function's limit of {0} bytes (limits.response_body_mib)")]
    TooLarge(u64),
}

impl BodyCut {
    /// The limit, as kill records name it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::WallTime(_) => "wall_time_exceeded",
            Self::TooLarge(_) => "response_body_too_large",
        }
    }
}

/// Told once, with the reason, when a body is cut.
pub type OnCut = Box<dyn FnOnce(&BodyCut) + Send + Sync>;

/// A response body cut at a deadline or a size, reporting the cut once through `on_cut`.
pub struct GuardedBody<B> {
    inner: B,
    deadline: Pin<Box<Sleep>>,
    wall_ms: u128,
    sent: u64,
    max: u64,
    on_cut: Option<OnCut>,
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, deadline: Instant, wall_ms: u128, max: u64, on_cut: OnCut) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            wall_ms,
            sent: 0,
            max,
            on_cut: Some(on_cut),
        }
    }

    fn cut(&mut self, why: BodyCut) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(report) = self.on_cut.take() {
            report(&why);
        }
        Poll::Ready(Some(Err(Box::new(why))))
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.on_cut.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                    if this.sent > this.max {
                        return this.cut(BodyCut::TooLarge(this.max));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    let ms = this.wall_ms;
                    return this.cut(BodyCut::WallTime(ms));
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn stream(chunks: Vec<&'static [u8]>) -> http_body_util::combinators::BoxBody<Bytes, BoxError> {
        let frames = chunks.into_iter().map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c))));
        StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn a_body_past_its_size_is_cut_and_reported_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let body = GuardedBody::new(
            stream(vec![b"aaaa", b"bbbb", b"cccc"]),
            Instant::now() + std::time::Duration::from_secs(60),
            60_000,
            6,
            Box::new(move |cut| tx.send(cut.to_string()).unwrap()),
        );
        let err = body.collect().await.map(|_| ()).expect_err("cut");
        assert!(err.to_string().contains("6 bytes"), "{err}");
        assert_eq!(rx.try_iter().count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_streaming_at_the_deadline_is_cut() {
        let pending = http_body_util::StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, BoxError>>());
        let body = GuardedBody::new(
            pending,
            Instant::now() + std::time::Duration::from_millis(100),
            100,
            u64::MAX,
            Box::new(|_| {}),
        );
        let err = body.collect().await.map(|_| ()).expect_err("cut");
        assert!(err.to_string().contains("wall time"), "{err}");
    }
}
