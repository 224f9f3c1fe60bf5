//! The exchange: how one HTTP request crosses from the host into a function and its
//! response crosses back, with bodies streaming both ways.
//!
//! The host puts [`Exchange`]s into the isolate's [`Inbox`]; the handler glue
//! (`js/10_handler.js`) takes those already waiting with `op_tern_try_next_request`,
//! awaits the next with `op_tern_next_request` and lets the event loop turn between bursts
//! with `op_tern_yield`, reads the request body on demand with `op_tern_body_read`, and
//! answers with `op_tern_respond` plus, for a streamed body,
//! `op_tern_body_write`/`op_tern_body_close`. Nothing here buffers a whole body. What the
//! isolate holds of each exchange it took is [`InFlight`] (`in_flight`); the response body
//! as it leaves is [`ResponseBody`] (`body`). Ops decode, borrow state and call the plain
//! functions; they know no HTTP server.

mod body;
mod in_flight;

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use deno_core::convert::ByteString;
use deno_core::convert::Uint8Array;
use deno_core::{OpState, op2};
use deno_error::JsErrorBox;
use http_body::Body;
use tern_proto::forwarding::CF_HEADER;
use tokio::sync::{mpsc, oneshot};

pub use body::{ResponseBody, StreamAborted, StreamBody};
pub use in_flight::{InFlight, Replies};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body as the host hands it over: any streaming body.
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

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

/// The isolate's queue of incoming exchanges. Shared between the host and the isolate's
/// state; once the isolate is dropped, [`Inbox::into_receiver`] takes the queue back so that
/// a replacement isolate serves what is still queued. A [`WeakInbox`] lets another thread
/// answer what is queued when the isolate's own thread cannot ([`WeakInbox::strand`]).
#[derive(Clone)]
pub struct Inbox(Arc<Mutex<mpsc::UnboundedReceiver<Exchange>>>);

