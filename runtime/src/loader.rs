//! Resolves and loads a function's modules from its in-memory [`Bundle`], never from disk.
//!
//! Modules live under `file:///` with the project's own relative paths, so stack traces and
//! load errors name `src/index.js:3:5` as the user wrote it. Following the Workers module
//! rules, non-JS modules import without attributes: JSON as its parsed value, text as a
//! string, `.bin` as an `ArrayBuffer`, `.wasm` as a compiled `WebAssembly.Module`. JSON
//! imported `with { type: "json" }` goes through the engine's own JSON modules. Bare
//! specifiers resolve to npm packages in the bundle's `node_modules` ([`crate::packages`]).
//! The runtime's own modules ([`RUNTIME_MODULES`], `cloudflare:workers`) resolve to
//! themselves and deno_core builds them from the extension; other schemes are refused.

use std::sync::Arc;

use deno_core::{
    ModuleLoadOptions, ModuleLoadReferrer, ModuleLoadResponse, ModuleLoader, ModuleResolveResponse, ModuleSource,
    ModuleSourceCode, ModuleSpecifier, ModuleType, RequestedModuleType, ResolutionKind,
};
use deno_error::JsErrorBox;
use tern_proto::{Bundle, ModuleKind, ModulePath};

use crate::{code_cache, packages};

pub use tern_js_api::{MODULE_ROOT, RUNTIME_MODULES};

/// Loads from the bundle it is bound to. An isolate is booted (with its loader) before it
/// knows which function it will run, so the bundle is given later, once, by [`Self::bind`];
/// until then nothing can be imported.
#[derive(Default)]
pub struct BundleModuleLoader {
    bundle: std::cell::OnceCell<Arc<Bundle>>,
}

impl BundleModuleLoader {
    pub fn new(bundle: Arc<Bundle>) -> Self {
        let loader = Self::default();
        loader.bind(bundle);
        loader
    }

    /// Binds the loader to the function it loads for; a second call is ignored.
    pub fn bind(&self, bundle: Arc<Bundle>) {
        let _ = self.bundle.set(bundle);
    }

    fn modules(&self) -> Option<&Bundle> {
        self.bundle.get().map(|b| &**b)
    }

    pub fn main_specifier(bundle: &Bundle) -> ModuleSpecifier {
        ModuleSpecifier::parse(&format!("{MODULE_ROOT}{}", bundle.main_path())).expect("module paths are URL-safe")
    }
}

/// The bundle path of a module URL, if it is one of ours.
pub fn bundle_path(specifier: &ModuleSpecifier) -> Option<ModulePath> {
    let path = specifier.as_str().strip_prefix(MODULE_ROOT)?;
    let decoded = percent_decode(path)?;
    ModulePath::new(&decoded).ok()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The empty module every isolate evaluates at boot (`isolate::warm_up_modules`), before
/// its loader is bound to a function. Once it is, the module's scheme is refused like any
/// other, so no function can import it.
pub(crate) const WARM_UP_MODULE: &str = "tern:warm-up";

/// Why a specifier with a URL scheme (`node:fs`, `https://…`, `ext:core/ops`) cannot be
/// imported; None for bare package names and paths, which never hold a scheme (npm package
/// names have no colon).
fn refused_scheme(specifier: &str) -> Option<&'static str> {
    let (scheme, _) = specifier.split_once(':')?;
    let is_scheme = scheme.len() > 1
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme {
        return None;
    }
    Some(match scheme {
        "node" => "Node.js built-in modules are not available in Tern functions",
        "cloudflare" => "of Cloudflare's runtime modules Tern provides only \"cloudflare:workers\"",
        "npm" | "jsr" => {
            "npm: and jsr: specifiers are not resolved: install the package with npm and import it by name"
        }
        "ext" => "the runtime's internal modules cannot be imported",
        _ => "only the function's own files and its npm packages can be imported",
    })
}

impl ModuleLoader for BundleModuleLoader {
    fn resolve(&self, specifier: &str, referrer: &str, _kind: ResolutionKind) -> ModuleResolveResponse {
        let is_path = specifier.starts_with("./") || specifier.starts_with("../") || specifier.starts_with('/');
        if is_path || specifier.starts_with(MODULE_ROOT) {
            return deno_core::resolve_import(specifier, referrer).map_err(JsErrorBox::from_err);
        }
        if RUNTIME_MODULES.contains(&specifier) || (specifier == WARM_UP_MODULE && self.bundle.get().is_none()) {
            return ModuleSpecifier::parse(specifier).map_err(JsErrorBox::from_err);
        }
        let from = display_specifier(referrer);
        if let Some(why) = refused_scheme(specifier) {
            return Err(JsErrorBox::type_error(format!("cannot import {specifier:?} from {from}: {why}")));
        }
        let lookup = |path: &str| {
            let path = ModulePath::new(path).ok()?;
            self.modules()?.modules.get(&path).map(|m| m.bytes.to_vec())
        };
        let path = packages::resolve(specifier, from, &lookup)
            .map_err(|e| JsErrorBox::type_error(format!("cannot import {specifier:?} from {from}: {e}")))?;
        ModuleSpecifier::parse(&format!("{MODULE_ROOT}{path}")).map_err(JsErrorBox::from_err)
    }

