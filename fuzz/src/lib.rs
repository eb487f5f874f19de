//! veto's fuzz targets: the bodies live in [`core_targets`] (veto-core
//! parsers) and [`admin`] (registry request bodies), so stable tests can
//! replay the seeds through exactly the same checks.

mod core_targets;
pub use core_targets::*;

#[cfg(feature = "registry")]
pub mod admin;
