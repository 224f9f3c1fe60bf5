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
//! A **relay** stands between the control plane and nodes: to its nodes it is a control
//! plane (same streams, same messages), and upstream it subscribes with
//! [`NodeMessage::RelayHello`] instead of `Hello`. On that subscription the control plane
//! sends [`ToRelay`] frames (updates, and nodes it will not have served), and the relay
//! passes up what happens below it as [`NodeMessage::Downstream`], so that the control
//! plane knows each node's revision as if it were connected directly.
//!
//! A frame is a 4-byte big-endian length and that many bytes of JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The ALPN protocol name both ends insist on.
pub const ALPN: &[u8] = b"tern-distribution/1";
/// The name the control plane's (and a relay's) distribution certificate carries and nodes
/// check.
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
    /// A relay's subscription: like `Hello`, for the relay itself.
    RelayHello {
        relay: NodeInfo,
        applied: u64,
    },
    /// What happened to node `node` below a relay.
    Downstream {
        node: String,
        event: DownstreamEvent,
    },
}

/// A node's subscription to a relay, as the relay reports it upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DownstreamEvent {
    /// The node subscribed with `applied`, presenting the certificate whose SHA-256 is
    /// `fingerprint` (hex), so that the control plane can check it is a current enrolment.
    Connected {
        info: NodeInfo,
        applied: u64,
        fingerprint: String,
    },
    Applied {
        revision: u64,
    },
    Refused {
        revision: u64,
        reason: String,
    },
    Disconnected,
}

/// What the control plane sends on a relay's subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToRelay {
    Update(Update),
    /// The control plane does not know `node` as connected (its certificate is no current
    /// enrolment): the relay ends that node's connection with `reason`.
    Refuse {
        node: String,
        reason: String,
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

/// What a relay holds and serves: the state it applied, and since when a node must be sent
/// all of it rather than the changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayedState {
    pub state: AppliedState,
    /// Nodes below this revision get the whole state: the relay cannot tell what was
    /// removed before it (a full update from upstream, or a restart).
    pub full_below: u64,
    /// The latest update from upstream was a full one (the control plane's log restarted):
    /// nodes ahead of the relay are sent the whole state too.
    pub reset: bool,
}

impl RelayedState {
    /// The relay's state after `update`.
    pub fn with(&self, update: &Update) -> RelayedState {
        let state = self.state.with(update);
        let full_below = if update.full { update.revision } else { self.full_below };
        RelayedState { state, full_below, reset: update.full }
    }

    /// The update that brings a node at revision `base` to the relay's state: nothing when
    /// it is there already, or when it is ahead and the relay has not caught up yet (it
    /// never takes a node backwards, unless upstream restarted its log).
    pub fn update_for(&self, base: u64) -> Option<Update> {
        let revision = self.state.revision;
        let everything = || self.state.functions.values().cloned().collect::<Vec<_>>();
        if base == revision || (base > revision && !self.reset) {
            return None;
        }
        if base > revision || base < self.full_below {
            return Some(Update { revision, full: true, assignments: everything() });
        }
        let mut assignments: Vec<Assignment> = everything().into_iter().filter(|a| a.revision > base).collect();
        assignments.sort_by_key(|a| a.revision);
        Some(Update { revision, full: false, assignments })
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
    Json(serde_json::Error),
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
    serde_json::from_slice(body).map_err(FrameError::Json)
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
    fn a_relay_sends_changes_or_everything_and_never_takes_a_node_backwards() {
        // The relay restarted with what it had kept at revision 3.
        let kept = AppliedState::default().with(&Update {
            revision: 3,
            full: false,
            assignments: vec![assignment("a", 1, 1), assignment("b", 2, 3)],
        });
        let relay = RelayedState { state: kept, full_below: 3, reset: false };
        assert_eq!(relay.update_for(3), None, "a node that has it");
        assert_eq!(relay.update_for(5), None, "a node ahead waits for the relay to catch up");
        let everything = relay.update_for(1).unwrap();
        assert!(everything.full && everything.assignments.len() == 2, "below what the relay can diff: all of it");

        let relay = relay.with(&Update { revision: 5, full: false, assignments: vec![assignment("c", 1, 5)] });
        let changes = relay.update_for(3).unwrap();
        assert_eq!((changes.revision, changes.full), (5, false));
        assert_eq!(changes.assignments, [assignment("c", 1, 5)]);
        assert!(relay.update_for(2).unwrap().full);

        // Upstream restarted its log at 2: nodes ahead are taken to it, whole.
        let relay = relay.with(&Update { revision: 2, full: true, assignments: vec![assignment("a", 3, 2)] });
        let reset = relay.update_for(5).unwrap();
        assert_eq!((reset.revision, reset.full, reset.assignments.len()), (2, true, 1));
        let after = relay.with(&Update { revision: 4, full: false, assignments: vec![assignment("b", 1, 4)] });
        assert_eq!(after.update_for(9), None, "once upstream moves on, a node ahead waits again");
        assert_eq!(after.update_for(2).unwrap().assignments, [assignment("b", 1, 4)]);
    }

    #[test]
    fn relay_messages_round_trip() {
        let info = NodeInfo { name: "n1".into(), region: "eu".into(), location: (1.0, 2.0), listen: "h:1".into() };
        let messages = [
            NodeMessage::RelayHello { relay: info.clone(), applied: 4 },
            NodeMessage::Downstream {
                node: "n1".into(),
                event: DownstreamEvent::Connected { info, applied: 2, fingerprint: "ab".into() },
            },
            NodeMessage::Downstream { node: "n1".into(), event: DownstreamEvent::Disconnected },
        ];
        for message in messages {
            assert_eq!(decode_frame::<NodeMessage>(&encode_frame(&message)[4..]).unwrap(), message);
        }
        let frames = [
            ToRelay::Update(Update { revision: 1, full: false, assignments: vec![assignment("a", 1, 1)] }),
            ToRelay::Refuse { node: "n1".into(), reason: "no".into() },
        ];
        for frame in frames {
            assert_eq!(decode_frame::<ToRelay>(&encode_frame(&frame)[4..]).unwrap(), frame);
        }
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
