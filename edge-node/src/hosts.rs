//! Isolate host processes: the node runs its isolates in child processes (`tern
//! isolate-host`), talks to each over HTTP/2 on a Unix socket pair ([`crate::host_server`]
//! is the other side), and replaces them.
//!
//! Why: the engine leaks about 2 MiB per isolate created and dropped, and a crash in it
//! would take the node down. So a host in which [`HostConfig::recycle_after`] isolates have
//! ended (the leak grows with those, not with the isolates it serves), or that holds a stuck
//! isolate (JS that went on after termination, on a thread only ending the process stops),
//! is replaced. The fresh host takes the old one's place (its slot), and before it takes
//! requests it boots the isolates of the functions the old one was serving, so that a
//! replacement costs those functions no cold start; then the old host finishes what it
//! holds and is stopped. A host that dies costs only the requests inside it (502
//! `isolate_host_crashed`); the node starts another in its slot, and functions on other
//! hosts do not notice.
//!
//! A function goes to the host in the slot that rendezvous hashing of its name picks, so
//! it stays on one host while the slots are the same, and a replacement host serves exactly
//! the functions its predecessor served. Its bundle is uploaded to a host before its first
//! request.
//!
//! The hosts' runtime figures (isolates, boots, kills, CPU) are added up for the node's
//! metrics by [`HostPool::runtime_totals`]; what a host counted stays in the totals after it
//! is replaced.

use std::collections::HashMap;
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
use tern_runtime::stats::StatsSnapshot;
use tokio::sync::Mutex as AsyncMutex;

use crate::host_server::{BUNDLE_HEADER, ENDED_HEADER, FAILURE_HEADER, REQUEST_ID_HEADER, STUCK_HEADER, URL_HEADER};

/// How long a replaced host may take to finish the requests it holds.
const RETIRE_PATIENCE: Duration = Duration::from_secs(60);
/// Pause before starting a host again after one failed to start.
const RESTART_BACKOFF: Duration = Duration::from_millis(200);
/// How long a replacement host may spend booting its predecessor's functions before it
/// takes over anyway (the rest cold-start on their next request).
const WARM_PATIENCE: Duration = Duration::from_secs(10);
/// Isolates a replacement host boots at once while it warms up.
const WARM_CONCURRENCY: usize = 4;
/// How long a host may take to report its figures for the node's metrics.
const STATS_PATIENCE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Host processes serving at once.
    pub count: usize,
    /// A host is replaced once this many of its isolates have ended.
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
    /// What hosts that are gone counted (counters only).
    gone: Mutex<StatsSnapshot>,
}

struct Host {
    id: u64,
    /// Its place among the hosts: functions are placed by slot, and a host's replacement
    /// takes its slot.
    slot: usize,
    pid: u32,
    send: SendRequest<RequestBody>,
    /// Bundles uploaded to this host (kept while the node has them, to warm a replacement);
    /// the lock also serializes uploads.
    loaded: AsyncMutex<HashMap<BundleId, Weak<Bundle>>>,
    in_flight: AtomicUsize,
    /// A replacement is on its way.
    recycling: AtomicBool,
    /// Replaced: takes no new requests and stops once it has finished its own.
    retiring: AtomicBool,
    /// Its process has ended (set before its watcher looks for it among the hosts).
    exited: AtomicBool,
    /// Isolates that have ended in it, as it last said.
    ended: AtomicU64,
    /// Its runtime figures, as it last reported them.
    last_stats: Mutex<StatsSnapshot>,
}

impl HostPool {
    /// Starts `config.count` hosts.
    pub async fn start(config: HostConfig, stats: Arc<HostStats>) -> std::io::Result<Self> {
        let inner = Inner {
            config,
            hosts: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            stats,
            gone: Mutex::new(StatsSnapshot::default()),
        };
        let pool = Self { inner: Arc::new(inner) };
        for slot in 0..pool.inner.config.count.max(1) {
            let host = pool.inner.clone().spawn(slot).await?;
            lock(&pool.inner.hosts).push(host);
        }
        Ok(pool)
    }

    pub fn stats(&self) -> &Arc<HostStats> {
        &self.inner.stats
    }

    /// The runtime figures of every host added up, asked of each host now: counters include
    /// what replaced hosts counted; a host that died counts what it last reported.
    pub async fn runtime_totals(&self) -> StatsSnapshot {
        let hosts = lock(&self.inner.hosts).clone();
        for host in &hosts {
            host.refresh_stats().await;
        }
        let hosts = lock(&self.inner.hosts);
        let mut total = lock(&self.inner.gone).clone();
        for host in hosts.iter() {
            total.add(&lock(&host.last_stats), true);
        }
        total
    }