impl Inbox {
    pub fn new(rx: mpsc::UnboundedReceiver<Exchange>) -> Self {
        Self(Arc::new(Mutex::new(rx)))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, mpsc::UnboundedReceiver<Exchange>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next exchange, or `None` once the host has closed the queue (version replaced).
    pub async fn next(&self) -> Option<Exchange> {
        std::future::poll_fn(|cx| self.queue().poll_recv(cx)).await
    }

    /// The next exchange if one is waiting now (`None` also once the queue is closed).
    pub fn try_next(&self) -> Option<Exchange> {
        self.queue().try_recv().ok()
    }

    /// The queue itself, to hand to a replacement isolate; `None` while another clone lives.
    pub fn into_receiver(self) -> Option<mpsc::UnboundedReceiver<Exchange>> {
        Arc::try_unwrap(self.0).ok().map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// A handle that does not keep the queue from [`Self::into_receiver`].
    pub fn downgrade(&self) -> WeakInbox {
        WeakInbox(Arc::downgrade(&self.0))
    }
}

/// See [`Inbox::downgrade`].
pub struct WeakInbox(Weak<Mutex<mpsc::UnboundedReceiver<Exchange>>>);

impl WeakInbox {
    /// Closes the queue and answers everything in it with `failure`, from any thread: for an
    /// isolate whose thread is lost to JS that will not stop. Returns how many were answered.
    pub fn strand(&self, failure: &Failure) -> usize {
        let Some(queue) = self.0.upgrade() else { return 0 };
        let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.close();
        let mut answered = 0;
        while let Ok(exchange) = queue.try_recv() {
            let _ = exchange.reply.send(Reply::Failed(failure.clone()));
            answered += 1;
        }
        answered
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

fn unknown(id: u32) -> JsErrorBox {
    JsErrorBox::type_error(format!("request {id} is already finished"))
}

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
    if !table.entries.contains_key(&id) {
        return Err(unknown(id));
    }
    let reply = table.replies.take(id).ok_or_else(|| JsErrorBox::type_error("response already sent"))?;
    let body = match body {
        ResponseBodyInit::Full(bytes) => {
            table.entries.remove(&id);
            ResponseBody::Full(bytes.filter(|b| !b.is_empty()))
        }
        ResponseBodyInit::Stream => ResponseBody::Stream(table.start_stream(id).expect("checked above")),
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
pub async fn op_tern_next_request(state: Rc<RefCell<OpState>>) -> Option<NextRequest> {
    let inbox = state.borrow().borrow::<Inbox>().clone();
    let exchange = inbox.next().await?;
    Some(take(&mut state.borrow_mut(), exchange))
}

/// The next request if one is already waiting, else `null` (then the serve loop awaits
/// [`op_tern_next_request`]): a queue of requests is taken without a promise, and a microtask
/// to resume the loop, for each.
#[op2]
pub fn op_tern_try_next_request(state: &mut OpState) -> Option<NextRequest> {
    let exchange = state.borrow::<Inbox>().try_next()?;
    Some(take(state, exchange))
}

/// Resolves on the event loop's next turn, never at once (a deferred op is not polled when
/// it is called): the serve loop awaits it after a burst of requests, so that timers and I/O
/// completions get their turn while requests keep arriving. An async op that is ready when
/// called resolves without leaving JS, so awaiting [`op_tern_next_request`] with requests
/// queued never lets them run.
#[op2(async(deferred), fast)]
pub async fn op_tern_yield() {}

/// What the serve loop gets for one request: `[id, method, url, headers, hasBody, cf]`.
type NextRequest = (u32, String, String, ByteString, bool, Option<String>);

/// Puts a request the JS takes in flight.
fn take(state: &mut OpState, exchange: Exchange) -> NextRequest {
    let (mut parts, body) = exchange.request.into_parts();
    let cf = parts.headers.remove(CF_HEADER).and_then(|v| v.to_str().ok().map(str::to_string));
    let has_body = !body.is_end_stream() && !matches!(parts.method, http::Method::GET | http::Method::HEAD);
    let headers = ByteString::from(header_lines(&parts.headers));
    let id =
        state.borrow_mut::<InFlight>().insert((exchange.id, exchange.hops), has_body.then_some(body), exchange.reply);
    if let Some(taken) = state.try_borrow::<OnTaken>() {
        (taken.0)();
    }
    (id, parts.method.to_string(), exchange.url, headers, has_body, cf)
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
    let tx = chunks_of(&state.borrow(), id)?;
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
    let tx = chunks_of(state, id)?;
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

/// Where the chunks of exchange `id`'s streamed response go.
fn chunks_of(state: &OpState, id: u32) -> Result<mpsc::Sender<Result<Bytes, StreamAborted>>, JsErrorBox> {
    let entry = state.borrow::<InFlight>().entries.get(&id).ok_or_else(|| unknown(id))?;
    entry.stream.as_ref().map(|s| s.chunks.clone()).ok_or_else(|| JsErrorBox::type_error("response is not streaming"))
}

/// Ends a streamed response normally.
#[op2(fast)]
pub fn op_tern_body_close(state: &mut OpState, id: u32) {
    state.borrow_mut::<InFlight>().close(id);
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
    let Some((entry, owed)) = state.borrow_mut::<InFlight>().end(id) else {
        return;
    };
    let request = entry.request;
    let mut failure = Failure { kind: FailureKind::from_code(kind), detail: detail.replace(crate::MODULE_ROOT, "") };
    if failure.kind == FailureKind::UncaughtException && failure.detail.contains(SUBREQUEST_LIMIT_MESSAGE) {
        failure.kind = FailureKind::SubrequestLimitExceeded;
    }
    // Limits the JS side detects (a WebAssembly program's memory at the limit) are kills
    // like the host's; the isolate itself is unharmed.
    if matches!(failure.kind, FailureKind::SubrequestLimitExceeded | FailureKind::MemoryLimitExceeded) {
        let function = state.borrow::<FunctionIdentity>();
        tracing::warn!(target: "tern::kill", function = %function.name, version = %function.version,
            limit = failure.kind.code(), phase = "request", requests = %request,
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
    if let Some(reply) = owed.reply {
        let _ = reply.send(Reply::Failed(failure));
    } else if let Some(abort) = owed.abort {
        let _ = abort.send(failure.detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_cross_as_lines_with_their_bytes_in_order() {
        let mut headers = http::HeaderMap::new();
        headers.append("accept", http::HeaderValue::from_static("text/html"));
        headers.append("x-latin", http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
        headers.append("accept", http::HeaderValue::from_static("a:b"));
        assert_eq!(header_lines(&headers), b"accept:text/html\naccept:a:b\nx-latin:caf\xe9");
        assert_eq!(header_lines(&http::HeaderMap::new()), b"");
    }

    #[test]
    fn header_values_cross_as_byte_strings() {
        assert_eq!(byte_string("plain").as_deref(), Some(&b"plain"[..]));
        assert_eq!(byte_string("caf\u{e9}").as_deref(), Some(&b"caf\xe9"[..]), "one byte per character");
        assert_eq!(byte_string("\u{20ac}"), None, "not a byte");
    }

    fn exchange(n: u64) -> (Exchange, oneshot::Receiver<Reply>) {
        let (reply, answer) = oneshot::channel();
        use http_body_util::BodyExt;
        let request = http::Request::new(http_body_util::Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync());
        (Exchange { id: RequestId(n), hops: 0, request, url: "http://x/".into(), reply }, answer)
    }

    pub(super) fn failed(answer: &mut oneshot::Receiver<Reply>) -> Option<FailureKind> {
        match answer.try_recv() {
            Ok(Reply::Failed(f)) => Some(f.kind),
            _ => None,
        }
    }

    #[test]
    fn a_stranded_inbox_answers_what_is_queued_and_takes_nothing_more() {
        let (tx, rx) = mpsc::unbounded_channel();
        let inbox = Inbox::new(rx);
        let weak = inbox.downgrade();
        let (one, mut answer_one) = exchange(1);
        let (two, mut answer_two) = exchange(2);
        tx.send(one).unwrap();
        tx.send(two).unwrap();
        let failure = Failure { kind: FailureKind::CpuLimitExceeded, detail: "stuck".into() };
        assert_eq!(std::thread::spawn(move || weak.strand(&failure)).join().unwrap(), 2);
        assert_eq!(failed(&mut answer_one), Some(FailureKind::CpuLimitExceeded));
        assert_eq!(failed(&mut answer_two), Some(FailureKind::CpuLimitExceeded));
        assert!(tx.send(exchange(3).0).is_err(), "the queue is closed");
        assert!(inbox.try_next().is_none());
    }

    #[test]
    fn a_weak_inbox_does_not_keep_the_queue_from_a_replacement_isolate() {
        let (_tx, rx) = mpsc::unbounded_channel();
        let inbox = Inbox::new(rx);
        let weak = inbox.downgrade();
        assert!(inbox.into_receiver().is_some());
        let failure = Failure { kind: FailureKind::CpuLimitExceeded, detail: "stuck".into() };
        assert_eq!(weak.strand(&failure), 0, "the queue went on to another isolate");
    }
}
