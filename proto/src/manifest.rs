//! The `tern.toml` manifest of a function project, in the spirit of `wrangler.toml`.
//!
//! ```toml
//! name = "hello"                      # required: [a-z0-9-], 1-63 chars; also `NAME.localhost`
//! main = "src/index.js"               # required: the entry module, relative to the project
//! compatibility_date = "2026-11-01"   # optional, YYYY-MM-DD
//! routes = ["api.example.com/v1/*"]   # optional: see `route`
//! allow_eval = false                  # optional: true lets `eval`/`new Function` compile strings
//! [vars]                              # optional: reach the function as `env.KEY`
//! GREETING = "hi"                     # strings stay strings; other TOML values become JSON
//! [limits]                            # optional: see `limits`
//! cpu_ms = 50
//! [egress]                            # optional: private destinations this function may fetch
//! allow = ["10.1.2.3", "192.168.0.0/16"]   # addresses or CIDR ranges
//! [placement]                         # optional: where the router may run it
//! regions = ["eu-west", "eu-north"]   # only nodes of these regions, the nearest of them
//! # region = "eu-west"                # or pinned: always this region ("near my database")
//! ```
//! Unknown keys are refused (a typo should not silently do nothing); errors carry the line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::{LimitError, Limits, RawLimits};
use crate::route::{RoutePattern, RoutePatternError};

/// A validated manifest. It serializes (into bundle ids and the wire form of bundles) and
/// deserializes back only from that form; users write `tern.toml`, read by [`Manifest::parse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub main: String,
    pub compatibility_date: Option<String>,
    #[serde(serialize_with = "serialize_routes", deserialize_with = "deserialize_routes")]
    pub routes: Vec<RoutePattern>,
    pub vars: BTreeMap<String, serde_json::Value>,
    pub limits: Limits,
    /// Code generation from strings (`eval`, `new Function`) is refused unless this is set,
    /// as on Workers.
    pub allow_eval: bool,
    /// Private, loopback or link-local ranges this function's `fetch` may reach anyway.
    pub egress_allow: Vec<ipnet::IpNet>,
    /// The regions whose nodes may serve it; empty: any. Left out of the serialized form
    /// when empty, so that bundles made before placement existed keep their ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    regions: Option<Vec<String>>,
    region: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    #[serde(default)]
    allow: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    main: String,
    compatibility_date: Option<String>,
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    vars: toml::Table,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    allow_eval: bool,
    #[serde(default)]
    egress: RawEgress,
    #[serde(default)]
    placement: RawPlacement,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("tern.toml: {0}")]
    Toml(String),
    #[error("tern.toml: name {0:?} must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'")]
    BadName(String),
    #[error("tern.toml: main {0:?} must be a relative path inside the project (no '..', no leading '/')")]
    BadMain(String),
    #[error("tern.toml: compatibility_date {0:?} must be a date written YYYY-MM-DD")]
    BadDate(String),
    // Not a `#[from]` source: the message holds it already, and printed as a chain it
    // would say it twice.
    #[error("tern.toml: {0}")]
    BadRoute(RoutePatternError),
    #[error("tern.toml: [vars] {0}: {1}")]
    BadVar(String, String),
    #[error(transparent)]
    BadLimit(#[from] LimitError),
    #[error("tern.toml: [egress] allow: {0:?} is neither an IP address nor a CIDR range (like 10.0.0.0/8)")]
    BadEgress(String),
    #[error("tern.toml: [placement] {0}")]
    BadPlacement(String),
}

impl From<RoutePatternError> for ManifestError {
    fn from(e: RoutePatternError) -> Self {
        Self::BadRoute(e)
    }
}

