//! The node's HTTP server refuses malformed and abusive requests before any function runs:
//! slow request heads, request smuggling shapes, too many or too large headers. Raw TCP,
//! because a well-behaved client cannot send these.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::*;

/// Sends `raw` and reads until the server closes the connection (or PATIENCE passes).
fn exchange(tern: &Tern, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(tern.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[tokio::test]
async fn smuggling_shapes_are_refused() {
    let tern = Tern::dev(&[&repo_root().join("examples/hello")]);
    // Content-Length with Transfer-Encoding: read as chunked, then the connection closes, so
    // the request hidden after the chunked body is never served.
    let both = exchange(
        &tern,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(both.matches("HTTP/1.1 ").count(), 1, "one response, the smuggled request is not served: {both}");
    assert!(both.to_lowercase().contains("connection: close"), "{both}");
    let two_lengths =
        exchange(&tern, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd");
    assert_eq!(status_line(&two_lengths), "HTTP/1.1 400 Bad Request");
    let obs_fold = exchange(&tern, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n");
    assert_eq!(status_line(&obs_fold), "HTTP/1.1 400 Bad Request");
    assert_eq!(get(&tern, "x", "/").await.text, "hello", "the node keeps serving");
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let tern = Tern::dev(&[&repo_root().join("examples/hello")]);
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    (0..150).for_each(|i| many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes()));
    many.extend_from_slice(b"\r\n");
    assert_eq!(status_line(&exchange(&tern, &many)), "HTTP/1.1 431 Request Header Fields Too Large");
    let mut large = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    large.extend(std::iter::repeat_n(b'a', 200 * 1024));
    large.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status_line(&exchange(&tern, &large)), "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(get(&tern, "x", "/").await.text, "hello");
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_off() {
    let tern = Tern::dev_with(&[&repo_root().join("examples/hello")], &["--header-read-timeout", "300ms"]);
    // Slowloris: half a request head, then silence. The server, not the client, must end it.
    let mut stream = TcpStream::connect(tern.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let read = stream.read_to_end(&mut out);
    assert!(read.is_ok(), "the server closed the connection: {read:?}");
    assert!(started.elapsed() < PATIENCE, "closed by the server, not by the client's patience");
    let text = String::from_utf8_lossy(&out);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(get(&tern, "x", "/").await.text, "hello");
}
