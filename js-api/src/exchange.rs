//! The exchange: how one HTTP request crosses from the host into a function and its
//! response crosses back, with bodies streaming both ways.
//!
//! The host puts [`Exchange`]s into the isolate's [`Inbox`]; the handler glue
//! (`js/20_handler.js`) pulls them with `op_tern_next_request`, reads the request body on
//! demand with `op_tern_body_read`, and answers with `op_tern_respond` plus, for a streamed
//! body, `op_tern_body_write`/`op_tern_body_close`. Nothing here buffers a whole body.
//! Ops decode, borrow state and call the plain functions below; they know no HTTP server.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use deno_core::convert::ByteString;
use deno_core::convert::Uint8Array;
use deno_core::{OpState, op2};
use deno_error::JsErrorBox;
use http_body::{Body, Frame, SizeHint};
use tern_proto::forwarding::CF_HEADER;
use tokio::sync::{mpsc, oneshot};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body as the host hands it over: any streaming body.
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Chunks of a streamed response body in flight between the isolate and the connection.
const RESPONSE_CHANNEL_CHUNKS: usize = 8;

/// One request on its way into a function, and the slot its answer goes into.
pub struct Exchange {
    /// Names the request in responses (`tern-request-id`) and in kill records.
    pub id: RequestId,
    /// Tern nodes this request already passed through (`tern-hops`), to cut loops.
    pub hops: u32,
    pub request: http::Request<RequestBody>,
    /// The absolute URL the function sees as `request.url`.
    pub url: String,
    pub reply: oneshot::Sender<Reply>,
}

/// A request's identity on this node, printed as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a function answered.
pub enum Reply {
    Response(http::Response<ResponseBody>),
    Failed(Failure),
}

/// Why a function produced no response. `kind` maps to the `tern-error` header.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The handler threw or its promise rejected.
    UncaughtException,
    /// The handler returned something that is not a `Response`.
    InvalidResponse,
    /// The function's modules failed to load or evaluate, or it has no handler.
    LoadFailed,
    /// The isolate stopped before it answered (fatal engine error).
    IsolateFailed,
    /// The request used more CPU time than `limits.cpu_ms`.
    CpuLimitExceeded,
    /// The isolate's heap and ArrayBuffers outgrew `limits.memory_mib`.
    MemoryLimitExceeded,
    /// Evaluating the modules used more CPU time than `limits.startup_cpu_ms`.
    StartupLimitExceeded,
    /// The request took longer than `limits.wall_ms`.
    WallTimeExceeded,
    /// The isolate host process serving the function died with the request in it.
    IsolateHostCrashed,
    /// The request made more outbound fetches than `limits.subrequests`.
    SubrequestLimitExceeded,
    /// A WebAssembly (WASI) function trapped or exited with a non-zero status.
    WasmTrap,
}

impl FailureKind {
    /// The value of the `tern-error` response header.
    pub fn code(self) -> &'static str {
        match self {
            Self::UncaughtException => "uncaught_exception",
            Self::InvalidResponse => "invalid_response",
            Self::LoadFailed => "load_failed",
            Self::IsolateFailed => "isolate_failed",
            Self::CpuLimitExceeded => "cpu_limit_exceeded",
            Self::MemoryLimitExceeded => "memory_limit_exceeded",
            Self::StartupLimitExceeded => "startup_limit_exceeded",
            Self::WallTimeExceeded => "wall_time_exceeded",
            Self::IsolateHostCrashed => "isolate_host_crashed",
            Self::SubrequestLimitExceeded => "subrequest_limit_exceeded",
            Self::WasmTrap => "wasm_trap",
        }
    }

    /// The kind [`Self::code`] names; anything unknown is an uncaught exception.
    pub fn from_code(code: &str) -> Self {
        [
            Self::InvalidResponse,
            Self::LoadFailed,
            Self::IsolateFailed,
            Self::CpuLimitExceeded,
            Self::MemoryLimitExceeded,
            Self::StartupLimitExceeded,
            Self::WallTimeExceeded,
            Self::IsolateHostCrashed,
            Self::SubrequestLimitExceeded,
            Self::WasmTrap,
        ]
        .into_iter()
        .find(|k| k.code() == code)
        .unwrap_or(Self::UncaughtException)
    }
}

