//! The serve loop inside one isolate, driven through the runtime's own interface
//! ([`Isolates`]): what a function's JS sees of a queue of requests.

use std::sync::Arc;

use http_body_util::BodyExt;
use tern_js_api::exchange::{Exchange, Reply, RequestId};
use tern_proto::{Bundle, Manifest};
use tern_runtime::{IsolateConfig, Isolates};
use tokio::sync::oneshot;

/// Answers `/timer` from a timer; every answer says how many plain requests were answered
/// before it.
const COUNTING: &str = r#"
let plain = 0;
export default {
  fetch(request) {
    if (new URL(request.url).pathname === "/timer") {
      return new Promise((resolve) => setTimeout(() => resolve(new Response(String(plain))), 0));
    }
    plain++;
    return new Response(String(plain));
  },
};
"#;

fn send(isolates: &Isolates, bundle: &Arc<Bundle>, n: u64, path: &str) -> oneshot::Receiver<Reply> {
    let (reply, answer) = oneshot::channel();
    let body = http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync();
    let url = format!("http://counting{path}");
    isolates.dispatch(
        bundle.clone(),
        Exchange { id: RequestId(n), hops: 0, request: http::Request::new(body), url, reply },
    );
    answer
}

async fn text(answer: oneshot::Receiver<Reply>) -> String {
    match answer.await {
        Ok(Reply::Response(r)) => {
            String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
        }
        Ok(Reply::Failed(f)) => panic!("failed: {} {}", f.kind.code(), f.detail),
        Err(_) => panic!("no answer"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bug_timers_waited_until_a_queue_of_requests_ran_dry() {
    // An async op that is ready when called resolves without leaving JS: while requests kept
    // arriving, the serve loop's await on the next one never let the event loop turn, and a
    // request waiting on a timer (or a fetch's response) was answered only once the queue ran
    // dry. Here a queue of plain requests builds up behind one that waits on a timer: that
    // one must be answered while most of the queue is still waiting.
    const PLAIN: u64 = 2000;
    let manifest = Manifest::for_single_file("counting", "index.js").unwrap();
    let bundle = Arc::new(Bundle::new(manifest, [("index.js".to_string(), COUNTING.as_bytes().to_vec())]).unwrap());
    let isolates = Isolates::start(IsolateConfig { warm_pool: 0, ..IsolateConfig::default() }).unwrap();
    isolates.prepare_and_wait(bundle.clone()).await;
    let timer = send(&isolates, &bundle, 0, "/timer");
    let plain: Vec<_> = (1..=PLAIN).map(|n| send(&isolates, &bundle, n, "/")).collect();
    let before: u64 = text(timer).await.parse().unwrap();
    for answer in plain {
        text(answer).await;
    }
    assert!(before < PLAIN / 2, "the timer fired after {before} of {PLAIN} queued requests were answered");
}
