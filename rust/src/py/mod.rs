//! Thin PyO3 wrappers over the pure-Rust core. Each method owns its inputs, releases the GIL for
//! the real work, and converts the result back.

pub mod constrain;
pub mod errors;
pub mod llama;
pub mod model;
pub mod prompt;
pub mod records;
pub mod rules;
pub mod seal;
pub mod store;
pub mod template;