/// A response body: empty, one buffer, chunks streamed from the isolate, or a body piped
/// from an isolate host process.
pub enum ResponseBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Result<Bytes, StreamAborted>>),
    Piped(http_body_util::combinators::BoxBody<Bytes, StreamAborted>),
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
            Self::Stream(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(|r| r.map(Frame::data))),
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

/// The isolate's queue of incoming exchanges. Shared (`Rc`) between the host and the
/// isolate's state; once the isolate is dropped, [`Inbox::into_receiver`] takes the queue
/// back so that a replacement isolate serves what is still queued.
#[derive(Clone)]
pub struct Inbox(Rc<RefCell<mpsc::UnboundedReceiver<Exchange>>>);

impl Inbox {
    pub fn new(rx: mpsc::UnboundedReceiver<Exchange>) -> Self {
        Self(Rc::new(RefCell::new(rx)))
    }

    /// The next exchange, or `None` once the host has closed the queue (version replaced).
    pub async fn next(&self) -> Option<Exchange> {
        std::future::poll_fn(|cx| self.0.borrow_mut().poll_recv(cx)).await
    }

    /// The queue itself, to hand to a replacement isolate; `None` while another clone lives.
    pub fn into_receiver(self) -> Option<mpsc::UnboundedReceiver<Exchange>> {
        Rc::try_unwrap(self.0).ok().map(RefCell::into_inner)
    }
}

/// Identifies the function an isolate runs, for logs and errors.
#[derive(Debug, Clone)]
pub struct FunctionIdentity {
    pub name: String,
    pub version: String,
}

/// Called each time the isolate's JS takes a request: the CPU meter lets the stretch of JS
/// now running go on for that request's allowance too (one poll of the event loop may take
/// and answer a whole queue of requests).
pub struct OnTaken(pub Box<dyn Fn()>);

/// Exchanges taken by the isolate and not yet finished, with the CPU time charged to each.
#[derive(Default)]
pub struct InFlight {
    next_id: u32,
    entries: HashMap<u32, Entry>,
    /// Requests in flight at some moment since the last [`Self::charge`]: those left over
    /// from it and those taken since, finished or not.
    touched: usize,
}

struct Entry {
    request: RequestId,
    hops: u32,
    /// Outbound fetches charged to this request.
    subrequests: u32,
    /// CPU time of the isolate charged to this request so far.
    cpu: std::time::Duration,
    body: Option<RequestBody>,
    reply: Option<oneshot::Sender<Reply>>,
    stream: Option<mpsc::Sender<Result<Bytes, StreamAborted>>>,
}

impl InFlight {
    fn insert(
        &mut self,
        exchange_id: (RequestId, u32),
        body: Option<RequestBody>,
        reply: oneshot::Sender<Reply>,
    ) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        let (request, hops) = exchange_id;
        let entry = Entry {
            request,
            hops,
            subrequests: 0,
            cpu: std::time::Duration::ZERO,
            body,
            reply: Some(reply),
            stream: None,
        };
        self.entries.insert(self.next_id, entry);
        self.touched += 1;
        self.next_id
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The hop count an outbound request made now carries: one more than the most any
    /// request in flight came with. (Without per-request async context, concurrent requests
    /// share the highest count: a loop is never missed, a fetch may be counted high.)
    pub fn outbound_hops(&self) -> u32 {
        self.entries.values().map(|e| e.hops).max().unwrap_or(0) + 1
    }

    /// Charges an outbound fetch made now to the request in flight that has made the fewest.
    /// Without per-request async context a fetch cannot be told apart between concurrent
    /// requests; charged this way, the isolate's requests together make at most `limit` each,
    /// and none is refused while another still has room (charging every request in flight
    /// for each fetch refused a proxy's one fetch per request once 50 were in flight).
    /// Refused once every request in flight has made `limit`.
    pub fn count_subrequest(&mut self, limit: u32) -> Result<(), String> {
        let Some(least) = self.entries.values_mut().min_by_key(|e| e.subrequests) else {
            return Ok(());
        };
        if least.subrequests >= limit {
            return Err(if self.entries.len() == 1 {
                format!(
                    "{SUBREQUEST_LIMIT_MESSAGE}: this request already made {limit} outbound fetches, its limit \
                     (limits.subrequests)"
                )
            } else {
                format!(
                    "{SUBREQUEST_LIMIT_MESSAGE}: the {} requests in flight in this isolate already made {limit} \
                     outbound fetches each, their limit (limits.subrequests)",
                    self.entries.len()
                )
            });
        }
        least.subrequests += 1;
        Ok(())
    }

