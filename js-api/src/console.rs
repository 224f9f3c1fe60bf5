//! `console.*` from functions goes to the node's structured log (`tracing`), one event per
//! call, tagged with the function's name and version under the target `tern::console`.
//! Formatting of the arguments happens in JS (deno_web's console); this op only routes.

use deno_core::{OpState, op2};

use crate::exchange::FunctionIdentity;

/// Severity of a console call, as sent from JS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl ConsoleLevel {
    fn from_js(level: u8) -> Self {
        match level {
            0 => Self::Debug,
            1 => Self::Info,
            2 => Self::Warn,
            _ => Self::Error,
        }
    }
}

pub fn log(function: &FunctionIdentity, level: ConsoleLevel, message: &str) {
    let (name, version) = (function.name.as_str(), function.version.as_str());
    let message = message.strip_suffix('\n').unwrap_or(message);
    match level {
        ConsoleLevel::Debug => tracing::debug!(target: "tern::console", function = name, version, "{message}"),
        ConsoleLevel::Info => tracing::info!(target: "tern::console", function = name, version, "{message}"),
        ConsoleLevel::Warn => tracing::warn!(target: "tern::console", function = name, version, "{message}"),
        ConsoleLevel::Error => tracing::error!(target: "tern::console", function = name, version, "{message}"),
    }
}

#[op2(fast)]
pub fn op_tern_log(state: &mut OpState, level: u8, #[string] message: &str) {
    log(state.borrow::<FunctionIdentity>(), ConsoleLevel::from_js(level), message);
}
