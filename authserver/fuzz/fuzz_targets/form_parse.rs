//! `form_parse`: see `tollgate_authserver::fuzzing::form_parse` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_authserver::fuzzing::form_parse(data));
