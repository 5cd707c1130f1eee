//! `token_request`: see `tollgate_authserver::fuzzing::token_request` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_authserver::fuzzing::token_request(data));
