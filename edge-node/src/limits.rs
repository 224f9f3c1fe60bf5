//! Limits of the node's HTTP server itself, before any function runs: how long a client may
//! take to send its request head (slowloris), how many headers, and how hard an HTTP/2
//! client may push streams and resets. hyper enforces them; a breach closes the connection
//! or answers 400/431 without reaching a function.
//!
//! Request smuggling shapes are hyper's: two Content-Lengths or obs-folded headers are 400;
//! Content-Length with Transfer-Encoding is read as chunked (RFC 9112 §6.3) and the
//! connection is closed after the response, so nothing after the body is read as a request.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Time allowed to receive a request's head, and for an idle keep-alive connection to
    /// start its next request. Default 10 s.
    pub header_read_timeout: Duration,
    /// Most request headers in one HTTP/1.1 request (more is 431). Default 100.
    pub max_headers: usize,
    /// Largest request head, in bytes, for HTTP/1.1 buffers and HTTP/2 header lists
    /// (more is 431). Default 64 KiB.
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection. Default 250.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before they are accepted (reset flood,
    /// CVE-2023-44487) before the connection is closed. Default 20.
    pub max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the server may reset for protocol errors before it closes the
    /// connection. Default 1,024.
    pub max_local_error_reset_streams: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 250,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
        }
    }
}