    fn load(
        &self,
        specifier: &ModuleSpecifier,
        referrer: Option<&ModuleLoadReferrer>,
        options: ModuleLoadOptions,
    ) -> ModuleLoadResponse {
        ModuleLoadResponse::Sync(self.load_sync(specifier, referrer, options.requested_module_type))
    }
}

impl BundleModuleLoader {
    fn load_sync(
        &self,
        specifier: &ModuleSpecifier,
        referrer: Option<&ModuleLoadReferrer>,
        requested: RequestedModuleType,
    ) -> Result<ModuleSource, JsErrorBox> {
        let bundle = self.modules();
        let module = bundle_path(specifier).and_then(|p| bundle?.modules.get(&p).map(|m| (p, m)));
        let (Some(bundle), Some((path, module))) = (bundle, module) else {
            let from = referrer
                .map(|r| format!(" (imported from {}:{})", display_specifier(r.specifier.as_str()), r.line_number))
                .unwrap_or_default();
            return Err(JsErrorBox::type_error(format!(
                "module not found: {}{from}",
                display_specifier(specifier.as_str())
            )));
        };
        let text = || {
            std::str::from_utf8(&module.bytes)
                .map(str::to_owned)
                .map_err(|e| JsErrorBox::type_error(format!("{path}: not valid UTF-8: {e}")))
        };
        let (module_type, code) = match (module.kind, &requested) {
            (ModuleKind::Json, RequestedModuleType::Json) => (ModuleType::Json, text()?),
            (_, RequestedModuleType::Json) => {
                return Err(JsErrorBox::type_error(format!("{path} is not a JSON module but was imported as one")));
            }
            (ModuleKind::EsModule, _) => (ModuleType::JavaScript, text()?),
            (ModuleKind::Json, _) => {
                let source = text()?;
                // Validate here so the error names the file, then let the engine parse it.
                serde_json::from_str::<serde_json::Value>(&source).map_err(|e| {
                    JsErrorBox::generic(format!("SyntaxError: {path}:{}:{}: {e}", e.line(), e.column()))
                })?;
                (ModuleType::JavaScript, format!("export default JSON.parse({});", js_string(&source)))
            }
            (ModuleKind::Text, _) => (ModuleType::JavaScript, format!("export default {};", js_string(&text()?))),
            (ModuleKind::Data, _) => (
                ModuleType::JavaScript,
                format!("export default globalThis.__ternModuleBytes({}).buffer;", js_string(path.as_str())),
            ),
            // A WASI program's main module is compiled by the WASI runner (js/20_wasi.js),
            // prepared for one instance serving every request.
            (ModuleKind::Wasm, _) if path == bundle.main_path() => (ModuleType::JavaScript, "export {};".to_string()),
            (ModuleKind::Wasm, _) => (
                ModuleType::JavaScript,
                format!(
                    "export default new WebAssembly.Module(globalThis.__ternModuleBytes({}));",
                    js_string(path.as_str())
                ),
            ),
        };
        // Compiled JavaScript is cached by the engine under a key derived from its source;
        // the salt keeps tenants' keys unpredictable (see `code_cache`).
        let code = match module_type {
            ModuleType::JavaScript => code_cache::salted(code, bundle.id(), &path),
            _ => code,
        };
        Ok(ModuleSource::new(module_type, ModuleSourceCode::String(code.into()), specifier, None))
    }
}

