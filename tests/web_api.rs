//! Every Web API group, exercised from inside a function served by the real binary.
mod support;

use support::*;

#[tokio::test]
async fn every_web_api_group_works_inside_a_function() {
    let tern = Tern::dev(&[&repo_root().join("tests/functions/web-api")]);
    let answer = get(&tern, "web-api.localhost", "/").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let results = answer.json();
    let failures: Vec<String> = results
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.as_str() != Some("ok"))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    assert!(failures.is_empty(), "failing groups:\n{}", failures.join("\n"));
    assert!(results.as_object().unwrap().len() >= 12, "{results}");
}

#[tokio::test]
async fn console_goes_to_the_structured_log_tagged_with_the_function() {
    let tern = Tern::dev(&[&repo_root().join("tests/functions/web-api")]);
    assert_eq!(get(&tern, "web-api.localhost", "/?only=platform").await.json()["platform"], "ok");
    assert!(tern.wait_for_output("console error works").await);
    let events = tern.log_events();
    let log = events.iter().find(|e| e["message"].as_str().is_some_and(|m| m.contains("console works"))).unwrap();
    assert_eq!(log["target"], "tern::console");
    assert_eq!(log["function"], "web-api");
    assert_eq!(log["level"], "INFO");
    assert!(log["message"].as_str().unwrap().contains("{ n: 1 }"), "{log}");
    let err = events.iter().find(|e| e["message"].as_str().is_some_and(|m| m.contains("console error works"))).unwrap();
    assert_eq!(err["level"], "ERROR");
}