    /// The most CPU time charged to any request in flight.
    pub fn max_charged(&self) -> std::time::Duration {
        self.entries.values().map(|e| e.cpu).max().unwrap_or_default()
    }

    /// Charges `cpu`, used since the last charge, in equal parts to every request in flight at
    /// some moment of that time: the shares of those that have finished since go nowhere.
    /// False when no request was in flight at all (the CPU is background work).
    pub fn charge(&mut self, cpu: std::time::Duration) -> bool {
        let n = u32::try_from(self.touched).unwrap_or(u32::MAX);
        self.touched = self.entries.len();
        if n == 0 {
            return false;
        }
        let share = cpu / n;
        self.entries.values_mut().for_each(|e| e.cpu += share);
        true
    }

    /// The requests in flight.
    pub fn requests(&self) -> Vec<RequestId> {
        self.entries.values().map(|e| e.request).collect()
    }

    /// Forgets requests nobody waits for any more: the client left, or the host gave up on
    /// them (wall time). The function's later calls for them fail quietly.
    pub fn forget_abandoned(&mut self) {
        self.entries.retain(|_, e| match (&e.reply, &e.stream) {
            (Some(reply), _) => !reply.is_closed(),
            (None, Some(stream)) => !stream.is_closed(),
            (None, None) => true,
        });
    }

    /// Fails every exchange still open: used when the isolate dies under them.
    pub fn fail_all(&mut self, failure: &Failure) {
        for (_, mut entry) in self.entries.drain() {
            if let Some(reply) = entry.reply.take() {
                let _ = reply.send(Reply::Failed(failure.clone()));
            }
            if let Some(stream) = entry.stream.take() {
                let _ = stream.try_send(Err(StreamAborted(failure.detail.clone())));
            }
        }
    }
}

fn unknown(id: u32) -> JsErrorBox {
    JsErrorBox::type_error(format!("request {id} is already finished"))
}

/// Sends the response head; returns the body sender when the body is streamed.
/// The bytes of a header value the glue sent as text: a ByteString, each character one byte
/// (Latin-1). None if a character does not fit in a byte.
fn byte_string(text: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
    if text.is_ascii() {
        return Some(text.as_bytes().into());
    }
    text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect::<Option<Vec<u8>>>().map(Into::into)
}

/// `headers` as the handler glue sends them: one `name:value` line per header (one string
/// crosses into Rust instead of two per header: each string crossing costs several copies on
/// this engine). Names hold no colon and neither holds a line break: `Headers` and the CGI
/// parser refuse those.
fn respond(state: &mut OpState, id: u32, status: u16, headers: &str, body: ResponseBodyInit) -> Result<(), JsErrorBox> {
    // Build everything that can fail before taking the reply slot, so a bad header leaves
    // the exchange answerable (as `invalid_response`) instead of dropping it.
    let mut head =
        http::Response::builder().status(status).body(()).map_err(|e| invalid(format!("status {status}: {e}")))?;
    for line in headers.split('\n').filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| invalid(format!("header line {line:?} has no name")))?;
        let header = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("header name {name:?} cannot be sent over HTTP")))?;
        let value = byte_string(value).and_then(|v| http::HeaderValue::from_bytes(&v).ok()).ok_or_else(|| {
            invalid(format!("the value of header {:?} cannot be sent over HTTP (control characters)", header.as_str()))
        })?;
        head.headers_mut().append(header, value);
    }
    let table = state.borrow_mut::<InFlight>();
    let entry = table.entries.get_mut(&id).ok_or_else(|| unknown(id))?;
    let reply = entry.reply.take().ok_or_else(|| JsErrorBox::type_error("response already sent"))?;
    let body = match body {
        ResponseBodyInit::Full(bytes) => {
            table.entries.remove(&id);
            ResponseBody::Full(bytes.filter(|b| !b.is_empty()))
        }
        ResponseBodyInit::Stream => {
            let (tx, rx) = mpsc::channel(RESPONSE_CHANNEL_CHUNKS);
            entry.stream = Some(tx);
            ResponseBody::Stream(rx)
        }
    };
    // The client may be gone already; that is not the function's error.
    let _ = reply.send(Reply::Response(head.map(|()| body)));
    Ok(())
}

fn invalid(message: String) -> JsErrorBox {
    JsErrorBox::type_error(format!("invalid response: {message}"))
}

