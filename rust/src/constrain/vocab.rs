//! The model's vocabulary as llguidance sees it: a token trie built from the core's own
//! tokenizer (the GGUF vocabulary), so masks are computed over exactly the ids the backends
//! sample.

use std::sync::Arc;

use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::error::{Error, Result};
use crate::tokens::{TokenAttr, Tokenizer};

/// The trie plus the tokenizer llguidance calls to tokenize forced text.
pub struct VocabEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl VocabEnv {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Self> {
        let size = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..size as u32).map(|id| word(&tokenizer, id)).collect();
        let eog = tokenizer.eog_ids();
        let Some(&first) = eog.first() else {
            return Err(Error::Model(
                "the vocabulary names no end-of-generation token, so a constrained reply could \
                 never end"
                    .into(),
            ));
        };
        let info = TokRxInfo {
            vocab_size: size as u32,
            tok_eos: first,
            tok_bos: tokenizer.bos_id(),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: tokenizer.eot_id(),
        };
        // Every end-of-generation token ends a constrained reply, whichever the model prefers.
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eog);
        Ok(VocabEnv { trie, tokenizer })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// The bytes token `id` stands for. Control and other non-text tokens carry llguidance's special
/// marker byte in front, so no grammar text can ever match them: user-visible output never
/// contains a control token.
fn word(tokenizer: &Tokenizer, id: u32) -> Vec<u8> {
    match tokenizer.token_attr(id) {
        Some(TokenAttr::Normal | TokenAttr::Byte) => {
            tokenizer.piece(id).map(<[u8]>::to_vec).unwrap_or_default()
        }
        _ => {
            let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
            w.extend_from_slice(tokenizer.id_to_token(id).unwrap_or_default().as_bytes());
            w
        }
    }
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // The core's tokenizer for whole UTF-8 text, as the model would see it; a fragment it
        // cannot take as-is (a split character, or SentencePiece's added leading space) falls
        // back to the trie's greedy split, which is still a valid tokenization of the bytes.
        match std::str::from_utf8(s) {
            Ok(text) if !self.tokenizer.adds_space_prefix() => self
                .tokenizer
                .encode_plain(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            _ => self.trie.greedy_tokenize(s),
        }
    }
}
