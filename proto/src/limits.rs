//! Per-function resource limits: the `[limits]` table of `tern.toml`, its defaults and the
//! ranges a function may ask for.
//!
//! ```toml
//! [limits]
//! cpu_ms = 50                 # CPU time per request (CPU, not waiting), default 50 ms
//! startup_cpu_ms = 400        # CPU time to evaluate the modules, default 400 ms
//! wall_ms = 30000             # wall clock per request until the response ends, default 30 s
//! memory_mib = 128            # JS heap + ArrayBuffers per isolate, default 128 MiB
//! subrequests = 50            # outbound fetches per request, default 50
//! request_body_mib = 100      # default 100 MiB (413 beyond)
//! response_body_mib = 512     # default 512 MiB (the stream is cut beyond)
//! ```
//! Names follow Workers' `[limits] cpu_ms`. Units are part of every key; inside Tern the
//! values are [`Duration`]s and byte counts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;

/// The limits one function runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub cpu_per_request: Duration,
    pub startup_cpu: Duration,
    pub wall_per_request: Duration,
    pub memory_bytes: u64,
    pub subrequests: u32,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_per_request: Duration::from_millis(50),
            startup_cpu: Duration::from_millis(400),
            wall_per_request: Duration::from_secs(30),
            memory_bytes: 128 * MIB,
            subrequests: 50,
            request_body_bytes: 100 * MIB,
            response_body_bytes: 512 * MIB,
        }
    }
}

/// `[limits]` as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    cpu_ms: Option<u64>,
    startup_cpu_ms: Option<u64>,
    wall_ms: Option<u64>,
    memory_mib: Option<u64>,
    subrequests: Option<u32>,
    request_body_mib: Option<u64>,
    response_body_mib: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tern.toml: [limits] {key} = {value} is out of range: it must be between {min} and {max}")]
pub struct LimitError {
    pub key: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
}

fn in_range(key: &'static str, value: Option<u64>, min: u64, max: u64, default: u64) -> Result<u64, LimitError> {
    match value {
        None => Ok(default),
        Some(v) if (min..=max).contains(&v) => Ok(v),
        Some(value) => Err(LimitError { key, value, min, max }),
    }
}

impl RawLimits {
    /// Applies the defaults and checks every value against what a node grants.
    pub fn resolve(&self) -> Result<Limits, LimitError> {
        let d = Limits::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Ok(Limits {
            cpu_per_request: Duration::from_millis(in_range("cpu_ms", self.cpu_ms, 1, 300_000, ms(d.cpu_per_request))?),
            startup_cpu: Duration::from_millis(in_range(
                "startup_cpu_ms",
                self.startup_cpu_ms,
                1,
                10_000,
                ms(d.startup_cpu),
            )?),
            wall_per_request: Duration::from_millis(in_range(
                "wall_ms",
                self.wall_ms,
                1,
                900_000,
                ms(d.wall_per_request),
            )?),
            memory_bytes: in_range("memory_mib", self.memory_mib, 8, 1024, d.memory_bytes / MIB)? * MIB,
            subrequests: in_range("subrequests", self.subrequests.map(u64::from), 0, 1000, u64::from(d.subrequests))?
                as u32,
            request_body_bytes: in_range(
                "request_body_mib",
                self.request_body_mib,
                0,
                4096,
                d.request_body_bytes / MIB,
            )? * MIB,
            response_body_bytes: in_range(
                "response_body_mib",
                self.response_body_mib,
                0,
                4096,
                d.response_body_bytes / MIB,
            )? * MIB,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_table_means_the_defaults() {
        assert_eq!(RawLimits::default().resolve().unwrap(), Limits::default());
    }

    #[test]
    fn values_out_of_range_name_the_key_and_the_range() {
        let raw = RawLimits { cpu_ms: Some(0), ..Default::default() };
        let e = raw.resolve().unwrap_err();
        assert_eq!(e.to_string(), "tern.toml: [limits] cpu_ms = 0 is out of range: it must be between 1 and 300000");
        let raw = RawLimits { memory_mib: Some(4096), ..Default::default() };
        assert_eq!(raw.resolve().unwrap_err().key, "memory_mib");
    }

    #[test]
    fn units_become_types() {
        let raw = RawLimits { cpu_ms: Some(10), memory_mib: Some(64), ..Default::default() };
        let l = raw.resolve().unwrap();
        assert_eq!(l.cpu_per_request, Duration::from_millis(10));
        assert_eq!(l.memory_bytes, 64 * MIB);
    }
}
