//! Any byte string given to the GGUF reader must parse or fail with an error: never panic, never
//! allocate without bound. Run: `cargo +nightly fuzz run gguf_metadata` (from the repo root).
#![no_main]

use libfuzzer_sys::fuzz_target;
use threadloom::gguf::GgufMetadata;

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = GgufMetadata::from_bytes(data) {
        // Touch every accessor, so their invariants are exercised too.
        let _ = (
            meta.architecture(),
            meta.context_length(),
            meta.chat_template(),
        );
        let _ = (
            meta.tokens().len(),
            meta.scores(),
            meta.token_types(),
            meta.merges().len(),
        );
        let _ = (
            meta.bos_token_id(),
            meta.eos_token_id(),
            meta.add_bos_token(),
        );
        for t in meta.tensors() {
            let _ = (t.n_elements(), t.byte_size(), t.type_name());
        }
        // A vocabulary that parses must build a tokenizer or fail cleanly.
        if let Ok(tok) = threadloom::tokens::Tokenizer::from_metadata(&meta) {
            let _ = tok.encode("hello <|im_start|> 123", true);
        }
    }
});
