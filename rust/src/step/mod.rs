//! The token path of the batched backend (llama.cpp), without Python: each sequence's held
//! tokens, one batch per step holding every waiting prompt token and one token of each decoding
//! sequence, the constrained-decoding mask and sampling on the logits rows, all in one call
//! with the GIL released. `Decoder` is what evaluates a batch: llama.cpp through its C API
//! (`llama.rs`), or a fake in the tests.

pub mod llama;
pub mod sample;
pub mod seqs;

#[cfg(test)]
mod tests;

pub use sample::Sampling;
pub use seqs::{Decoder, Entry, Steps, Want};