enum ResponseBodyInit {
    Full(Option<Bytes>),
    Stream,
}

/// Waits for the next request. Resolves to `null` when the isolate should stop taking work.
/// Returns `[id, method, url, headers, hasBody, cf]`: `headers` is one byte string of
/// `name:value` lines (one crossing, split only if the function reads a header); `cf` is
/// the JSON the node put in the `tern-cf` header for `request.cf` (the header itself is not
/// passed on), or `null`.
#[op2]
pub async fn op_tern_next_request(
    state: Rc<RefCell<OpState>>,
) -> Option<(u32, String, String, ByteString, bool, Option<String>)> {
    let inbox = state.borrow().borrow::<Inbox>().clone();
    let exchange = inbox.next().await?;
    let (mut parts, body) = exchange.request.into_parts();
    let cf = parts.headers.remove(CF_HEADER).and_then(|v| v.to_str().ok().map(str::to_string));
    let has_body = !body.is_end_stream() && !matches!(parts.method, http::Method::GET | http::Method::HEAD);
    let headers = ByteString::from(header_lines(&parts.headers));
    let id = state.borrow_mut().borrow_mut::<InFlight>().insert(
        (exchange.id, exchange.hops),
        has_body.then_some(body),
        exchange.reply,
    );
    if let Some(taken) = state.borrow().try_borrow::<OnTaken>() {
        (taken.0)();
    }
    Some((id, parts.method.to_string(), exchange.url, headers, has_body, cf))
}

/// A header map as `name:value` lines joined by `\n` (names hold no colon, and neither
/// names nor values hold a line break), values as their bytes.
pub fn header_lines(headers: &http::HeaderMap) -> Vec<u8> {
    let size = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 2).sum();
    let mut lines = Vec::with_capacity(size);
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            lines.push(b'\n');
        }
        lines.extend_from_slice(name.as_str().as_bytes());
        lines.push(b':');
        lines.extend_from_slice(value.as_bytes());
    }
    lines
}

/// The `tern-hops` value for an outbound request made now.
#[op2(fast)]
pub fn op_tern_outbound_hops(state: &mut OpState) -> Result<u32, JsErrorBox> {
    let limit = state.try_borrow::<SubrequestLimit>().map_or(u32::MAX, |l| l.0);
    let in_flight = state.borrow_mut::<InFlight>();
    in_flight.count_subrequest(limit).map_err(JsErrorBox::type_error)?;
    Ok(in_flight.outbound_hops())
}

/// The function's `limits.subrequests`, in its isolate's state.
pub struct SubrequestLimit(pub u32);

/// The start of the message a fetch past the subrequest limit rejects with.
pub const SUBREQUEST_LIMIT_MESSAGE: &str = "Too many subrequests";

/// Reads the next chunk of a request body; an empty array means the body ended.
#[op2]
pub async fn op_tern_body_read(state: Rc<RefCell<OpState>>, id: u32) -> Result<Uint8Array, JsErrorBox> {
    let taken = {
        let mut s = state.borrow_mut();
        let entry = s.borrow_mut::<InFlight>().entries.get_mut(&id).ok_or_else(|| unknown(id))?;
        entry.body.take()
    };
    let Some(mut body) = taken else {
        return Ok(Uint8Array::from(Vec::new()));
    };
    loop {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => return Ok(Uint8Array::from(Vec::new())),
            Some(Err(e)) => return Err(JsErrorBox::type_error(format!("request body: {e}"))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if data.is_empty() {
                        continue;
                    }
                    if let Some(entry) = state.borrow_mut().borrow_mut::<InFlight>().entries.get_mut(&id) {
                        entry.body = Some(body);
                    }
                    return Ok(Uint8Array::from(data.to_vec()));
                }
            }
        }
    }
}

/// Answers with a complete body (or none).
#[op2]
pub fn op_tern_respond(
    state: &mut OpState,
    id: u32,
    status: u16,
    #[string] headers: &str,
    body: Option<Uint8Array>,
) -> Result<(), JsErrorBox> {
    let bytes = body.map(|b| Bytes::from(Vec::from(b.0)));
    respond(state, id, status, headers, ResponseBodyInit::Full(bytes))
}

/// Answers with a text body.
#[op2(fast)]
pub fn op_tern_respond_text(
    state: &mut OpState,
    id: u32,
    status: u16,
    #[string] headers: &str,
    #[string] body: String,
) -> Result<(), JsErrorBox> {
    respond(state, id, status, headers, ResponseBodyInit::Full(Some(Bytes::from(body))))
}

