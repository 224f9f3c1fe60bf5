//! Isolate host processes: the node runs its isolates in child processes (`tern
//! isolate-host`), talks to each over HTTP/2 on a Unix socket pair ([`crate::host_server`]
//! is the other side), and replaces them.
//!
//! Why: the engine leaks about 2 MiB per isolate created and dropped, and a crash in it
//! would take the node down. So a host that has booted [`HostConfig::recycle_after`]
//! isolates, or that holds a stuck isolate (JS that went on after termination, on a thread
//! only ending the process stops), is replaced: a fresh host takes new requests at once,
//! the old one finishes what it holds and is stopped. A host that dies costs only the requests inside it (502
//! `isolate_host_crashed`); the node starts another, and functions on other hosts do not
//! notice. A function goes to the same host while it lives (rendezvous hashing over the live
//! hosts by function name), and its bundle is uploaded to a host before its first request.

use std::collections::HashSet;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tern_js_api::exchange::{BoxError, Exchange, Failure, FailureKind, RequestBody, ResponseBody, StreamAborted};
use tern_proto::{Bundle, BundleId};
use tokio::sync::Mutex as AsyncMutex;

use crate::host_server::{BOOTS_HEADER, BUNDLE_HEADER, FAILURE_HEADER, REQUEST_ID_HEADER, STUCK_HEADER, URL_HEADER};

/// How long a replaced host may take to finish the requests it holds.
const RETIRE_PATIENCE: Duration = Duration::from_secs(60);
/// Pause before starting a host again after one failed to start.
const RESTART_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Host processes serving at once.
    pub count: usize,
    /// A host is replaced once it has booted this many isolates.
    pub recycle_after: u64,
    /// The program and arguments that start one host (it gets its socket as stdin).
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Counters of the hosts, for the node's metrics.
#[derive(Default, Debug)]
pub struct HostStats {
    pub live: Gauge,
    pub started: Counter,
    pub crashed: Counter,
    pub recycled: Counter,
}

/// The node's isolate host processes; cheap to clone.
#[derive(Clone)]
pub struct HostPool {
    inner: Arc<Inner>,
}

struct Inner {
    config: HostConfig,
    hosts: Mutex<Vec<Arc<Host>>>,
    next_id: AtomicU64,
    stats: Arc<HostStats>,
}

struct Host {
    id: u64,
    pid: u32,
    send: SendRequest<RequestBody>,
    /// Bundles uploaded to this host; the lock also serializes uploads.
    loaded: AsyncMutex<HashSet<BundleId>>,
    in_flight: AtomicUsize,
    /// A replacement is on its way.
    recycling: AtomicBool,
    /// Replaced: takes no new requests and stops once it has finished its own.
    retiring: AtomicBool,
    boots: AtomicU64,
}

impl HostPool {
    /// Starts `config.count` hosts.
    pub async fn start(config: HostConfig, stats: Arc<HostStats>) -> std::io::Result<Self> {
        let pool = Self {
            inner: Arc::new(Inner { config, hosts: Mutex::new(Vec::new()), next_id: AtomicU64::new(1), stats }),
        };
        for _ in 0..pool.inner.config.count.max(1) {
            let host = pool.inner.clone().spawn().await?;
            lock(&pool.inner.hosts).push(host);
        }
        Ok(pool)
    }

    pub fn stats(&self) -> &Arc<HostStats> {
        &self.inner.stats
    }

    /// Boots the isolate of `bundle` on its host ahead of its first request.
    pub async fn prepare_and_wait(&self, bundle: Arc<Bundle>) {
        let Some(host) = self.inner.host_for(bundle.name()) else { return };
        if host.ensure_loaded(&bundle).await.is_err() {
            return;
        }
        let request = http::Request::post(format!("http://isolate-host/prepare/{}", bundle.id()))
            .body(empty())
            .expect("valid request");
        let _ = host.send.clone().send_request(request).await;
    }

