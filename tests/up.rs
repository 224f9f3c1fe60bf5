//! `tern up` through the real binary: the whole platform from one command, serving a
//! deployed project through its router, and gone again on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use support::*;

/// Kills `tern up` (and so, through the kernel, its children) if the test fails first.
struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_up_serves_the_projects_through_its_router_and_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let hello = repo_root().join("examples/hello");
    let child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("up")
        .arg(&hello)
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tern up");
    let mut up = Up(child);
    let child = &mut up.0;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.starts_with("Ctrl-C stops everything")) {
        match rx.recv_timeout(PATIENCE * 2) {
            Ok(line) => printed.push(line),
            Err(_) => {
                let _ = child.kill();
                let mut stderr = String::new();
                let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr);
                panic!("tern up did not come up:\n{}\n{stderr}", printed.join("\n"));
            }
        }
    }
    let text = printed.join("\n");
    let router = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("router").map(|rest| rest.split_whitespace().next().unwrap().to_string()))
        .unwrap_or_else(|| panic!("no router line:\n{text}"));
    assert!(text.contains("hello.localhost"), "{text}");
    assert!(text.contains("TERN_CONTROL_PLANE="), "{text}");

    let request = http::Request::get(format!("{router}/")).header("host", "hello.localhost");
    let answer = send(&http1(), request.body(empty()).unwrap()).await;
    assert_eq!((answer.status, answer.text.as_str()), (200, "hello"), "{text}");
    let node = answer.header("tern-node").unwrap_or_default().to_string();
    assert!(node == "local-a" || node == "local-b", "served by {node:?}");

    // SIGTERM stops it and every process it started.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "tern up exited with {status}");
    let data = data.path().display().to_string();
    let started = std::time::Instant::now();
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&data) && !c.contains(" up "))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "processes left behind: {left:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
