//! The control plane through the real binary: `tern control-plane` on loopback with a data
//! directory, and the user's commands (`tern deploy`, `tern versions`, `tern rollback`)
//! run as processes against it, plus raw HTTP for what the CLI would never send.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::platform::ControlPlane;
use support::*;

fn ok(output: Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "tern failed:\n{out}{err}");
    out.into_owned()
}

fn refused(output: Output) -> String {
    assert!(!output.status.success(), "tern should have failed: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    (dir, data)
}

fn project(name: &str, body: &str, routes: &str) -> Project {
    Project::with_manifest(
        &format!("name = \"{name}\"\nmain = \"index.js\"\nroutes = [{routes}]\n"),
        &[("index.js", &format!("export default {{ fetch() {{ return new Response({body:?}); }} }};"))],
    )
}

#[tokio::test]
async fn deploy_list_roll_back_and_keep_it_all_across_a_restart() {
    let (_dir, data) = data_dir();
    let cp = ControlPlane::start(&data);
    let p = project("shop", "one", "");
    let path = p.path().to_str().unwrap();

    assert!(ok(cp.tern(&["deploy", path])).starts_with("deployed shop version 1 "));
    assert!(ok(cp.tern(&["deploy", path])).starts_with("unchanged: shop version 1 "), "same bundle, no new version");
    p.write("index.js", b"export default { fetch() { return new Response('two'); } };");
    assert!(ok(cp.tern(&["deploy", path])).starts_with("deployed shop version 2 "));
    let listed = ok(cp.tern(&["versions", "shop"]));
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(rows[1].starts_with("2 ") && rows[1].ends_with("(active)"), "{listed}");

    assert!(ok(cp.tern(&["rollback", "shop"])).starts_with("shop now runs version 1 "));
    let e = refused(cp.tern(&["rollback", "shop"]));
    assert!(e.contains("no version before the one it runs"), "{e}");
    assert!(ok(cp.tern(&["rollback", "shop", "--to", "2"])).starts_with("shop now runs version 2 "));
    let e = refused(cp.tern(&["rollback", "shop", "--to", "7"]));
    assert!(e.contains("has no version \"7\""), "{e}");

    // State, key and token live in the data directory.
    let key_before = get_json(&cp.url, "/v1/signing-key", None).await;
    drop(cp);
    let cp = ControlPlane::start(&data);
    let listed = ok(cp.tern(&["versions", "shop"]));
    assert!(listed.lines().nth(2).unwrap().ends_with("(active)"), "version 2 still active:\n{listed}");
    assert_eq!(get_json(&cp.url, "/v1/signing-key", None).await, key_before, "the signing key is kept");
}

#[tokio::test]
async fn versions_are_signed_with_the_control_planes_key() {
    let (_dir, data) = data_dir();
    let cp = ControlPlane::start(&data);
    let p = project("signed", "hi", "");
    let bundle = load_bundle(p.path());
    let answer = post_bundle(&cp, &bundle.to_wire(), &bundle.id().to_string()).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    let signature: tern_proto::BundleSignature = answer.json()["signature"].as_str().unwrap().parse().unwrap();
    let key = get_json(&cp.url, "/v1/signing-key", None).await;
    let hex = key["public_key"].as_str().unwrap();
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let key = tern_proto::VerifyingKey::from_bytes(&bytes).unwrap();
    assert_eq!(key.verify(bundle.id(), &signature), Ok(()));
    assert!(key.verify(load_bundle(project("other", "x", "").path()).id(), &signature).is_err());
}

#[tokio::test]
async fn bad_tokens_bad_bundles_and_route_conflicts_are_refused_with_reasons() {
    let (_dir, data) = data_dir();
    let cp = ControlPlane::start(&data);
    let a = project("alpha", "a", "\"shop.example.com/*\"");
    let b = project("beta", "b", "\"shop.example.com/*\", \"beta.example.com\"");
    let path_a = a.path().to_str().unwrap();

    let e = refused(cp.tern_with_token(&["deploy", path_a], Some("not-the-token")));
    assert!(e.contains("401") && e.contains("the token is not valid"), "{e}");
    let e = refused(cp.tern_with_token(&["deploy", path_a], None));
    assert!(e.contains("TERN_TOKEN"), "says how to give a token: {e}");

    ok(cp.tern(&["deploy", path_a]));
    let e = refused(cp.tern(&["deploy", b.path().to_str().unwrap()]));
    assert!(e.contains("409") && e.contains("\"shop.example.com/*\"") && e.contains("\"alpha\""), "{e}");
    let e = refused(cp.tern(&["versions", "beta"]));
    assert!(e.contains("no versions"), "the refused deploy left nothing behind: {e}");

    // What the CLI never sends: a body that is not its id, and one that is not a bundle.
    let bundle = load_bundle(b.path());
    let other = load_bundle(a.path()).id().to_string();
    let wrong = post_bundle(&cp, &bundle.to_wire(), &other).await;
    assert_eq!(wrong.status, 400, "{}", wrong.text);
    assert!(wrong.json()["message"].as_str().unwrap().contains("does not match its id"), "{}", wrong.text);
    let mut corrupt = bundle.to_wire();
    let last = corrupt.len() - 3;
    corrupt[last] ^= 0xff;
    let flipped = post_bundle(&cp, &corrupt, &bundle.id().to_string()).await;
    assert_eq!((flipped.status, flipped.json()["error"].as_str()), (400, Some("bad_bundle")), "{}", flipped.text);
    let garbage = post_bundle(&cp, b"not a bundle at all", &bundle.id().to_string()).await;
    assert_eq!(garbage.status, 400, "{}", garbage.text);
}

fn load_bundle(path: &Path) -> tern_proto::Bundle {
    let manifest = tern_proto::Manifest::parse(&std::fs::read_to_string(path.join("tern.toml")).unwrap()).unwrap();
    let code = std::fs::read(path.join("index.js")).unwrap();
    tern_proto::Bundle::new(manifest, [("index.js".to_string(), code)]).unwrap()
}

async fn post_bundle(cp: &ControlPlane, wire: &[u8], id: &str) -> Answer {
    let request = http::Request::post(format!("{}/v1/deployments", cp.url))
        .header("authorization", format!("Bearer {}", cp.token))
        .header("tern-bundle-id", id)
        .body(body(wire.to_vec()))
        .unwrap();
    send(&http1(), request).await
}

async fn get_json(url: &str, path: &str, token: Option<&str>) -> serde_json::Value {
    let mut request = http::Request::get(format!("{url}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(&http1(), request.body(empty()).unwrap()).await.json()
}

#[tokio::test]
async fn a_second_control_plane_on_the_same_data_directory_is_refused_and_says_why() {
    let (_dir, data) = data_dir();
    let _first = ControlPlane::start(&data);
    let second = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["control-plane", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .expect("run tern");
    let e = refused(second);
    assert!(e.contains("in use by another control plane"), "{e}");
}