impl Manifest {
    /// Parses and validates `tern.toml` text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Toml(one_line(&e)))?;
        let mut manifest = Self::from_parts(raw.name, raw.main, raw.compatibility_date, &raw.routes, raw.vars)?;
        manifest.limits = raw.limits.resolve()?;
        manifest.allow_eval = raw.allow_eval;
        manifest.egress_allow = raw
            .egress
            .allow
            .iter()
            .map(|a| {
                a.parse::<ipnet::IpNet>()
                    .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| ManifestError::BadEgress(a.clone()))
            })
            .collect::<Result<_, _>>()?;
        manifest.placement = raw.placement.resolve()?;
        Ok(manifest)
    }

    /// A manifest for a single-file function (no `tern.toml`): name from the file stem.
    pub fn for_single_file(name: &str, main: &str) -> Result<Self, ManifestError> {
        Self::from_parts(name.to_string(), main.to_string(), None, &[], toml::Table::new())
    }

    fn from_parts(
        name: String,
        main: String,
        compatibility_date: Option<String>,
        routes: &[String],
        vars: toml::Table,
    ) -> Result<Self, ManifestError> {
        if !valid_name(&name) {
            return Err(ManifestError::BadName(name));
        }
        let main = main.trim_start_matches("./").to_string();
        if main.is_empty() || main.starts_with('/') || main.split('/').any(|p| p == "..") {
            return Err(ManifestError::BadMain(main));
        }
        if let Some(date) = &compatibility_date
            && !valid_date(date)
        {
            return Err(ManifestError::BadDate(date.clone()));
        }
        let routes = routes.iter().map(|r| RoutePattern::parse(r)).collect::<Result<Vec<_>, _>>()?;
        let vars = vars
            .into_iter()
            .map(|(k, v)| {
                let json = serde_json::to_value(&v).map_err(|e| ManifestError::BadVar(k.clone(), e.to_string()))?;
                Ok((k, json))
            })
            .collect::<Result<_, ManifestError>>()?;
        Ok(Self {
            name,
            main,
            compatibility_date,
            routes,
            vars,
            limits: Limits::default(),
            allow_eval: false,
            egress_allow: Vec::new(),
            placement: Vec::new(),
        })
    }
}

impl RawPlacement {
    /// `region` pins one region, `regions` allows several; not both, not an empty list.
    fn resolve(self) -> Result<Vec<String>, ManifestError> {
        let bad = |m: String| Err(ManifestError::BadPlacement(m));
        let regions = match (self.regions, self.region) {
            (Some(_), Some(_)) => return bad("give either `region` (pinned) or `regions` (allowed), not both".into()),
            (Some(regions), None) if regions.is_empty() => {
                return bad("`regions` is empty: leave [placement] out to run anywhere".into());
            }
            (Some(regions), None) => regions,
            (None, Some(region)) => vec![region],
            (None, None) => return Ok(Vec::new()),
        };
        for region in &regions {
            if !valid_name(region) {
                return bad(format!(
                    "region {region:?} must be 1-63 characters of a-z, 0-9 and '-', as `tern node --region`"
                ));
            }
        }
        Ok(regions)
    }
}

/// toml's errors span several lines with a source excerpt; keep the first line plus position.
fn one_line(e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg,
    }
}

pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn valid_date(date: &str) -> bool {
    let parts: Vec<&str> = date.split('-').collect();
    matches!(parts.as_slice(), [y, m, d]
        if y.len() == 4 && m.len() == 2 && d.len() == 2
        && [y, m, d].iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()))
        && (1..=12).contains(&m.parse::<u8>().unwrap_or(0))
        && (1..=31).contains(&d.parse::<u8>().unwrap_or(0)))
}

fn deserialize_routes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RoutePattern>, D::Error> {
    let raw: Vec<String> = Vec::deserialize(d)?;
    raw.iter().map(|r| RoutePattern::parse(r).map_err(serde::de::Error::custom)).collect()
}