    /// Hands `exchange` to the host of `bundle`'s function.
    pub fn dispatch(&self, bundle: Arc<Bundle>, exchange: Exchange) {
        let inner = self.inner.clone();
        // Counted in before anything awaits, so that a host being replaced cannot be
        // stopped between being chosen and counting this request.
        let Some(guard) = inner.enter(bundle.name()) else {
            let failure =
                Failure { kind: FailureKind::IsolateHostCrashed, detail: "no isolate host is running".into() };
            let _ = exchange.reply.send(tern_js_api::exchange::Reply::Failed(failure));
            return;
        };
        tokio::spawn(async move {
            let mut reply = exchange.reply;
            let forwarded = forward(&inner, guard, &bundle, exchange.id, exchange.hops, exchange.url, exchange.request);
            // Once nobody waits for the answer (the wall time passed, the client left), the
            // request is dropped: its stream to the host is reset and it no longer counts as
            // in flight there, so a host being replaced is not kept alive by it.
            tokio::select! {
                answer = forwarded => {
                    let _ = reply.send(answer);
                }
                () = reply.closed() => {}
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn empty() -> RequestBody {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn crashed(host: &Host, e: impl std::fmt::Display) -> Failure {
    Failure {
        kind: FailureKind::IsolateHostCrashed,
        detail: format!("the isolate host process (pid {}) went away with the request in it: {e}", host.pid),
    }
}

async fn forward(
    inner: &Arc<Inner>,
    guard: InFlightGuard,
    bundle: &Arc<Bundle>,
    id: tern_js_api::exchange::RequestId,
    hops: u32,
    url: String,
    request: http::Request<RequestBody>,
) -> tern_js_api::exchange::Reply {
    use tern_js_api::exchange::Reply;
    let host = &guard.0.clone();
    if let Err(e) = host.ensure_loaded(bundle).await {
        return Reply::Failed(crashed(host, e));
    }
    let (mut parts, body) = request.into_parts();
    parts.uri = http::Uri::from_static("http://isolate-host/run");
    parts.version = http::Version::HTTP_2;
    let headers = &mut parts.headers;
    // Hop-by-hop headers are the client connection's business, and illegal in HTTP/2.
    for name in ["host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"] {
        headers.remove(name);
    }
    for (name, value) in [
        (BUNDLE_HEADER, bundle.id().to_string()),
        (URL_HEADER, url),
        (REQUEST_ID_HEADER, id.to_string()),
        (tern_js_api::egress::HOPS_HEADER, hops.to_string()),
    ] {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    let response = match host.send.clone().send_request(http::Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => return Reply::Failed(crashed(host, e)),
    };
    let count = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(boots) = count(BOOTS_HEADER) {
        host.boots.store(boots, Ordering::Relaxed);
        if boots >= inner.config.recycle_after {
            inner.recycle(host, "it booted its share of isolates");
        }
    }
    if count(STUCK_HEADER).is_some_and(|stuck| stuck > 0) {
        inner.recycle(host, "an isolate is stuck in it, on a thread only ending the process stops");
    }
    if let Some(code) = response.headers().get(FAILURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string) {
        let detail = match response.into_body().collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(e) => return Reply::Failed(crashed(host, e)),
        };
        return Reply::Failed(Failure { kind: FailureKind::from_code(&code), detail });
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(BOOTS_HEADER);
    parts.headers.remove(STUCK_HEADER);
    let body = GuardedPipe { body, _guard: guard };
    Reply::Response(http::Response::from_parts(parts, ResponseBody::Piped(body.boxed())))
}

/// Counts a request as inside its host until the response body is done (or dropped).
struct InFlightGuard(Arc<Host>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct GuardedPipe {
    body: hyper::body::Incoming,
    _guard: InFlightGuard,
}

impl Body for GuardedPipe {
    type Data = Bytes;
    type Error = StreamAborted;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        Pin::new(&mut self.body).poll_frame(cx).map_err(|e| StreamAborted(format!("the isolate host went away: {e}")))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Host {
    async fn ensure_loaded(&self, bundle: &Bundle) -> Result<(), BoxError> {
        let mut loaded = self.loaded.lock().await;
        if loaded.contains(&bundle.id()) {
            return Ok(());
        }
        let wire = Bytes::from(bundle.to_wire());
        let body = http_body_util::Full::new(wire).map_err(|never| match never {}).boxed_unsync();
        let request = http::Request::put(format!("http://isolate-host/bundles/{}", bundle.id())).body(body)?;
        let response = self.send.clone().send_request(request).await?;
        if !response.status().is_success() {
            let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(format!("the host refused the bundle: {}", String::from_utf8_lossy(&text)).into());
        }
        loaded.insert(bundle.id());
        Ok(())
    }
}

impl Inner {
    /// Counts a request into the host for `function`. A host that starts retiring meanwhile
    /// is left for the next choice: retiring is set before the in-flight count is read, and
    /// the count is raised before retiring is checked again, so one of the two sees the other.
    fn enter(&self, function: &str) -> Option<InFlightGuard> {
        loop {
            let host = self.host_for(function)?;
            host.in_flight.fetch_add(1, Ordering::SeqCst);
            let guard = InFlightGuard(host);
            if !guard.0.retiring.load(Ordering::SeqCst) {
                return Some(guard);
            }
        }
    }

    /// The live host for `function`: the same one while the set of hosts is the same.
    fn host_for(&self, function: &str) -> Option<Arc<Host>> {
        let hosts = lock(&self.hosts);
        hosts
            .iter()
            .filter(|h| !h.retiring.load(Ordering::Relaxed))
            .max_by_key(|h| {
                let mut hasher = DefaultHasher::new();
                (function, h.id).hash(&mut hasher);
                hasher.finish()
            })
            .cloned()
    }

    /// Starts one host process and connects to it. (Boxed: a crashed host's watcher starts
    /// the next one from inside this future.)
    fn spawn(self: Arc<Self>) -> Pin<Box<dyn Future<Output = std::io::Result<Arc<Host>>> + Send>> {
        Box::pin(async move {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            let mut command = tokio::process::Command::new(&self.config.program);
            command
                .args(&self.config.args)
                .stdin(Stdio::from(OwnedFd::from(theirs)))
                .stdout(Stdio::null())
                .kill_on_drop(true);
            let mut child = command.spawn()?;
            let pid = child.id().unwrap_or(0);
            ours.set_nonblocking(true)?;
            let stream = tokio::net::UnixStream::from_std(ours)?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
            builder.max_concurrent_reset_streams(1024);
            let (send, connection) = tokio::time::timeout(
                Duration::from_secs(10),
                builder.handshake::<_, RequestBody>(TokioIo::new(stream)),
            )
            .await
            .map_err(|_| std::io::Error::other("the isolate host did not answer"))?
            .map_err(std::io::Error::other)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(pid, "connection to isolate host ended: {e}");
                }
            });
            let host = Arc::new(Host {
                id,
                pid,
                send,
                loaded: AsyncMutex::new(HashSet::new()),
                in_flight: AtomicUsize::new(0),
                recycling: AtomicBool::new(false),
                retiring: AtomicBool::new(false),
                boots: AtomicU64::new(0),
            });
            self.stats.started.inc();
            self.stats.live.inc();
            tracing::info!(pid, "isolate host started");
            let weak: Weak<Inner> = Arc::downgrade(&self);
            let watched = host.clone();
            tokio::spawn(async move {
                let status = child.wait().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.stats.live.dec();
                if watched.retiring.load(Ordering::Relaxed) {
                    tracing::info!(pid, "isolate host retired");
                    return;
                }
                tracing::error!(pid, ?status, "isolate host crashed; starting another");
                inner.stats.crashed.inc();
                lock(&inner.hosts).retain(|h| h.id != watched.id);
                loop {
                    match inner.clone().spawn().await {
                        Ok(host) => {
                            lock(&inner.hosts).push(host);
                            return;
                        }
                        Err(e) => {
                            tracing::error!("cannot start an isolate host: {e}");
                            tokio::time::sleep(RESTART_BACKOFF).await;
                        }
                    }
                }
            });
            Ok(host)
        })
    }

    /// Replaces `old` with a fresh host, for the reason `why`; `old` finishes its requests,
    /// then stops.
    fn recycle(self: &Arc<Self>, old: &Arc<Host>, why: &'static str) {
        if old.recycling.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        let old = old.clone();
        tokio::spawn(async move {
            // Until the fresh host is up, the old one keeps taking requests.
            let fresh = match inner.clone().spawn().await {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!("cannot start a replacement isolate host: {e}");
                    return;
                }
            };
            inner.stats.recycled.inc();
            tracing::info!(
                old = old.pid,
                new = fresh.pid,
                boots = old.boots.load(Ordering::Relaxed),
                why,
                "replacing isolate host"
            );
            {
                let mut hosts = lock(&inner.hosts);
                hosts.push(fresh);
                old.retiring.store(true, Ordering::SeqCst);
            }
            let deadline = tokio::time::Instant::now() + RETIRE_PATIENCE;
            while old.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            lock(&inner.hosts).retain(|h| h.id != old.id);
            // SIGTERM; the host exits (its watcher sees a retired host, not a crash).
            let _ = nix_kill(old.pid);
        });
    }
}

fn nix_kill(pid: u32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a child's pid and SIGTERM.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
