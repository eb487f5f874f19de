//! Fuzz target `admin_json`: the input format and the invariants it checks
//! are described in `fuzz/src/admin.rs`, which the stable test
//! `crates/veto-registry/tests/fuzz_seeds.rs` also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veto_fuzz::admin::run(data));
