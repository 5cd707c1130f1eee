//! `revocation_feed`: see `tollgate_edge_core::fuzzing::revocation_feed` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_edge_core::fuzzing::revocation_feed(data));
