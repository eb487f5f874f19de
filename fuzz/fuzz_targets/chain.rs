//! Fuzz target `chain`: the input format and the invariants it checks are
//! described on module `chain` in `fuzz/src/core_targets.rs`, which the
//! stable test `crates/veto-core/tests/fuzz_regressions.rs` also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veto_fuzz::chain::run(data));
