//! The Rust side of WebAssembly (WASI) functions: preparing a program's module so that one
//! instance can run request after request as if it were fresh.
//!
//! The engine (WAMR under v8x) never frees an instance: every `new WebAssembly.Instance`
//! stays allocated, linear memory included, until the process ends. So a WASI function
//! gets one instance per isolate, and `js/20_wasi.js` puts it back to its initial state
//! after every request: linear memory restored from a copy taken at instantiation (and
//! zeroed past it), and every mutable global reset. Globals a module defines are usually
//! not exported (the C stack pointer is not), and the engine's `WebAssembly.Global` setter
//! leaks on every call, so [`prepare_for_reuse`] adds a function, exported as
//! [`RESET_EXPORT`], that sets each mutable global the module defines back to its initial
//! value (its own constant initializer, replayed). Tables are not reset: programs compiled
//! from C, Rust or Go do not write their tables at run time.

use wasm_encoder::reencode::{Error, Reencode, RoundtripReencoder};
use wasm_encoder::{Function, Instruction};

/// The export the runner calls after every request.
pub const RESET_EXPORT: &str = "__tern_reset_globals";

/// Adds the reset function to the sections that re-encoding copies.
struct AddReset<'a> {
    /// (global index, its initializer) for each mutable global the module defines.
    mutable: Vec<(u32, Vec<Instruction<'a>>)>,
    /// Where the added function's type and the function itself land.
    type_index: u32,
    function_index: u32,
}

impl Reencode for AddReset<'_> {
    type Error = String;

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), Error<String>> {
        wasm_encoder::reencode::utils::parse_type_section(self, types, section)?;
        types.ty().function([], []);
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut wasm_encoder::FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), Error<String>> {
        wasm_encoder::reencode::utils::parse_function_section(self, functions, section)?;
        functions.function(self.type_index);
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), Error<String>> {
        wasm_encoder::reencode::utils::parse_code_section(self, code, section)?;
        let mut reset = Function::new([]);
        for (index, init) in &self.mutable {
            for instruction in init {
                reset.instruction(instruction);
            }
            reset.instruction(&Instruction::GlobalSet(*index));
        }
        reset.instruction(&Instruction::End);
        code.function(&reset);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), Error<String>> {
        wasm_encoder::reencode::utils::parse_export_section(self, exports, section)?;
        exports.export(RESET_EXPORT, wasm_encoder::ExportKind::Func, self.function_index);
        Ok(())
    }
}

/// `module` with an exported function that resets every mutable global it defines.
pub fn prepare_for_reuse(module: &[u8]) -> Result<Vec<u8>, String> {
    let invalid = |e: wasmparser::BinaryReaderError| format!("invalid WebAssembly module: {e}");
    let (mut types, mut imported_functions, mut functions, mut imported_globals) = (0u32, 0u32, 0u32, 0u32);
    let mut mutable = Vec::new();
    let mut sections = [false; 4]; // type, function, code, export
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        match payload.map_err(invalid)? {
            wasmparser::Payload::TypeSection(section) => {
                sections[0] = true;
                for group in section {
                    types += group.map_err(invalid)?.types().len() as u32;
                }
            }
            wasmparser::Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    match import.map_err(invalid)?.ty {
                        wasmparser::TypeRef::Func(_) => imported_functions += 1,
                        wasmparser::TypeRef::Global(_) => imported_globals += 1,
                        _ => {}
                    }
                }
            }
            wasmparser::Payload::FunctionSection(section) => {
                sections[1] = true;
                functions = section.count();
            }
            wasmparser::Payload::GlobalSection(section) => {
                for (i, global) in section.into_iter().enumerate() {
                    let global = global.map_err(invalid)?;
                    if !global.ty.mutable {
                        continue;
                    }
                    let mut init = Vec::new();
                    for op in global.init_expr.get_operators_reader() {
                        let op = op.map_err(invalid)?;
                        if !matches!(op, wasmparser::Operator::End) {
                            init.push(RoundtripReencoder.instruction(op).map_err(|e| format!("{e}"))?);
                        }
                    }
                    mutable.push((imported_globals + i as u32, init));
                }
            }
            wasmparser::Payload::CodeSectionStart { .. } => sections[2] = true,
            wasmparser::Payload::ExportSection(_) => sections[3] = true,
            _ => {}
        }
    }
    if sections != [true; 4] {
        return Err("it defines no functions or exports nothing: a WebAssembly function is a WASI command \
                    exporting _start and memory"
            .into());
    }
    let mut reset = AddReset { mutable, type_index: types, function_index: imported_functions + functions };
    crate::wasm_limits::reencode(&mut reset, module)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports(module: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(module) {
            if let Ok(wasmparser::Payload::ExportSection(section)) = payload {
                names.extend(section.into_iter().map(|e| e.unwrap().name.to_string()));
            }
        }
        names
    }

    /// (module (global (import "m" "g") i32) (global $sp (mut i32) (i32.const 1024))
    ///   (global $k i32 (i32.const 1)) (global $n (mut i64) (i64.const 0))
    ///   (memory (export "memory") 1) (func (export "_start")))
    const MODULE: &[u8] = &[
        0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, // header
        1, 4, 1, 0x60, 0, 0, // type: () -> ()
        2, 8, 1, 1, b'm', 1, b'g', 3, 0x7f, 0, // import global i32 immutable
        3, 2, 1, 0, // one function
        5, 3, 1, 0, 1, // memory 1
        6, 17, 3, 0x7f, 1, 0x41, 0x80, 8, 0x0b, 0x7f, 0, 0x41, 1, 0x0b, 0x7e, 1, 0x42, 0, 0x0b, // globals
        7, 19, 2, 6, b'm', b'e', b'm', b'o', b'r', b'y', 2, 0, 6, b'_', b's', b't', b'a', b'r', b't', 0,
        0, // exports
        10, 4, 1, 2, 0, 0x0b, // code
    ];

    #[test]
    fn a_valid_module_gains_an_exported_reset_function_setting_each_mutable_global() {
        wasmparser::Validator::new().validate_all(MODULE).unwrap();
        let prepared = prepare_for_reuse(MODULE).unwrap();
        wasmparser::Validator::new().validate_all(&prepared).unwrap();
        assert_eq!(exports(&prepared), ["memory", "_start", RESET_EXPORT]);
        // The added body: i32.const 1024, global.set 1, i64.const 0, global.set 3, end.
        let mut bodies = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(&prepared) {
            if let Ok(wasmparser::Payload::CodeSectionEntry(body)) = payload {
                let ops: Vec<String> =
                    body.get_operators_reader().unwrap().into_iter().map(|op| format!("{:?}", op.unwrap())).collect();
                bodies.push(ops.join(" "));
            }
        }
        assert_eq!(bodies.len(), 2);
        assert_eq!(
            bodies[1],
            "I32Const { value: 1024 } GlobalSet { global_index: 1 } I64Const { value: 0 } GlobalSet { global_index: 3 } End"
        );
    }

    #[test]
    fn modules_without_exports_and_bad_bytes_are_refused() {
        assert!(prepare_for_reuse(b"\0asm\x01\0\0\0").unwrap_err().contains("_start"));
        assert!(prepare_for_reuse(b"not wasm").unwrap_err().contains("invalid WebAssembly module"));
    }
}
