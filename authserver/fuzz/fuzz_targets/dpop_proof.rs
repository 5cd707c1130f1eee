//! `dpop_proof`: see `tollgate_authserver::fuzzing::dpop_proof` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_authserver::fuzzing::dpop_proof(data));
