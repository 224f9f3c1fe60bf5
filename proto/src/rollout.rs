//! Rollouts: a function serves its active (stable) version and, to some requests, a
//! candidate version. Pure: the rule, and which version a request gets.
//!
//! A request gets the candidate when it carries the targeting header with its value, or
//! else when its client falls in the rollout's percentage. Clients are bucketed by SHA-256
//! of the function's name and a sticky key (the value of a configured request header, else
//! the client's address), so a client keeps its version across requests and across nodes,
//! and raising the percentage only moves clients from stable to candidate.

use std::sync::Arc;

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use crate::Bundle;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRule {
    /// Share of clients, 0 to 100, that get the candidate.
    pub percent: u8,
    /// A request header (lower case) and value that always get the candidate.
    #[serde(default)]
    pub header: Option<(String, String)>,
    /// The request header (lower case) whose value keys stickiness; default: the client's
    /// address.
    #[serde(default)]
    pub sticky: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RolloutError {
    #[error("percent must be 0 to 100, not {0}")]
    Percent(u32),
    #[error("{0:?} is not NAME=VALUE with a valid header name")]
    Header(String),
    #[error("{0:?} is not a valid header name")]
    Sticky(String),
}

impl RolloutRule {
    /// A rule from its user-facing parts: `header` as `NAME=VALUE`.
    pub fn new(percent: u32, header: Option<&str>, sticky: Option<&str>) -> Result<Self, RolloutError> {
        if percent > 100 {
            return Err(RolloutError::Percent(percent));
        }
        let header = header
            .map(|h| {
                let (name, value) = h.split_once('=').ok_or_else(|| RolloutError::Header(h.into()))?;
                let name = name.trim().to_ascii_lowercase();
                if !valid_header_name(&name) || value.is_empty() {
                    return Err(RolloutError::Header(h.into()));
                }
                Ok((name, value.to_string()))
            })
            .transpose()?;
        let sticky = sticky
            .map(|s| {
                let name = s.trim().to_ascii_lowercase();
                if valid_header_name(&name) { Ok(name) } else { Err(RolloutError::Sticky(s.into())) }
            })
            .transpose()?;
        Ok(Self { percent: percent as u8, header, sticky })
    }

    /// Whether a request gets the candidate, given a lookup of its headers (by lower-case
    /// name) and its client's address.
    pub fn picks_candidate<'a>(&self, function: &str, header: impl Fn(&str) -> Option<&'a str>, client: &str) -> bool {
        if let Some((name, value)) = &self.header
            && header(name) == Some(value.as_str())
        {
            return true;
        }
        let key = self.sticky.as_deref().and_then(&header).unwrap_or(client);
        bucket(function, key) < u64::from(self.percent)
    }
}

/// The client's bucket, 0 to 99.
pub fn bucket(function: &str, key: &str) -> u64 {
    let hash = digest(&SHA256, [function.as_bytes(), b"\0", key.as_bytes()].concat().as_slice());
    u64::from_be_bytes(hash.as_ref()[..8].try_into().expect("8 bytes")) % 100
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The candidate of a rollout as the control plane assigns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub version: u32,
    /// Bundle id (64 hex digits) and its signature (128 hex digits).
    pub bundle: String,
    pub signature: String,
    pub rule: RolloutRule,
}

/// What a node serves for one function: its stable bundle and, during a rollout, the
/// candidate and the rule between them.
#[derive(Clone)]
pub struct Serving {
    pub stable: Arc<Bundle>,
    pub candidate: Option<(Arc<Bundle>, RolloutRule)>,
}

impl From<Arc<Bundle>> for Serving {
    fn from(stable: Arc<Bundle>) -> Self {
        Self { stable, candidate: None }
    }
}

impl Serving {
    /// The bundle that answers a request.
    pub fn pick<'a>(&self, header: impl Fn(&str) -> Option<&'a str>, client: &str) -> &Arc<Bundle> {
        match &self.candidate {
            Some((bundle, rule)) if rule.picks_candidate(self.stable.name(), header, client) => bundle,
            _ => &self.stable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_sticky_and_the_share_is_close_to_the_percentage() {
        let rule = RolloutRule::new(20, None, None).unwrap();
        let none = |_: &str| None;
        let picked =
            (0..10_000).filter(|i| rule.picks_candidate("f", none, &format!("10.0.{}.{}", i / 256, i % 256))).count();
        assert!((1_700..2_300).contains(&picked), "{picked} of 10000 at 20%");
        for i in 0..100 {
            let client = format!("192.0.2.{i}");
            let first = rule.picks_candidate("f", none, &client);
            assert!((0..5).all(|_| rule.picks_candidate("f", none, &client) == first), "sticky");
            // Raising the percentage never moves a client back to stable.
            let wider = RolloutRule::new(50, None, None).unwrap();
            assert!(!first || wider.picks_candidate("f", none, &client));
        }
        assert!(!(0..1000).any(|i| RolloutRule::new(0, None, None).unwrap().picks_candidate(
            "f",
            none,
            &i.to_string()
        )));
        assert!((0..1000).all(|i| RolloutRule::new(100, None, None).unwrap().picks_candidate(
            "f",
            none,
            &i.to_string()
        )));
    }

    #[test]
    fn the_targeting_header_wins_and_the_sticky_header_keys_buckets() {
        let rule = RolloutRule::new(0, Some("X-Canary=yes"), Some("X-User")).unwrap();
        assert_eq!(rule.header, Some(("x-canary".into(), "yes".into())));
        let canary = |name: &str| (name == "x-canary").then_some("yes");
        assert!(rule.picks_candidate("f", canary, "1.2.3.4"));
        let other = |name: &str| (name == "x-canary").then_some("no");
        assert!(!rule.picks_candidate("f", other, "1.2.3.4"));
        // With a sticky header, the client's address does not matter.
        let half = RolloutRule::new(50, None, Some("x-user")).unwrap();
        let user = |name: &str| (name == "x-user").then_some("alice");
        let first = half.picks_candidate("f", user, "1.1.1.1");
        assert!((0..50).all(|i| half.picks_candidate("f", user, &format!("10.0.0.{i}")) == first));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        assert_eq!(RolloutRule::new(101, None, None), Err(RolloutError::Percent(101)));
        assert!(matches!(RolloutRule::new(5, Some("novalue"), None), Err(RolloutError::Header(_))));
        assert!(matches!(RolloutRule::new(5, Some("bad name=1"), None), Err(RolloutError::Header(_))));
        assert!(matches!(RolloutRule::new(5, None, Some("a b")), Err(RolloutError::Sticky(_))));
    }
}