    /// Boots the isolate of `bundle` on its host ahead of its first request.
    pub async fn prepare_and_wait(&self, bundle: Arc<Bundle>) {
        let Some(host) = self.inner.host_for(bundle.name()) else { return };
        let _ = host.prepare(&bundle).await;
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
    if let Some(ended) = count(ENDED_HEADER) {
        host.ended.store(ended, Ordering::Relaxed);
        if ended >= inner.config.recycle_after {
            inner.recycle(host, "its share of isolates ended in it (the engine leaks with each)");
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
    parts.headers.remove(ENDED_HEADER);
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
    async fn ensure_loaded(&self, bundle: &Arc<Bundle>) -> Result<(), BoxError> {
        let mut loaded = self.loaded.lock().await;
        if loaded.contains_key(&bundle.id()) {
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
        loaded.insert(bundle.id(), Arc::downgrade(bundle));
        Ok(())
    }

    /// Boots `bundle`'s isolate, uploading the bundle first if needed.
    async fn prepare(&self, bundle: &Arc<Bundle>) -> Result<(), BoxError> {
        self.ensure_loaded(bundle).await?;
        let request =
            http::Request::post(format!("http://isolate-host/prepare/{}", bundle.id())).body(empty()).expect("valid");
        self.send.clone().send_request(request).await?;
        Ok(())
    }

    /// One `GET` to the host, its body as text.
    async fn get(&self, path: &str) -> Result<String, BoxError> {
        let request = http::Request::get(format!("http://isolate-host{path}")).body(empty())?;
        let response = self.send.clone().send_request(request).await?;
        let body = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Asks the host for its runtime figures; keeps the last ones if it does not answer.
    async fn refresh_stats(&self) {
        let asked = tokio::time::timeout(STATS_PATIENCE, self.get("/stats")).await;
        match asked.map(|r| r.map(|text| serde_json::from_str::<StatsSnapshot>(&text))) {
            Ok(Ok(Ok(snapshot))) => *lock(&self.last_stats) = snapshot,
            Ok(Ok(Err(e))) => tracing::warn!(pid = self.pid, "an isolate host reported unreadable figures: {e}"),
            Ok(Err(_)) | Err(_) => {}
        }
    }

    /// The bundles of the functions this host serves now that the node still has.
    async fn serving(&self) -> Vec<Arc<Bundle>> {
        let Ok(Ok(text)) = tokio::time::timeout(STATS_PATIENCE, self.get("/serving")).await else { return Vec::new() };
        let loaded = self.loaded.lock().await;
        text.lines().filter_map(|id| id.parse::<BundleId>().ok()).filter_map(|id| loaded.get(&id)?.upgrade()).collect()
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

    /// The live host for `function`: the one in the slot rendezvous hashing picks among the
    /// slots that have a live host.
    fn host_for(&self, function: &str) -> Option<Arc<Host>> {
        let hosts = lock(&self.hosts);
        let live = || hosts.iter().filter(|h| !h.retiring.load(Ordering::Relaxed));
        let slot = pick_slot(function, live().map(|h| h.slot))?;
        live().find(|h| h.slot == slot).cloned()
    }

    /// Takes `host` out of the hosts, keeping what it counted in the node's totals; false if
    /// it was not among them.
    fn remove(&self, host: &Host) -> bool {
        let mut hosts = lock(&self.hosts);
        let Some(i) = hosts.iter().position(|h| h.id == host.id) else { return false };
        hosts.remove(i);
        lock(&self.gone).add(&lock(&host.last_stats), false);
        true
    }

    /// Starts one host process for `slot` and connects to it. (Boxed: a crashed host's
    /// watcher starts the next one from inside this future.)
    fn spawn(self: Arc<Self>, slot: usize) -> Pin<Box<dyn Future<Output = std::io::Result<Arc<Host>>> + Send>> {
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
                slot,
                pid,
                send,
                loaded: AsyncMutex::new(HashMap::new()),
                in_flight: AtomicUsize::new(0),
                recycling: AtomicBool::new(false),
                retiring: AtomicBool::new(false),
                exited: AtomicBool::new(false),
                ended: AtomicU64::new(0),
                last_stats: Mutex::new(StatsSnapshot::default()),
            });
            self.stats.started.inc();
            self.stats.live.inc();
            tracing::info!(pid, slot, "isolate host started");
            let weak: Weak<Inner> = Arc::downgrade(&self);
            let watched = host.clone();
            tokio::spawn(async move {
                let status = child.wait().await;
                watched.exited.store(true, Ordering::SeqCst);
                let Some(inner) = weak.upgrade() else { return };
                inner.stats.live.dec();
                if watched.retiring.load(Ordering::Relaxed) {
                    tracing::info!(pid, "isolate host retired");
                    return;
                }
                inner.stats.crashed.inc();
                if !inner.remove(&watched) {
                    // A replacement that died while it warmed up: its predecessor serves on.
                    tracing::error!(pid, ?status, "a replacement isolate host died before it took over");
                    return;
                }
                tracing::error!(pid, ?status, "isolate host crashed; starting another");
                loop {
                    match inner.clone().spawn(watched.slot).await {
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

    /// Replaces `old` with a fresh host, for the reason `why`: the fresh one boots the
    /// functions `old` serves, takes its slot, and `old` finishes its requests, then stops.
    fn recycle(self: &Arc<Self>, old: &Arc<Host>, why: &'static str) {
        if old.recycling.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        let old = old.clone();
        tokio::spawn(async move {
            // Until the fresh host is up and warm, the old one keeps taking requests.
            let fresh = match inner.clone().spawn(old.slot).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!("cannot start a replacement isolate host: {e}");
                    old.recycling.store(false, Ordering::Release);
                    return;
                }
            };
            let serving = old.serving().await;
            let warmed = tokio::time::timeout(WARM_PATIENCE, warm(&fresh, &serving)).await.unwrap_or(0);
            {
                // Under the lock its watcher takes: a fresh host that died before this point
                // is not put in (the next answer from `old` tries again); one that dies
                // after is found by its watcher and restarted.
                let mut hosts = lock(&inner.hosts);
                if fresh.exited.load(Ordering::SeqCst) {
                    old.recycling.store(false, Ordering::Release);
                    return;
                }
                hosts.push(fresh.clone());
                old.retiring.store(true, Ordering::SeqCst);
            }
            inner.stats.recycled.inc();
            tracing::info!(
                old = old.pid,
                new = fresh.pid,
                slot = old.slot,
                ended = old.ended.load(Ordering::Relaxed),
                serving = serving.len(),
                warmed,
                why,
                "replacing isolate host"
            );
            let deadline = tokio::time::Instant::now() + RETIRE_PATIENCE;
            while old.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            old.refresh_stats().await;
            inner.remove(&old);
            // SIGTERM; the host exits (its watcher sees a retired host, not a crash).
            let _ = nix_kill(old.pid);
        });
    }
}

/// Boots the isolates of `bundles` on `host`, a few at a time; how many are ready.
async fn warm(host: &Arc<Host>, bundles: &[Arc<Bundle>]) -> usize {
    let mut warmed = 0;
    for batch in bundles.chunks(WARM_CONCURRENCY) {
        let mut boots = tokio::task::JoinSet::new();
        for bundle in batch {
            let (host, bundle) = (host.clone(), bundle.clone());
            boots.spawn(async move { host.prepare(&bundle).await.is_ok() });
        }
        warmed += boots.join_all().await.into_iter().filter(|ok| *ok).count();
    }
    warmed
}

/// The slot for `function` among `slots`: the one whose hash with the function's name is
/// highest (rendezvous hashing), so a function moves only when its slot goes or comes.
fn pick_slot(function: &str, slots: impl Iterator<Item = usize>) -> Option<usize> {
    slots.max_by_key(|&slot| {
        let mut hasher = DefaultHasher::new();
        (function, slot).hash(&mut hasher);
        hasher.finish()
    })
}

fn nix_kill(pid: u32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a child's pid and SIGTERM.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::pick_slot;

    fn placement(slots: &[usize]) -> Vec<Option<usize>> {
        (0..1000).map(|i| pick_slot(&format!("function-{i}"), slots.iter().copied())).collect()
    }

    #[test]
    fn functions_spread_over_the_slots() {
        let placed = placement(&[0, 1, 2, 3]);
        for slot in 0..4 {
            let n = placed.iter().filter(|p| **p == Some(slot)).count();
            assert!((150..350).contains(&n), "slot {slot} has {n} of 1000 functions");
        }
        assert_eq!(pick_slot("f", std::iter::empty()), None);
    }

    #[test]
    fn a_slot_that_goes_away_moves_only_its_own_functions_and_gets_them_back() {
        let all = placement(&[0, 1, 2]);
        let without_1 = placement(&[0, 2]);
        for (before, after) in all.iter().zip(&without_1) {
            if *before != Some(1) {
                assert_eq!(before, after, "a function of another slot moved");
            } else {
                assert_ne!(*after, Some(1));
            }
        }
        // The host restarted in slot 1 (or its replacement) serves the same functions again.
        assert_eq!(placement(&[2, 0, 1]), all);
    }
}