/// Sends the head of a response whose body follows through `op_tern_body_write`.
#[op2(fast)]
pub fn op_tern_respond_stream(
    state: &mut OpState,
    id: u32,
    status: u16,
    #[string] headers: &str,
) -> Result<(), JsErrorBox> {
    respond(state, id, status, headers, ResponseBodyInit::Stream)
}

/// Writes one chunk of a streamed response; waits while the client is slower than the
/// function. Rejects when the client went away, so the function's stream is cancelled.
#[op2]
pub async fn op_tern_body_write(state: Rc<RefCell<OpState>>, id: u32, chunk: Uint8Array) -> Result<(), JsErrorBox> {
    let tx = {
        let s = state.borrow();
        let entry = s.borrow::<InFlight>().entries.get(&id).ok_or_else(|| unknown(id))?;
        entry.stream.clone().ok_or_else(|| JsErrorBox::type_error("response is not streaming"))?
    };
    if chunk.0.is_empty() {
        return Ok(());
    }
    tx.send(Ok(Bytes::from(Vec::from(chunk.0))))
        .await
        .map_err(|_| JsErrorBox::type_error("the client closed the connection"))
}

/// Writes one chunk of a streamed response from code that cannot wait (a WebAssembly
/// program's `fd_write`): while the client is slower than the function, the isolate's
/// thread blocks, as a CGI program blocks on its pipe. Fails when the client went away.
#[op2]
pub fn op_tern_body_write_sync(state: &mut OpState, id: u32, #[anybuffer] chunk: &[u8]) -> Result<(), JsErrorBox> {
    let entry = state.borrow::<InFlight>().entries.get(&id).ok_or_else(|| unknown(id))?;
    let tx = entry.stream.clone().ok_or_else(|| JsErrorBox::type_error("response is not streaming"))?;
    if chunk.is_empty() {
        return Ok(());
    }
    let gone = || JsErrorBox::type_error("the client closed the connection");
    match tx.try_send(Ok(Bytes::copy_from_slice(chunk))) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(gone()),
        // The receiver lives on another thread (the connection's), which makes progress.
        Err(mpsc::error::TrySendError::Full(chunk)) => futures::executor::block_on(tx.send(chunk)).map_err(|_| gone()),
    }
}

/// Ends a streamed response normally.
#[op2(fast)]
pub fn op_tern_body_close(state: &mut OpState, id: u32) {
    state.borrow_mut::<InFlight>().entries.remove(&id);
}

/// Put in the isolate's state when JS ran out of heap; the host then ends the isolate.
pub struct HeapExhausted;