fn serialize_routes<S: serde::Serializer>(routes: &[RoutePattern], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(routes.iter().map(RoutePattern::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_manifest_parses() {
        let m = Manifest::parse(
            r#"
            name = "api"
            main = "./src/index.js"
            compatibility_date = "2026-11-01"
            routes = ["api.example.com/v1/*"]
            [vars]
            GREETING = "hi"
            RETRIES = 3
            "#,
        )
        .unwrap();
        assert_eq!(m.name, "api");
        assert_eq!(m.main, "src/index.js");
        assert_eq!(m.routes[0].as_str(), "api.example.com/v1/*");
        assert_eq!(m.vars["GREETING"], serde_json::json!("hi"));
        assert_eq!(m.vars["RETRIES"], serde_json::json!(3));
    }

    #[test]
    fn limits_and_allow_eval_parse_and_default() {
        let m = Manifest::parse("name = \"a\"\nmain = \"a.js\"\nallow_eval = true\n[limits]\ncpu_ms = 10\n").unwrap();
        assert!(m.allow_eval);
        assert_eq!(m.limits.cpu_per_request, std::time::Duration::from_millis(10));
        assert_eq!(m.limits.memory_bytes, Limits::default().memory_bytes);
        let m = Manifest::parse("name = \"a\"\nmain = \"a.js\"\n").unwrap();
        assert!(!m.allow_eval);
        assert_eq!(m.limits, Limits::default());
        let e = Manifest::parse("name = \"a\"\nmain = \"a.js\"\n[limits]\ncpu = 10\n").unwrap_err();
        assert!(e.to_string().contains("cpu"), "{e}");
    }

    #[test]
    fn egress_allowances_are_addresses_or_ranges() {
        let m =
            Manifest::parse("name = \"a\"\nmain = \"a.js\"\n[egress]\nallow = [\"10.1.2.3\", \"192.168.0.0/16\"]\n")
                .unwrap();
        assert_eq!(m.egress_allow.len(), 2);
        assert_eq!(m.egress_allow[0].to_string(), "10.1.2.3/32");
        let e = Manifest::parse("name = \"a\"\nmain = \"a.js\"\n[egress]\nallow = [\"db.internal\"]\n").unwrap_err();
        assert!(e.to_string().contains("db.internal"), "{e}");
    }

    #[test]
    fn placement_pins_or_allows_regions() {
        let base = "name = \"a\"\nmain = \"a.js\"\n";
        assert!(Manifest::parse(base).unwrap().placement.is_empty());
        let m = Manifest::parse(&format!("{base}[placement]\nregion = \"eu-west\"\n")).unwrap();
        assert_eq!(m.placement, ["eu-west"]);
        let m = Manifest::parse(&format!("{base}[placement]\nregions = [\"eu-west\", \"us-east\"]\n")).unwrap();
        assert_eq!(m.placement, ["eu-west", "us-east"]);
        for bad in ["region = \"EU\"", "regions = []", "region = \"a\"\nregions = [\"b\"]", "zone = \"a\""] {
            let e = Manifest::parse(&format!("{base}[placement]\n{bad}\n")).unwrap_err();
            assert!(e.to_string().contains("placement") || e.to_string().contains("zone"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_manifest_without_placement_serializes_as_before() {
        let m = Manifest::parse("name = \"a\"\nmain = \"a.js\"\n").unwrap();
        assert!(!serde_json::to_string(&m).unwrap().contains("placement"));
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = Manifest::parse("name = \"a\"\nmain = \"a.js\"\nroute = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("route"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(matches!(Manifest::parse("name = \"Bad_Name\"\nmain = \"a.js\""), Err(ManifestError::BadName(_))));
        assert!(matches!(Manifest::parse("name = \"a\"\nmain = \"../a.js\""), Err(ManifestError::BadMain(_))));
        assert!(matches!(
            Manifest::parse("name = \"a\"\nmain = \"a.js\"\ncompatibility_date = \"2026-13-01\""),
            Err(ManifestError::BadDate(_))
        ));
        assert!(matches!(
            Manifest::parse("name = \"a\"\nmain = \"a.js\"\nroutes = [\"http://x/*\"]"),
            Err(ManifestError::BadRoute(_))
        ));
        assert!(matches!(Manifest::parse("name = \"a\""), Err(ManifestError::Toml(_))));
    }
}
