//! The node's own answers: every way a request can fail, mapped to one status and one
//! `tern-error` code, here and nowhere else.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use tern_js_api::exchange::{Failure, FailureKind};

/// Header naming why the node (not the function) produced a response.
pub const TERN_ERROR: &str = "tern-error";

#[derive(Debug, Clone)]
pub enum NodeError {
    /// No function serves this host and path.
    NoRoute { host: String },
    /// The function ran and failed.
    Function { function: String, failure: Failure },
    /// The request body is larger than the function's `limits.request_body_mib`.
    RequestBodyTooLarge { function: String, limit: u64 },
    /// The function answered with a complete body larger than `limits.response_body_mib`
    /// (a streamed one is cut where it passes the limit instead).
    ResponseBodyTooLarge { function: String, limit: u64 },
    /// The request passed through Tern nodes more than `MAX_HOPS` times: functions
    /// fetching each other (or themselves) in a loop.
    LoopDetected { function: String, hops: u32 },
}

/// Whether failure details (stacks, compile errors) go into response bodies: yes for
/// `tern dev`, no on a shared node, where they go only to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDetail {
    Expose,
    Hide,
}

impl NodeError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::Function { failure, .. } => match failure.kind {
                FailureKind::UncaughtException
                | FailureKind::InvalidResponse
                | FailureKind::LoadFailed
                | FailureKind::WasmTrap => StatusCode::INTERNAL_SERVER_ERROR,
                FailureKind::IsolateFailed | FailureKind::IsolateHostCrashed => StatusCode::BAD_GATEWAY,
                FailureKind::CpuLimitExceeded
                | FailureKind::MemoryLimitExceeded
                | FailureKind::StartupLimitExceeded
                | FailureKind::WallTimeExceeded
                | FailureKind::SubrequestLimitExceeded => StatusCode::SERVICE_UNAVAILABLE,
            },
            Self::RequestBodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ResponseBodyTooLarge { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::LoopDetected { .. } => StatusCode::LOOP_DETECTED,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no_route",
            Self::Function { failure, .. } => failure.kind.code(),
            Self::RequestBodyTooLarge { .. } => "request_body_too_large",
            Self::ResponseBodyTooLarge { .. } => "response_body_too_large",
            Self::LoopDetected { .. } => "loop_detected",
        }
    }

    fn message(&self, detail: ErrorDetail) -> String {
        match self {
            Self::NoRoute { host } => format!("no function serves host {host:?}\n"),
            Self::RequestBodyTooLarge { function, limit } => format!(
                "the request body is larger than function {function:?} accepts ({} MiB, limits.request_body_mib)\n",
                limit / (1024 * 1024)
            ),
            Self::LoopDetected { function, hops } => format!(
                "request for function {function:?} refused: it has passed through Tern {hops} times (tern-hops), \
                 more than {}; functions are fetching each other in a loop\n",
                tern_js_api::egress::MAX_HOPS
            ),
            Self::ResponseBodyTooLarge { function, limit } => format!(
                "function {function:?} answered with a body larger than its limit ({} MiB, limits.response_body_mib)\n",
                limit / (1024 * 1024)
            ),
            Self::Function { function, failure } => {
                let what = match failure.kind {
                    FailureKind::UncaughtException => "threw an uncaught exception",
                    FailureKind::InvalidResponse => "did not return a Response",
                    FailureKind::LoadFailed => "failed to load",
                    FailureKind::IsolateFailed => "stopped before it answered",
                    FailureKind::CpuLimitExceeded => "exceeded its CPU time limit",
                    FailureKind::MemoryLimitExceeded => "exceeded its memory limit",
                    FailureKind::StartupLimitExceeded => "exceeded its startup CPU limit",
                    FailureKind::WallTimeExceeded => "exceeded its wall time limit",
                    FailureKind::IsolateHostCrashed => "lost its isolate host process before it answered",
                    FailureKind::SubrequestLimitExceeded => "made too many subrequests",
                    FailureKind::WasmTrap => "failed as a WebAssembly program",
                };
                if is_limit(failure.kind) {
                    // Which limit and its value are the user's own configuration: always said.
                    return format!("function {function:?} {what}: {}\n", failure.detail);
                }
                match detail {
                    ErrorDetail::Expose => format!("function {function:?} {what}:\n{}\n", failure.detail),
                    // The trap or exit status is the answer's reason; what the program printed
                    // to standard error stays in the log.
                    ErrorDetail::Hide if failure.kind == FailureKind::WasmTrap => {
                        let reason = failure.detail.split(STDERR_MARK).next().unwrap_or_default();
                        format!("function {function:?} {what}: {reason}\n")
                    }
                    ErrorDetail::Hide => format!("function {function:?} {what}; the details are in the node's log\n"),
                }
            }
        }
    }

    /// The request id the response will carry is added by the server.
    pub fn into_response(self, detail: ErrorDetail) -> Response<Bytes> {
        let mut response = Response::new(Bytes::from(self.message(detail)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(TERN_ERROR, HeaderValue::from_static(self.code()));
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        response
    }
}

/// Where a WebAssembly failure's detail goes on to quote the program's standard error
/// (`js/20_wasi.js`).
const STDERR_MARK: &str = "; its standard error";

fn is_limit(kind: FailureKind) -> bool {
    matches!(
        kind,
        FailureKind::CpuLimitExceeded
            | FailureKind::MemoryLimitExceeded
            | FailureKind::StartupLimitExceeded
            | FailureKind::WallTimeExceeded
            | FailureKind::SubrequestLimitExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_status_and_code() {
        let f = |kind| NodeError::Function {
            function: "f".into(),
            failure: Failure { kind, detail: "boom at a.js:1:2".into() },
        };
        let cases = [
            (NodeError::NoRoute { host: "x".into() }, 404, "no_route"),
            (f(FailureKind::UncaughtException), 500, "uncaught_exception"),
            (f(FailureKind::InvalidResponse), 500, "invalid_response"),
            (f(FailureKind::LoadFailed), 500, "load_failed"),
            (f(FailureKind::IsolateFailed), 502, "isolate_failed"),
            (f(FailureKind::IsolateHostCrashed), 502, "isolate_host_crashed"),
            (f(FailureKind::SubrequestLimitExceeded), 503, "subrequest_limit_exceeded"),
            (f(FailureKind::CpuLimitExceeded), 503, "cpu_limit_exceeded"),
            (f(FailureKind::MemoryLimitExceeded), 503, "memory_limit_exceeded"),
            (f(FailureKind::StartupLimitExceeded), 503, "startup_limit_exceeded"),
            (f(FailureKind::WallTimeExceeded), 503, "wall_time_exceeded"),
            (NodeError::RequestBodyTooLarge { function: "f".into(), limit: 1 << 20 }, 413, "request_body_too_large"),
            (NodeError::ResponseBodyTooLarge { function: "f".into(), limit: 1 << 20 }, 500, "response_body_too_large"),
            (NodeError::LoopDetected { function: "f".into(), hops: 17 }, 508, "loop_detected"),
        ];
        for (error, status, code) in cases {
            let response = error.into_response(ErrorDetail::Hide);
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()[TERN_ERROR], code);
            let body = String::from_utf8_lossy(response.body()).to_string();
            assert!(!body.contains("a.js:1:2") || code.ends_with("_exceeded"), "details stay in the log: {body}");
        }
    }

    #[test]
    fn dev_mode_shows_the_detail() {
        let e = NodeError::Function {
            function: "f".into(),
            failure: Failure { kind: FailureKind::LoadFailed, detail: "SyntaxError at src/a.js:3:1".into() },
        };
        assert!(String::from_utf8_lossy(e.into_response(ErrorDetail::Expose).body()).contains("src/a.js:3:1"));
    }
}
