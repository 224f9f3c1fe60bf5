//! The decisions behind deploys and rollbacks, as pure functions over the store's records:
//! the next version number, route conflicts between functions, which version a rollback
//! goes to, and what a rollout sets. No I/O: the API runs these inside the store's transaction.

use tern_proto::rollout::{Candidate, RolloutRule};

use crate::store::{Active, Version};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    #[error(
        "route {route:?} is already served by function {owner:?}: remove it from one of the two tern.toml files \
         (a route belongs to one function)"
    )]
    RouteConflict { route: String, owner: String },
    #[error("function {0:?} has no versions: deploy it first")]
    UnknownFunction(String),
    #[error("function {function:?} has no version {wanted:?}: `tern versions {function}` lists them")]
    NoSuchVersion { function: String, wanted: String },
    #[error("function {0:?} has no version before the one it runs")]
    NothingToRollBackTo(String),
    #[error("{wanted:?} names more than one version of function {function:?}: give more digits")]
    Ambiguous { function: String, wanted: String },
    #[error(
        "version {version} is what function {function:?} runs already: a rollout needs another version as candidate \
         (to switch everyone, deploy it or `tern rollback --to`)"
    )]
    CandidateIsActive { function: String, version: u32 },
    #[error("function {0:?}: a rollout needs --version, unless it ends one (--percent 0 and no --header)")]
    NoCandidate(String),
}

/// The candidate a rollout of `function` sets, or `None` when `rule` sends no one to it
/// (0 percent, no header): that ends the rollout.
pub fn rollout_candidate(
    function: &str,
    versions: &[Version],
    active: &Active,
    wanted: Option<&str>,
    rule: RolloutRule,
) -> Result<Option<Candidate>, DeployError> {
    if rule.percent == 0 && rule.header.is_none() {
        return Ok(None);
    }
    let wanted = wanted.ok_or_else(|| DeployError::NoCandidate(function.into()))?;
    let target = rollback_target(function, versions, Some(active), Some(wanted))?;
    if target.number == active.version {
        return Err(DeployError::CandidateIsActive { function: function.into(), version: target.number });
    }
    Ok(Some(Candidate {
        version: target.number,
        bundle: target.bundle.clone(),
        signature: target.signature.clone(),
        rule,
    }))
}

/// The number the next version of a function gets.
pub fn next_number(versions: &[Version]) -> u32 {
    versions.iter().map(|v| v.number).max().unwrap_or(0) + 1
}

/// Refuses `routes` for `function` when another function already serves one of them.
pub fn check_routes(function: &str, routes: &[String], current: &[Active]) -> Result<(), DeployError> {
    for other in current.iter().filter(|a| a.function != function) {
        if let Some(route) = routes.iter().find(|r| other.routes.contains(r)) {
            return Err(DeployError::RouteConflict { route: route.clone(), owner: other.function.clone() });
        }
    }
    Ok(())
}

