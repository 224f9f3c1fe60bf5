//! Isolates leave by the memory budget and the idle TTL, and come back on demand, through
//! the binary: what left is read from the admin endpoint's counters, what came back from
//! a function's module state starting again.

mod support;

use std::time::Duration;

use support::{Project, Tern, empty, get, http1};

/// A function that counts its requests in module state: a fresh isolate answers 1.
fn counter(name: &str) -> Project {
    Project::new(name, &[("index.js", "let n = 0; export default { fetch: () => new Response(String(++n)) };")])
}

async fn metrics(tern: &Tern) -> String {
    support::scrape(&tern.admin_addr()).await.text
}

fn evictions(metrics: &str) -> u64 {
    support::sample(metrics, "tern_isolate_evictions_total").expect(metrics) as u64
}

#[tokio::test]
async fn bug_the_memory_budget_was_enforced_only_at_the_next_housekeeping_tick() {
    // Room for two isolates (12 MiB each), six functions asked one after the other. Isolates
    // past the budget used to wait for the runtime's next housekeeping (half a second), so a
    // burst of new functions booted far past the budget first.
    let functions: Vec<Project> = (0..6).map(|i| counter(&format!("f{i}"))).collect();
    let paths: Vec<_> = functions.iter().map(|p| p.path()).collect();
    let tern = Tern::dev_with(&paths, &["--isolate-memory-budget-mib", "24", "--admin-port", "0"]);
    // Booting all six at start evicted four of them already.
    let at_start = evictions(&metrics(&tern).await);
    assert!(at_start >= 4, "{at_start} evictions after booting 6 isolates with room for 2");
    let client = http1();
    for i in 0..6 {
        let a =
            support::send(&client, tern.request("GET", &format!("f{i}.localhost"), "/").body(empty()).unwrap()).await;
        assert_eq!(a.status, 200, "{}", a.text);
    }
    // At least four of them had no isolate: each booted one past the budget, and each
    // such boot evicted an isolate (another, or itself after its request) before answering.
    let after = evictions(&metrics(&tern).await);
    assert!(after - at_start >= 4, "evictions {at_start} -> {after} over 6 requests\n{}", tern.output());
    // Whatever was evicted comes back on demand.
    for i in 0..6 {
        assert_eq!(get(&tern, &format!("f{i}.localhost"), "/").await.status, 200);
    }
}

#[tokio::test]
async fn an_idle_isolate_is_evicted_after_the_idle_ttl_and_comes_back_on_demand() {
    idle_isolate_comes_back_fresh(&[]).await;
}

#[tokio::test]
async fn an_isolate_host_evicts_by_the_idle_ttl_too() {
    idle_isolate_comes_back_fresh(&["--isolate-hosts", "1"]).await;
}

/// With a 1 s idle TTL, a function's isolate is evicted once left alone, and its next
/// request gets a fresh one (its module state starts again).
async fn idle_isolate_comes_back_fresh(extra: &[&str]) {
    let p = counter("sleepy");
    let mut args = vec!["--isolate-idle-ttl", "1s", "--admin-port", "0"];
    args.extend_from_slice(extra);
    let tern = Tern::dev_with(&[p.path()], &args);
    assert_eq!(get(&tern, "sleepy.localhost", "/").await.text, "1");
    assert_eq!(get(&tern, "sleepy.localhost", "/").await.text, "2");
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    while evictions(&metrics(&tern).await) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never evicted:\n{}", tern.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&tern, "sleepy.localhost", "/").await.text, "1");
}

#[tokio::test]
async fn bug_a_function_new_to_a_full_node_paid_a_boot_per_request() {
    // Room for three isolates, seven functions booted at start. moka's default policy
    // (TinyLFU) turned away the isolate booted for a function that was not yet frequent
    // (it served the request it was booted for and went): such a function booted an isolate
    // for every request while the budget was full.
    let functions: Vec<Project> = (0..7).map(|i| counter(&format!("f{i}"))).collect();
    let paths: Vec<_> = functions.iter().map(|p| p.path()).collect();
    let tern = Tern::dev_with(&paths, &["--isolate-memory-budget-mib", "36"]);
    for i in 0..7 {
        let host = format!("f{i}.localhost");
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(get(&tern, &host, "/").await.text.parse::<u32>().unwrap());
        }
        assert_eq!(answers[1], answers[0] + 1, "f{i}: a fresh isolate per request: {answers:?}");
        assert_eq!(answers[2], answers[1] + 1, "f{i}: a fresh isolate per request: {answers:?}");
    }
}
