//! WebAssembly memories under the function's memory limit.
//!
//! The engine (WAMR) keeps linear memory outside the JS heap and the ArrayBuffer allocator,
//! so neither sees it; left alone, one `memory.grow` loop reaches 4 GiB. Every module a
//! function compiles passes through [`clamp_memories`] first (the global `WebAssembly`
//! API is wrapped in `00_global_scope.js`): each memory it defines or imports gets a
//! maximum of at most the function's `limits.memory_mib`, so growing past it fails the way
//! the WebAssembly spec says (`memory.grow` returns -1). A module whose initial memory is
//! already over the limit is refused. `new WebAssembly.Memory` is clamped the same way.

use wasm_encoder::reencode::{Error, Reencode};

/// A WebAssembly page: 64 KiB.
pub const PAGE_BYTES: u64 = 64 * 1024;

struct Clamp {
    max_pages: u64,
}

impl Reencode for Clamp {
    type Error = String;

    fn memory_type(&mut self, memory: wasmparser::MemoryType) -> Result<wasm_encoder::MemoryType, Error<String>> {
        let mut t = wasm_encoder::reencode::utils::memory_type(self, memory);
        let page = 1u64 << t.page_size_log2.unwrap_or(16);
        let max_pages = (self.max_pages * PAGE_BYTES) / page;
        if t.minimum > max_pages {
            return Err(Error::UserError(format!(
                "the module's memory starts at {} MiB, over the function's memory limit of {} MiB (limits.memory_mib)",
                (t.minimum * page) >> 20,
                (max_pages * page) >> 20
            )));
        }
        t.maximum = Some(t.maximum.map_or(max_pages, |m| m.min(max_pages)));
        Ok(t)
    }
}

/// `module` with every memory's maximum clamped to `max_bytes`.
pub fn clamp_memories(module: &[u8], max_bytes: u64) -> Result<Vec<u8>, String> {
    reencode(&mut Clamp { max_pages: max_bytes / PAGE_BYTES }, module)
}

/// The maximum, in pages, of each memory `module` exports, by export name: the engine lets
/// JS grow an exported memory past its maximum (`WebAssembly.Memory.prototype.grow`), so
/// the global scope enforces it from here. A memory without a maximum has none (`None`).
pub fn exported_memory_maxima(module: &[u8]) -> Result<Vec<(String, Option<u64>)>, String> {
    use wasmparser::{ExternalKind, Payload, TypeRef};
    let invalid = |e: wasmparser::BinaryReaderError| format!("invalid WebAssembly module: {e}");
    let mut memories = Vec::new();
    let mut exports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        match payload.map_err(invalid)? {
            Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    if let TypeRef::Memory(memory) = import.map_err(invalid)?.ty {
                        memories.push(memory.maximum);
                    }
                }
            }
            Payload::MemorySection(section) => {
                for memory in section {
                    memories.push(memory.map_err(invalid)?.maximum);
                }
            }
            Payload::ExportSection(section) => {
                for export in section {
                    let export = export.map_err(invalid)?;
                    if export.kind == ExternalKind::Memory {
                        exports.push((export.name.to_string(), export.index as usize));
                    }
                }
            }
            _ => {}
        }
    }
    exports
        .into_iter()
        .map(|(name, i)| match memories.get(i) {
            Some(max) => Ok((name, *max)),
            None => Err(format!("invalid WebAssembly module: export {name:?} names memory {i}, which does not exist")),
        })
        .collect()
}

/// `module` passed through `reencoder`; its own refusals come back as they are, anything
/// else as "invalid WebAssembly module".
pub(crate) fn reencode(reencoder: &mut impl Reencode<Error = String>, module: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = wasm_encoder::Module::new();
    reencoder.parse_core_module(&mut out, wasmparser::Parser::new(0), module).map_err(|e| match e {
        Error::UserError(message) => message,
        other => format!("invalid WebAssembly module: {other}"),
    })?;
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (module (memory 1) (func (export "grow") (result i32) grow until -1; memory.size))
    const GROWER: &[u8] = &[
        0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 1, 5, 1, 0x60, 0, 1, 0x7f, 3, 2, 1, 0, 5, 3, 1, 0, 1, 7, 8, 1, 4, 0x67, 0x72,
        0x6f, 0x77, 0, 0, 0x0a, 0x17, 1, 0x15, 0, 2, 0x40, 3, 0x40, 0x41, 0x10, 0x40, 0, 0x41, 0x7f, 0x46, 0x0d, 1,
        0x0c, 0, 0x0b, 0x0b, 0x3f, 0, 0x0b,
    ];

    fn memories(module: &[u8]) -> Vec<wasmparser::MemoryType> {
        let mut found = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(module) {
            if let Ok(wasmparser::Payload::MemorySection(section)) = payload {
                found.extend(section.into_iter().map(Result::unwrap));
            }
        }
        found
    }

    #[test]
    fn a_memory_without_maximum_gets_the_limit_as_maximum() {
        assert_eq!(memories(GROWER)[0].maximum, None);
        let clamped = clamp_memories(GROWER, 128 << 20).unwrap();
        assert_eq!(memories(&clamped)[0].maximum, Some(2048));
        assert_eq!(memories(&clamped)[0].initial, 1);
        wasmparser::Validator::new().validate_all(&clamped).unwrap();
    }

    #[test]
    fn exported_memories_are_named_with_their_clamped_maximum() {
        /// (module (memory (export "mem") 1))
        const EXPORTED: &[u8] = &[0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 5, 3, 1, 0, 1, 7, 7, 1, 3, 0x6d, 0x65, 0x6d, 2, 0];
        assert_eq!(exported_memory_maxima(GROWER).unwrap(), [], "GROWER exports no memory");
        assert_eq!(exported_memory_maxima(EXPORTED).unwrap(), [("mem".to_string(), None)]);
        let clamped = clamp_memories(EXPORTED, 1 << 20).unwrap();
        assert_eq!(exported_memory_maxima(&clamped).unwrap(), [("mem".to_string(), Some(16))]);
        assert!(exported_memory_maxima(b"not wasm").unwrap_err().contains("invalid WebAssembly module"));
    }

    #[test]
    fn a_memory_that_starts_over_the_limit_is_refused() {
        let e = clamp_memories(GROWER, PAGE_BYTES / 2).unwrap_err();
        assert!(e.contains("limits.memory_mib"), "{e}");
        assert!(clamp_memories(b"not wasm", 1 << 20).unwrap_err().contains("invalid WebAssembly module"));
    }
}
