//! Fuzz target `checkpoint`: the input format and the invariants it checks are
//! described on module `checkpoint` in `fuzz/src/core_targets.rs`, which the
//! stable test `crates/veto-core/tests/fuzz_regressions.rs` also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veto_fuzz::checkpoint::run(data));