/// The version a rollback makes active: `to` (a version number, or at least 6 leading hex
/// digits of a bundle id), else the newest version older than the active one.
pub fn rollback_target<'a>(
    function: &str,
    versions: &'a [Version],
    active: Option<&Active>,
    to: Option<&str>,
) -> Result<&'a Version, DeployError> {
    if versions.is_empty() {
        return Err(DeployError::UnknownFunction(function.into()));
    }
    let no_such = |wanted: &str| DeployError::NoSuchVersion { function: function.into(), wanted: wanted.into() };
    match to {
        Some(wanted) => {
            if let Ok(number) = wanted.trim_start_matches('v').parse::<u32>() {
                return versions.iter().find(|v| v.number == number).ok_or_else(|| no_such(wanted));
            }
            if wanted.len() < 6 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(no_such(wanted));
            }
            let mut found = versions.iter().filter(|v| v.bundle.starts_with(&wanted.to_ascii_lowercase()));
            match (found.next(), found.next()) {
                (Some(v), None) => Ok(v),
                (None, _) => Err(no_such(wanted)),
                (Some(_), Some(_)) => Err(DeployError::Ambiguous { function: function.into(), wanted: wanted.into() }),
            }
        }
        None => {
            let current = active.map_or(u32::MAX, |a| a.version);
            versions
                .iter()
                .filter(|v| v.number < current)
                .max_by_key(|v| v.number)
                .ok_or_else(|| DeployError::NothingToRollBackTo(function.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(number: u32, bundle: &str) -> Version {
        Version { function: "f".into(), number, bundle: bundle.into(), signature: String::new(), created_ms: 0 }
    }

    fn active(function: &str, version: u32, routes: &[&str]) -> Active {
        Active {
            function: function.into(),
            version,
            bundle: String::new(),
            signature: String::new(),
            revision: 1,
            routes: routes.iter().map(|r| r.to_string()).collect(),
            placement: vec![],
            rollout: None,
        }
    }

    #[test]
    fn a_rollout_needs_another_version_and_zero_percent_ends_it() {
        let versions = [version(1, "aaaaaaaa"), version(2, "bbbbbbbb")];
        let current = Active { function: "f".into(), version: 2, ..active("f", 2, &[]) };
        let rule = |p| RolloutRule::new(p, None, None).unwrap();
        let c = rollout_candidate("f", &versions, &current, Some("1"), rule(10)).unwrap().unwrap();
        assert_eq!((c.version, c.bundle.as_str(), c.rule.percent), (1, "aaaaaaaa", 10));
        assert_eq!(rollout_candidate("f", &versions, &current, None, rule(0)), Ok(None));
        assert!(matches!(
            rollout_candidate("f", &versions, &current, Some("2"), rule(10)),
            Err(DeployError::CandidateIsActive { version: 2, .. })
        ));
        assert!(matches!(
            rollout_candidate("f", &versions, &current, None, rule(10)),
            Err(DeployError::NoCandidate(_))
        ));
        assert!(matches!(
            rollout_candidate("f", &versions, &current, Some("9"), rule(10)),
            Err(DeployError::NoSuchVersion { .. })
        ));
        let by_header = RolloutRule::new(0, Some("x-canary=1"), None).unwrap();
        assert!(rollout_candidate("f", &versions, &current, Some("1"), by_header).unwrap().is_some());
    }

    #[test]
    fn a_route_belongs_to_one_function() {
        let current = [active("api", 1, &["api.example.com/*"]), active("web", 1, &["example.com/*"])];
        assert_eq!(check_routes("api", &["api.example.com/*".into()], &current), Ok(()), "its own route");
        assert_eq!(
            check_routes("new", &["x.test/*".into(), "example.com/*".into()], &current),
            Err(DeployError::RouteConflict { route: "example.com/*".into(), owner: "web".into() })
        );
    }

    #[test]
    fn rollback_goes_to_the_version_before_the_active_one_or_where_it_is_told() {
        let versions = [version(1, "aaaaaa11"), version(2, "bbbbbb22"), version(3, "bbbbbb33")];
        let at = |n| Some(active("f", n, &[]));
        assert_eq!(rollback_target("f", &versions, at(3).as_ref(), None).unwrap().number, 2);
        assert_eq!(rollback_target("f", &versions, at(2).as_ref(), None).unwrap().number, 1);
        assert_eq!(
            rollback_target("f", &versions, at(1).as_ref(), None),
            Err(DeployError::NothingToRollBackTo("f".into()))
        );
        assert_eq!(rollback_target("f", &versions, at(1).as_ref(), Some("3")).unwrap().number, 3);
        assert_eq!(rollback_target("f", &versions, at(1).as_ref(), Some("v2")).unwrap().number, 2);
        assert_eq!(rollback_target("f", &versions, None, Some("AAAAAA")).unwrap().number, 1);
        assert!(matches!(rollback_target("f", &versions, None, Some("bbbbbb")), Err(DeployError::Ambiguous { .. })));
        assert!(matches!(rollback_target("f", &versions, None, Some("9")), Err(DeployError::NoSuchVersion { .. })));
        assert!(matches!(rollback_target("f", &versions, None, Some("zz")), Err(DeployError::NoSuchVersion { .. })));
        assert_eq!(rollback_target("g", &[], None, None), Err(DeployError::UnknownFunction("g".into())));
        assert_eq!(next_number(&versions), 4);
        assert_eq!(next_number(&[]), 1);
    }
}
