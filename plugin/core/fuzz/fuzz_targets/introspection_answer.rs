//! `introspection_answer`: see `tollgate_edge_core::fuzzing::introspection_answer` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_edge_core::fuzzing::introspection_answer(data));