/// Set (by the host's ArrayBuffer allocator) once an allocation was refused for the memory
/// limit: whatever error the engine turned that into, the request failed for memory.
pub struct AllocationRefused(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

/// Whether a JS error text is the engine refusing an allocation at the heap limit.
pub fn is_out_of_memory(text: &str) -> bool {
    text.contains("InternalError: out of memory") || text.contains("RangeError: Array buffer allocation failed")
}

/// Ends an exchange with a failure: before the head, the host answers with the failure;
/// after it, the stream is aborted.
#[op2(fast)]
pub fn op_tern_fail(state: &mut OpState, id: u32, #[string] kind: &str, #[string] detail: String) {
    let Some(mut entry) = state.borrow_mut::<InFlight>().entries.remove(&id) else {
        return;
    };
    let mut failure = Failure { kind: FailureKind::from_code(kind), detail: detail.replace(crate::MODULE_ROOT, "") };
    if failure.kind == FailureKind::UncaughtException && failure.detail.contains(SUBREQUEST_LIMIT_MESSAGE) {
        failure.kind = FailureKind::SubrequestLimitExceeded;
    }
    // Limits the JS side detects (a WebAssembly program's memory at the limit) are kills
    // like the host's; the isolate itself is unharmed.
    if matches!(failure.kind, FailureKind::SubrequestLimitExceeded | FailureKind::MemoryLimitExceeded) {
        let function = state.borrow::<FunctionIdentity>();
        tracing::warn!(target: "tern::kill", function = %function.name, version = %function.version,
            limit = failure.kind.code(), phase = "request", requests = %entry.request,
            "function killed: {}", failure.kind.code());
    }
    let refused =
        state.try_borrow::<AllocationRefused>().is_some_and(|r| r.0.load(std::sync::atomic::Ordering::Relaxed));
    if refused || is_out_of_memory(&failure.detail) {
        // The engine refused an allocation at the heap limit: that is the memory limit, and
        // the isolate is done for (the host sees the marker after this turn).
        failure.kind = FailureKind::MemoryLimitExceeded;
        state.put(HeapExhausted);
    }
    let function = state.borrow::<FunctionIdentity>();
    tracing::error!(
        target: "tern::function",
        function = %function.name,
        version = %function.version,
        tern_error = failure.kind.code(),
        "{}",
        failure.detail
    );
    if let Some(reply) = entry.reply.take() {
        let _ = reply.send(Reply::Failed(failure));
    } else if let Some(stream) = entry.stream.take() {
        let _ = stream.try_send(Err(StreamAborted(failure.detail)));
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn request_headers_cross_as_lines_with_their_bytes_in_order() {
        let mut headers = http::HeaderMap::new();
        headers.append("accept", http::HeaderValue::from_static("text/html"));
        headers.append("x-latin", http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
        headers.append("accept", http::HeaderValue::from_static("a:b"));
        assert_eq!(header_lines(&headers), b"accept:text/html\naccept:a:b\nx-latin:caf\xe9");
        assert_eq!(header_lines(&http::HeaderMap::new()), b"");
    }

    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn take(f: &mut InFlight, n: u64) -> u32 {
        f.insert((RequestId(n), 0), None, oneshot::channel().0)
    }

    fn charged(f: &InFlight) -> Vec<Duration> {
        let mut c: Vec<_> = f.entries.values().map(|e| e.cpu).collect();
        c.sort();
        c
    }

    #[test]
    fn bug_cpu_of_requests_finished_within_a_stretch_went_to_those_left() {
        // One stretch takes and answers three requests and takes a fourth: the fourth is
        // charged a quarter of the stretch, not all of it.
        let mut f = InFlight::default();
        for n in 0..3 {
            let id = take(&mut f, n);
            f.entries.remove(&id);
        }
        take(&mut f, 3);
        assert!(f.charge(8 * MS));
        assert_eq!(charged(&f), [2 * MS]);
    }

    #[test]
    fn bug_one_fetch_per_request_was_refused_with_fifty_requests_in_flight() {
        let mut f = InFlight::default();
        for n in 0..64 {
            take(&mut f, n);
        }
        for _ in 0..64 {
            f.count_subrequest(50).expect("one fetch per request is far below the limit");
        }
        assert!(f.entries.values().all(|e| e.subrequests == 1));
    }

    #[test]
    fn subrequests_are_refused_once_every_request_in_flight_made_its_limit() {
        let mut f = InFlight::default();
        take(&mut f, 0);
        for _ in 0..3 {
            f.count_subrequest(3).unwrap();
        }
        let e = f.count_subrequest(3).unwrap_err();
        assert!(e.starts_with(SUBREQUEST_LIMIT_MESSAGE) && e.contains("this request already made 3"), "{e}");
        take(&mut f, 1);
        f.count_subrequest(3).expect("the new request has room");
        f.count_subrequest(3).unwrap();
        f.count_subrequest(3).unwrap();
        let e = f.count_subrequest(3).unwrap_err();
        assert!(e.contains("the 2 requests in flight"), "{e}");
    }

    #[test]
    fn header_values_cross_as_byte_strings() {
        assert_eq!(byte_string("plain").as_deref(), Some(&b"plain"[..]));
        assert_eq!(byte_string("caf\u{e9}").as_deref(), Some(&b"caf\xe9"[..]), "one byte per character");
        assert_eq!(byte_string("\u{20ac}"), None, "not a byte");
    }

    #[test]
    fn a_stretch_with_no_request_in_flight_is_background() {
        let mut f = InFlight::default();
        assert!(!f.charge(5 * MS));
        let id = take(&mut f, 0);
        f.entries.remove(&id);
        assert!(f.charge(5 * MS), "a request answered within the stretch was in flight");
        assert!(!f.charge(5 * MS), "after it, nothing was");
    }

    #[test]
    fn requests_left_in_flight_share_later_stretches() {
        let mut f = InFlight::default();
        take(&mut f, 0);
        take(&mut f, 1);
        assert!(f.charge(4 * MS));
        assert!(f.charge(4 * MS));
        assert_eq!(charged(&f), [4 * MS, 4 * MS]);
    }
}
