//! Fuzz target `snapshot`: the input format and the invariants it checks are
//! described on module `snapshot` in `fuzz/src/core_targets.rs`, which the
//! stable test `crates/veto-core/tests/fuzz_regressions.rs` also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veto_fuzz::snapshot::run(data));
