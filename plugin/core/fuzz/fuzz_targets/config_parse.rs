//! `config_parse`: see `tollgate_edge_core::fuzzing::config_parse` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_edge_core::fuzzing::config_parse(data));
