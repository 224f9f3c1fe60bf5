//! Resolves bare specifiers (`import { Hono } from "hono"`, `"hono/jwt"`, `"@scope/pkg"`) to
//! files of the bundle, the way Node and bundlers do for code written for Workers: look for
//! `node_modules/NAME` in the importing file's folder and each folder above it, then follow
//! the package's `package.json` `exports` with the conditions `workerd`, `worker`,
//! `browser`, `import`, `module`, `default` (in that order of preference); without
//! `exports`, use `module`, then `main`, then `index.js`.
//!
//! Pure: it sees the bundle only through a lookup function. `node:` built-ins are refused by
//! the caller, not here.

use serde_json::Value;

/// Export conditions Tern satisfies, most preferred first (as wrangler's esbuild does).
pub const CONDITIONS: &[&str] = &["workerd", "worker", "browser", "import", "module", "default"];

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error(
        "package {0:?} is not installed: no node_modules/{0} above {1} (run npm install; list it in package.json dependencies)"
    )]
    NotInstalled(String, String),
    #[error("{0}/package.json is not valid JSON: {1}")]
    BadPackageJson(String, String),
    #[error("package {package:?} does not export {subpath:?} for conditions {CONDITIONS:?}")]
    NotExported { package: String, subpath: String },
    #[error("{0:?} resolved to {1}, which is not in the bundle")]
    Missing(String, String),
}

/// Splits `@scope/name/sub/path` into (`@scope/name`, `./sub/path`) and `name` into (`name`, `.`).
pub fn split_specifier(specifier: &str) -> Option<(&str, String)> {
    let mut slashes = specifier.match_indices('/').map(|(i, _)| i);
    let name_end = if specifier.starts_with('@') { slashes.nth(1) } else { slashes.next() };
    let (name, rest) = match name_end {
        Some(i) => (&specifier[..i], format!(".{}", &specifier[i..])),
        None => (specifier, ".".to_string()),
    };
    let valid =
        !name.is_empty() && !name.starts_with('.') && !name.contains('\\') && !rest.split('/').any(|s| s == "..");
    valid.then_some((name, rest))
}

