//! Environment files (`environments/NAME.hcl`): reading, validation, defaults.

mod model;

pub use model::*;
