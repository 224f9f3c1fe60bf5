//! The distribution protocol between the control plane and its nodes, over one QUIC
//! connection (mutual TLS) per node. Pure: the messages, their framing, and how a node folds
//! an update into the state it serves. Sockets belong to the control plane and the node.
//!
//! Streams:
//! - **subscription**: the first bidirectional stream a node opens. The node sends
//!   [`NodeMessage::Hello`] with the revision it has applied, then [`NodeMessage::Applied`]
//!   or [`NodeMessage::Refused`] after each update; the control plane sends
//!   [`Update`]s: every function assignment changed since the node's revision (or the
//!   whole state when the node's revision is not in its log), with the revision they bring
//!   the node to.
//! - **bundle fetch**: one bidirectional stream per bundle. The node sends
//!   [`NodeMessage::Fetch`]; the control plane answers a [`BundleAnswer`] frame, then (when
//!   found) the bundle's wire bytes until the end of the stream.
//!
//! A frame is a 4-byte big-endian length and that many bytes of JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The ALPN protocol name both ends insist on.
pub const ALPN: &[u8] = b"tern-distribution/1";
/// The name the control plane's distribution certificate carries and nodes check.
pub const SERVER_NAME: &str = "tern-control-plane";
/// Largest JSON frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// What one function runs, as the control plane assigns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub function: String,
    pub version: u32,
    /// The bundle id (64 hex digits).
    pub bundle: String,
    /// The control plane's Ed25519 signature over the bundle id (128 hex digits).
    pub signature: String,
    /// The revision that assigned it.
    pub revision: u64,
    /// During a rollout: the candidate version and who gets it.
    #[serde(default)]
    pub rollout: Option<crate::rollout::Candidate>,
    /// The function's secrets, opened for the node (never in the control plane's log).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

impl Assignment {
    /// The bundles the assignment needs, each as an assignment of its own (function,
    /// bundle, signature): the stable version, and the rollout's candidate if any.
    pub fn parts(&self) -> Vec<Assignment> {
        let stable = Assignment { rollout: None, secrets: BTreeMap::new(), ..self.clone() };
        let candidate = self.rollout.as_ref().map(|c| Assignment {
            version: c.version,
            bundle: c.bundle.clone(),
            signature: c.signature.clone(),
            rollout: None,
            secrets: BTreeMap::new(),
            ..self.clone()
        });
        std::iter::once(stable).chain(candidate).collect()
    }
}

/// Where a node is and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub region: String,
    /// Latitude and longitude in degrees.
    pub location: (f64, f64),
    /// The address its HTTP listener is reachable on (`host:port`).
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeMessage {
    Hello {
        node: NodeInfo,
        applied: u64,
    },
    /// Everything up to `revision` is what the node now serves.
    Applied {
        revision: u64,
    },
    /// The update to `revision` was not applied; the node keeps serving what it had.
    Refused {
        revision: u64,
        reason: String,
    },
    /// The first and only frame of a bundle fetch stream.
    Fetch {
        bundle: String,
    },
}

/// Assignments that bring a node to `revision`. With `full`, the assignments are the whole
/// state and replace what the node has; otherwise they are merged into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub revision: u64,
    pub full: bool,
    pub assignments: Vec<Assignment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleAnswer {
    /// Bytes that follow, or `None` with `error` set.
    pub size: Option<u64>,
    pub error: Option<String>,
}

/// What a node serves: one assignment per function, and the revision it reflects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub revision: u64,
    pub functions: BTreeMap<String, Assignment>,
}

impl AppliedState {
    /// The state `update` leads to (not yet applied: the node applies it whole or not at all).
    pub fn with(&self, update: &Update) -> AppliedState {
        let mut functions = if update.full { BTreeMap::new() } else { self.functions.clone() };
        for assignment in &update.assignments {
            functions.insert(assignment.function.clone(), assignment.clone());
        }
        AppliedState { revision: update.revision, functions }
    }
}

/// Every assignment made after `applied`, latest per function, in revision order, given
/// the log of assignments in revision order.
pub fn changes_after(applied: u64, log: &[Assignment]) -> Vec<Assignment> {
    let mut latest: BTreeMap<&str, &Assignment> = BTreeMap::new();
    for assignment in log.iter().filter(|a| a.revision > applied) {
        latest.insert(&assignment.function, assignment);
    }
    let mut out: Vec<Assignment> = latest.into_values().cloned().collect();
    out.sort_by_key(|a| a.revision);
    out
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {0} bytes is larger than the {MAX_FRAME_BYTES} allowed")]
    TooLarge(usize),
    #[error("a frame is not valid JSON for this message: {0}")]
    Json(#[from] serde_json::Error),
}

/// `message` as one frame.
pub fn encode_frame<T: Serialize>(message: &T) -> Vec<u8> {
    let json = serde_json::to_vec(message).expect("protocol messages serialize");
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// The length a frame's 4-byte prefix announces, refused past [`MAX_FRAME_BYTES`].
pub fn frame_length(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_BYTES { Err(FrameError::TooLarge(len)) } else { Ok(len) }
}

pub fn decode_frame<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(function: &str, version: u32, revision: u64) -> Assignment {
        Assignment {
            function: function.into(),
            version,
            bundle: format!("{version:064}"),
            signature: "00".repeat(64),
            revision,
            rollout: None,
            secrets: BTreeMap::new(),
        }
    }

    #[test]
    fn changes_after_keep_the_latest_per_function() {
        let log = [assignment("a", 1, 1), assignment("b", 1, 2), assignment("a", 2, 3), assignment("a", 1, 4)];
        let changes = changes_after(1, &log);
        assert_eq!(changes, [assignment("b", 1, 2), assignment("a", 1, 4)]);
        assert!(changes_after(4, &log).is_empty());
    }

    #[test]
    fn updates_merge_or_replace() {
        let state = AppliedState::default().with(&Update {
            revision: 2,
            full: false,
            assignments: vec![assignment("a", 1, 1), assignment("b", 1, 2)],
        });
        assert_eq!(state.functions.len(), 2);
        let merged = state.with(&Update { revision: 3, full: false, assignments: vec![assignment("a", 2, 3)] });
        assert_eq!((merged.revision, merged.functions["a"].version, merged.functions["b"].version), (3, 2, 1));
        let replaced = merged.with(&Update { revision: 9, full: true, assignments: vec![assignment("c", 1, 9)] });
        assert_eq!(replaced.functions.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(state.revision, 2, "with() leaves the original alone");
    }

    #[test]
    fn frames_round_trip_and_refuse_oversize() {
        let message = NodeMessage::Applied { revision: 7 };
        let frame = encode_frame(&message);
        let len = frame_length(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode_frame::<NodeMessage>(&frame[4..]).unwrap(), message);
        assert!(matches!(frame_length(u32::MAX.to_be_bytes()), Err(FrameError::TooLarge(_))));
        assert!(decode_frame::<NodeMessage>(b"{\"type\":\"nope\"}").is_err());
    }
}
