//! threadloom's core: the conversation store's rules and ids (with the LMDB store built on
//! them; the PostgreSQL store calls the same rules from Python), GGUF reading, chat templates,
//! tokenization, prompt assembly and trimming, sealing compaction items, constrained decoding,
//! and the llama.cpp backend's step loop (and, behind the `python` feature, the
//! `threadloom._core` extension module that exposes them).

pub mod constrain;
pub mod error;
pub mod gguf;
pub mod ids;
pub mod prompt;
pub mod seal;
pub mod step;
pub mod store;
pub mod template;
pub mod tokens;

#[cfg(test)]
mod testutil;

#[cfg(feature = "python")]
mod py;

#[cfg(feature = "python")]
#[pyo3::pymodule]
mod _core {
    #[pymodule_export]
    use crate::py::constrain::{Constraint, Grammars};
    #[pymodule_export]
    use crate::py::llama::LlamaSteps;
    #[pymodule_export]
    use crate::py::model::convert_for_ctransformers;
    #[pymodule_export]
    use crate::py::prompt::{Assembly, PromptEngine, Tokenizer};
    #[pymodule_export]
    use crate::py::records::{Appended, Response, ResponseInfo, Thread, ThreadPage, Turn};
    #[pymodule_export]
    use crate::py::rules::{
        check_append_shape, check_branch_room, check_create, check_history, check_length,
        check_metadata_change, check_page_limit, check_response_id_free, check_state_change,
        check_summary, check_thread_write, new_response_id, new_thread_id, new_turn_key,
        normalize_metadata, not_found, parse_anchor, parse_thread_cursor, parse_thread_state,
        parse_turn_id, parse_turns, quote, thread_cursor, turn_id_string, validate_owner,
        validate_response_id, validate_thread_id, Retention,
    };
    #[pymodule_export]
    use crate::py::seal::{open_compaction, seal_compaction};
    #[pymodule_export]
    use crate::py::store::Store;
    #[pymodule_export]
    use crate::py::template::ChatTemplate;

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        // Store rules the Python side checks early (before spending model time on a request
        // the store would refuse): the same numbers the store enforces.
        m.add("MAX_THREAD_MESSAGES", crate::store::MAX_THREAD_MESSAGES)?;
        m.add("MAX_METADATA_BYTES", crate::store::MAX_METADATA_BYTES)?;
        m.add("MAX_TURN_BYTES", crate::store::MAX_TURN_BYTES)?;
        m.add("MAX_THREAD_BRANCHES", crate::store::MAX_THREAD_BRANCHES)?;
        // Role names in the order of their stored index (`parse_turns` gives the index).
        m.add("ROLES", ("system", "user", "assistant", "tool"))?;
        m.add("COMPACTION_KEY_BYTES", crate::seal::KEY_LEN)?;
        // What `LlamaSteps` expects of the loaded libllama's `llama_batch`.
        m.add("LLAMA_BATCH_LAYOUT", crate::py::llama::batch_layout())?;
        // The id grammar, for the request schemas: one definition, the store's.
        m.add("RESPONSE_ID_PATTERN", crate::ids::RESPONSE_ID_PATTERN)?;
        m.add("THREAD_ID_PATTERN", crate::ids::THREAD_ID_PATTERN)?;
        Ok(())
    }
}
