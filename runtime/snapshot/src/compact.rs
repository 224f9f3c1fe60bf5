//! Compacts the JavaScript that goes into the startup snapshot: comments and whitespace out,
//! nothing renamed or rewritten.
//!
//! On this engine every function keeps its own source text for `Function.prototype.toString`
//! (a class keeps the whole class, and each method its own again), and every isolate restored
//! from the snapshot gets its own copy. The Web API crates' JavaScript is about half comments
//! and indentation, so compacting it before the snapshot is made takes about 0.5 MiB off every
//! isolate, and makes the snapshot, and so each restore, about a fifth smaller. The cost is in
//! stack frames inside that code: they point into one long line (`ext:deno_fetch/...:1:4523`).
//!
//! The parser and printer are oxc's (`oxc_parser`, `oxc_codegen`). Code the parser refuses is
//! kept as it is: the snapshot is then bigger, never wrong. The test at the end checks that
//! none of the extensions' code falls back.
//!
//! deno_core takes extension code as ASCII only, and the printer writes what an escape such as
//! `"\u00e9"` stands for; such characters are escaped again ([`ascii`]).

use oxc_allocator::Allocator;
use oxc_codegen::{Codegen, CodegenOptions};
use oxc_parser::Parser;
use oxc_span::SourceType;

/// `source` without comments and whitespace, or `None` where oxc cannot parse it (ES modules
/// and classic scripts both: `core.loadExtScript` scripts are classic).
pub fn compact(source: &str) -> Option<String> {
    let allocator = Allocator::default();
    let parsed = Parser::new(&allocator, source, SourceType::unambiguous()).parse();
    if parsed.panicked || !parsed.diagnostics.is_empty() {
        return None;
    }
    Some(ascii(Codegen::new().with_options(CodegenOptions::minify()).build(&parsed.program).code))
}

/// `code` with every character past ASCII written as a `\u` escape (two, as a surrogate pair,
/// past U+FFFF). The source was ASCII, so such a character can only have come from an escape in
/// a string, template or identifier, where the escape means the same character again.
fn ascii(code: String) -> String {
    if code.is_ascii() {
        return code;
    }
    let mut out = String::with_capacity(code.len() + 64);
    for c in code.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::compact;

    #[test]
    fn comments_and_whitespace_go_and_the_code_stays() {
        let source = "/** the answer */\nexport function answer( a ) {\n  // forty-two\n  return a + 42;\n}\n";
        assert_eq!(compact(source).unwrap(), "export function answer(a){return a+42}");
    }

    #[test]
    fn a_classic_script_keeps_its_completion_value() {
        // `core.loadExtScript` returns what the script's last expression evaluates to.
        let source = "(function () {\n  const x = 1; // one\n  return { x };\n})();\n";
        assert_eq!(compact(source).unwrap(), "(function(){const x=1;return{x}})();");
    }

    #[test]
    fn what_escapes_stood_for_is_escaped_again() {
        let source = "const a = \"\\u00e9\\n\", b = \"\\u{1F600}\";\n";
        let compacted = compact(source).unwrap();
        assert!(compacted.is_ascii(), "{compacted}");
        assert!(compacted.contains("\\u00e9") && compacted.contains("\\ud83d\\ude00"), "{compacted}");
    }

    #[test]
    fn code_the_parser_refuses_is_left_to_the_engine() {
        assert_eq!(compact("function ("), None);
    }

    #[test]
    fn every_extension_source_compacts() {
        let extensions = tern_js_api::extensions(&tern_js_api::egress::Egress::default());
        let mut files = 0;
        for file in tern_js_api::sources(&extensions) {
            let code = file.load().expect("extension source loads");
            let compacted = compact(&code).unwrap_or_else(|| panic!("{} does not compact", file.specifier));
            assert!(compacted.len() < code.len(), "{} did not shrink", file.specifier);
            assert!(compacted.is_ascii(), "{} compacted to more than ASCII", file.specifier);
            files += 1;
        }
        assert!(files > 20, "only {files} extension sources found");
    }
}