/// A JS string literal for any text.
fn js_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// `file:///src/a.js` → `src/a.js`, for messages.
pub fn display_specifier(specifier: &str) -> &str {
    specifier.strip_prefix(MODULE_ROOT).unwrap_or(specifier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::Manifest;

    fn bundle() -> Arc<Bundle> {
        let manifest = Manifest::for_single_file("f", "src/index.js").unwrap();
        Arc::new(
            Bundle::new(
                manifest,
                [
                    ("src/index.js".to_string(), b"import './lib/a.js'".to_vec()),
                    ("src/lib/a.js".to_string(), b"export const a = 1".to_vec()),
                    ("data.json".to_string(), b"{\"x\": 1}".to_vec()),
                    ("bad.json".to_string(), b"{\"x\": ".to_vec()),
                    ("page.html".to_string(), b"<p>\"hi\"</p>".to_vec()),
                ],
            )
            .unwrap(),
        )
    }

    fn load(loader: &BundleModuleLoader, spec: &str, requested: RequestedModuleType) -> Result<String, String> {
        let spec = ModuleSpecifier::parse(spec).unwrap();
        loader
            .load_sync(&spec, None, requested)
            .map(|m| String::from_utf8(m.code.as_bytes().to_vec()).unwrap())
            .map(|code| code.split("\n// tern:").next().unwrap().to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn relative_imports_resolve_inside_the_bundle() {
        let loader = BundleModuleLoader::new(bundle());
        let r = loader.resolve("./lib/a.js", "file:///src/index.js", ResolutionKind::Import).unwrap();
        assert_eq!(r.as_str(), "file:///src/lib/a.js");
        let up = loader.resolve("../data.json", "file:///src/index.js", ResolutionKind::Import).unwrap();
        assert_eq!(bundle_path(&up).unwrap().as_str(), "data.json");
    }

    #[test]
    fn uninstalled_node_and_remote_imports_are_refused_with_advice() {
        let loader = BundleModuleLoader::new(bundle());
        let e = loader.resolve("hono", "file:///src/index.js", ResolutionKind::Import).unwrap_err();
        assert!(e.to_string().contains("npm install"), "{e}");
        let e = loader.resolve("node:fs", "file:///src/index.js", ResolutionKind::Import).unwrap_err();
        assert!(e.to_string().contains("built-in"), "{e}");
        assert!(loader.resolve("https://x.test/a.js", "file:///src/index.js", ResolutionKind::Import).is_err());
    }

    #[test]
    fn runtime_modules_resolve_to_themselves_from_any_module() {
        let loader = BundleModuleLoader::new(bundle());
        for referrer in ["file:///src/index.js", "file:///node_modules/hono/dist/index.js"] {
            let resolved = loader.resolve("cloudflare:workers", referrer, ResolutionKind::Import).unwrap();
            assert_eq!(resolved.as_str(), "cloudflare:workers");
        }
    }

    #[test]
    fn bug_importing_a_runtime_module_said_to_npm_install_it() {
        // `ext:core/ops` was looked up as an npm package named "ext:core".
        let loader = BundleModuleLoader::new(bundle());
        for (specifier, says) in [
            ("ext:core/ops", "internal"),
            ("cloudflare:sockets", "provides only \"cloudflare:workers\""),
            ("npm:hono", "import it by name"),
            ("data:text/javascript,1", "own files"),
        ] {
            let e = loader.resolve(specifier, "file:///src/index.js", ResolutionKind::Import).unwrap_err().to_string();
            assert!(e.contains(says) && !e.contains("npm install"), "{specifier}: {e}");
        }
        assert_eq!(refused_scheme("@scope/pkg"), None);
        assert_eq!(refused_scheme("hono/jsx"), None);
    }

    #[test]
    fn no_function_can_import_the_module_isolates_warm_up_with() {
        let loader = BundleModuleLoader::default();
        let root = loader.resolve(WARM_UP_MODULE, ".", ResolutionKind::MainModule).unwrap();
        assert_eq!(root.as_str(), WARM_UP_MODULE, "the isolate loads it at boot, before a function is bound");
        loader.bind(bundle());
        for kind in [ResolutionKind::Import, ResolutionKind::DynamicImport] {
            let e = loader.resolve(WARM_UP_MODULE, "file:///src/index.js", kind).unwrap_err().to_string();
            assert!(e.contains("only the function's own files"), "{e}");
        }
    }

    #[test]
    fn non_js_modules_become_default_exports() {
        let loader = BundleModuleLoader::new(bundle());
        assert_eq!(
            load(&loader, "file:///data.json", RequestedModuleType::None).unwrap(),
            "export default JSON.parse(\"{\\\"x\\\": 1}\");"
        );
        assert!(load(&loader, "file:///page.html", RequestedModuleType::None).unwrap().contains("\\\"hi\\\""));
        assert_eq!(load(&loader, "file:///data.json", RequestedModuleType::Json).unwrap(), "{\"x\": 1}");
    }

    #[test]
    fn javascript_modules_carry_the_code_cache_salt_and_json_modules_do_not() {
        let loader = BundleModuleLoader::new(bundle());
        let raw = |spec: &str, requested| {
            let m = loader.load_sync(&ModuleSpecifier::parse(spec).unwrap(), None, requested).unwrap();
            String::from_utf8(m.code.as_bytes().to_vec()).unwrap()
        };
        let js = raw("file:///src/lib/a.js", RequestedModuleType::None);
        assert!(js.starts_with("export const a = 1\n// tern:"), "{js}");
        assert_eq!(raw("file:///data.json", RequestedModuleType::Json), "{\"x\": 1}");
    }

    #[test]
    fn missing_modules_and_bad_json_name_the_file() {
        let loader = BundleModuleLoader::new(bundle());
        let e = load(&loader, "file:///src/nope.js", RequestedModuleType::None).unwrap_err();
        assert!(e.contains("src/nope.js"), "{e}");
        let e = load(&loader, "file:///bad.json", RequestedModuleType::None).unwrap_err();
        assert!(e.contains("bad.json:1:"), "{e}");
    }
}
