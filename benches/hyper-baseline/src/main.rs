//! `hyper-baseline PORT`: the floor Tern is measured against. A bare hyper 1.x server on a
//! current-thread runtime that answers every request like `examples/hello` (200, body
//! `hello`, header `x-hello: world`), HTTP/1.1 and h2c, with nothing else in the way.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

fn main() -> anyhow::Result<()> {
    let port: u16 =
        std::env::args().nth(1).or_else(|| std::env::var("PORT").ok()).unwrap_or_else(|| "8080".into()).parse()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    let response = http::Response::builder()
                        .header("x-hello", "world")
                        .header("content-type", "text/plain;charset=UTF-8")
                        .body(Full::new(Bytes::from_static(b"hello")))
                        .expect("static response");
                    Ok::<_, Infallible>(response)
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}