/// Resolves `specifier` imported from bundle file `referrer` to a bundle path.
pub fn resolve(
    specifier: &str,
    referrer: &str,
    file: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<String, PackageError> {
    let (name, subpath) = split_specifier(specifier)
        .ok_or_else(|| PackageError::NotInstalled(specifier.to_string(), referrer.to_string()))?;
    let mut dir = referrer.rsplit_once('/').map_or("", |(d, _)| d).to_string();
    loop {
        let root = if dir.is_empty() { format!("node_modules/{name}") } else { format!("{dir}/node_modules/{name}") };
        if let Some(json) = file(&format!("{root}/package.json")) {
            let manifest: Value =
                serde_json::from_slice(&json).map_err(|e| PackageError::BadPackageJson(root.clone(), e.to_string()))?;
            let target = entry(&manifest, &subpath)
                .ok_or_else(|| PackageError::NotExported { package: name.to_string(), subpath: subpath.clone() })?;
            return locate(&root, &target, file)
                .ok_or_else(|| PackageError::Missing(specifier.to_string(), format!("{root}/{target}")));
        }
        if dir.is_empty() {
            return Err(PackageError::NotInstalled(name.to_string(), referrer.to_string()));
        }
        dir = dir.rsplit_once('/').map_or(String::new(), |(d, _)| d.to_string());
    }
}

/// The file (relative to the package root, `./`-prefixed) that `subpath` names.
fn entry(manifest: &Value, subpath: &str) -> Option<String> {
    if let Some(exports) = manifest.get("exports") {
        return export_target(exports, subpath);
    }
    if subpath == "." {
        for field in ["module", "main"] {
            if let Some(Value::String(s)) = manifest.get(field) {
                return Some(dot_slash(s));
            }
        }
        return Some("./index.js".to_string());
    }
    Some(subpath.to_string())
}

fn dot_slash(s: &str) -> String {
    if s.starts_with("./") { s.to_string() } else { format!("./{}", s.trim_start_matches('/')) }
}

fn export_target(exports: &Value, subpath: &str) -> Option<String> {
    // A string, an array, or an object of conditions is the export of "." alone.
    let is_subpath_map = exports.as_object().is_some_and(|m| m.keys().any(|k| k.starts_with('.')));
    if !is_subpath_map {
        return (subpath == ".").then(|| conditional(exports, None)).flatten();
    }
    let map = exports.as_object()?;
    if let Some(target) = map.get(subpath) {
        return conditional(target, None);
    }
    // Patterns: "./features/*": "./src/features/*.js"; the longest matching prefix wins.
    let mut best: Option<(&str, &Value, String)> = None;
    for (key, target) in map {
        if let Some((prefix, suffix)) = key.split_once('*')
            && subpath.starts_with(prefix)
            && subpath.ends_with(suffix)
            && subpath.len() >= prefix.len() + suffix.len()
        {
            let star = subpath[prefix.len()..subpath.len() - suffix.len()].to_string();
            if best.as_ref().is_none_or(|(k, _, _)| prefix.len() > k.len()) {
                best = Some((prefix, target, star));
            }
        }
    }
    let (_, target, star) = best?;
    conditional(target, Some(&star))
}

fn conditional(target: &Value, star: Option<&str>) -> Option<String> {
    match target {
        Value::String(s) => Some(match star {
            Some(star) => s.replace('*', star),
            None => s.clone(),
        }),
        Value::Array(options) => options.iter().find_map(|o| conditional(o, star)),
        Value::Object(conditions) => {
            CONDITIONS.iter().find_map(|c| conditions.get(*c).and_then(|t| conditional(t, star)))
        }
        _ => None,
    }
}

/// The bundle path of `target` inside `root`, trying the extensions Node would.
fn locate(root: &str, target: &str, file: &dyn Fn(&str) -> Option<Vec<u8>>) -> Option<String> {
    let base = format!("{root}/{}", target.trim_start_matches("./"));
    let base = base.trim_end_matches('/');
    [
        base.to_string(),
        format!("{base}.js"),
        format!("{base}.mjs"),
        format!("{base}/index.js"),
        format!("{base}/index.mjs"),
    ]
    .into_iter()
    .find(|candidate| file(candidate).is_some())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn files(list: &[(&str, &str)]) -> impl Fn(&str) -> Option<Vec<u8>> {
        let map: HashMap<String, Vec<u8>> = list.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        move |p: &str| map.get(p).cloned()
    }

    #[test]
    fn names_and_subpaths_split_like_node() {
        assert_eq!(split_specifier("hono"), Some(("hono", ".".to_string())));
        assert_eq!(split_specifier("hono/jwt"), Some(("hono", "./jwt".to_string())));
        assert_eq!(split_specifier("@scope/pkg/a/b"), Some(("@scope/pkg", "./a/b".to_string())));
        assert_eq!(split_specifier("pkg/../../etc"), None);
    }

    #[test]
    fn exports_with_conditions_prefer_worker_builds() {
        let f = files(&[
            (
                "node_modules/hono/package.json",
                r#"{"exports":{".":{"types":"./d.ts","import":"./dist/index.js","require":"./cjs/index.js"},"./jwt":{"import":"./dist/jwt/index.js"}}}"#,
            ),
            ("node_modules/hono/dist/index.js", ""),
            ("node_modules/hono/dist/jwt/index.js", ""),
            (
                "node_modules/w/package.json",
                r#"{"exports":{"node":"./node.js","workerd":"./workerd.js","default":"./index.js"}}"#,
            ),
            ("node_modules/w/workerd.js", ""),
        ]);
        assert_eq!(resolve("hono", "src/index.js", &f).unwrap(), "node_modules/hono/dist/index.js");
        assert_eq!(resolve("hono/jwt", "index.js", &f).unwrap(), "node_modules/hono/dist/jwt/index.js");
        assert_eq!(resolve("w", "index.js", &f).unwrap(), "node_modules/w/workerd.js");
        assert!(matches!(resolve("hono/secret", "index.js", &f), Err(PackageError::NotExported { .. })));
    }

    #[test]
    fn export_patterns_and_legacy_fields() {
        let f = files(&[
            ("node_modules/p/package.json", r#"{"exports":{"./features/*":"./src/features/*.js"}}"#),
            ("node_modules/p/src/features/x.js", ""),
            ("node_modules/old/package.json", r#"{"main":"lib/main"}"#),
            ("node_modules/old/lib/main.js", ""),
            ("node_modules/old/lib/util.js", ""),
            ("node_modules/bare/package.json", r#"{}"#),
            ("node_modules/bare/index.js", ""),
        ]);
        assert_eq!(resolve("p/features/x", "index.js", &f).unwrap(), "node_modules/p/src/features/x.js");
        assert_eq!(resolve("old", "index.js", &f).unwrap(), "node_modules/old/lib/main.js");
        assert_eq!(resolve("old/lib/util", "index.js", &f).unwrap(), "node_modules/old/lib/util.js");
        assert_eq!(resolve("bare", "index.js", &f).unwrap(), "node_modules/bare/index.js");
    }

    #[test]
    fn nested_node_modules_win_over_the_root() {
        let f = files(&[
            ("node_modules/a/package.json", r#"{"main":"a.js"}"#),
            ("node_modules/a/a.js", ""),
            ("node_modules/a/node_modules/dep/package.json", r#"{"main":"nested.js"}"#),
            ("node_modules/a/node_modules/dep/nested.js", ""),
            ("node_modules/dep/package.json", r#"{"main":"root.js"}"#),
            ("node_modules/dep/root.js", ""),
        ]);
        assert_eq!(resolve("dep", "node_modules/a/a.js", &f).unwrap(), "node_modules/a/node_modules/dep/nested.js");
        assert_eq!(resolve("dep", "src/index.js", &f).unwrap(), "node_modules/dep/root.js");
    }

    #[test]
    fn missing_packages_say_how_to_fix_it() {
        let e = resolve("hono", "src/index.js", &files(&[])).unwrap_err();
        assert!(e.to_string().contains("npm install"), "{e}");
        let bad = files(&[("node_modules/x/package.json", "{")]);
        assert!(matches!(resolve("x", "index.js", &bad), Err(PackageError::BadPackageJson(..))));
    }
}
