//! The record classes both stores return (`Thread`, `Response`, `Turn`, `Appended`,
//! `ThreadPage`) and the one a caller hands to an append (`ResponseInfo`). The LMDB store builds
//! them from its records; the PostgreSQL store builds them from its rows with the keyword
//! constructors, so callers cannot tell the backends apart.

// The records' generated constructors (`new = "from_fields"`) take one argument per field.
#![allow(clippy::too_many_arguments)]

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::error::Error;
use crate::ids::{self, TurnKey};
use crate::store::{self, NewResponse, ResponseRecord, ResponseStatus, Role, ThreadRecord, Usage};

fn json_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static JSON: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    Ok(JSON
        .get_or_try_init(py, || py.import("json").map(Bound::unbind))?
        .bind(py))
}

/// Metadata as the API takes it: a dict (encoded here), JSON text in `str`/`bytes`, or None.
pub(crate) fn metadata_text(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    let Some(value) = value else { return Ok(None) };
    if value.is_none() {
        return Ok(None);
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(Some(s.to_str()?.to_owned()));
    }
    if let Ok(b) = value.cast::<PyBytes>() {
        return String::from_utf8(b.as_bytes().to_vec())
            .map(Some)
            .map_err(|_| Error::InvalidInput("metadata bytes are not UTF-8".into()).into());
    }
    if value.cast::<PyDict>().is_err() {
        return Err(Error::InvalidInput("metadata must be a dict or JSON text".into()).into());
    }
    let text = json_module(value.py())?
        .call_method1("dumps", (value,))
        .map_err(|e| Error::InvalidInput(format!("metadata cannot be encoded as JSON: {e}")))?;
    Ok(Some(text.extract()?))
}

fn metadata_object<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    json_module(py)?.call_method1("loads", (text,))
}

/// A 16-byte turn key given from Python (a backend's row), or InvalidInput.
pub(crate) fn turn_key(bytes: &[u8]) -> PyResult<TurnKey> {
    TurnKey::try_from(bytes).map_err(|_| {
        Error::InvalidInput(format!("a turn key is 16 bytes, not {}", bytes.len())).into()
    })
}

/// What to record about the response that an `append` stores.
#[pyclass(frozen, from_py_object, module = "threadloom._core")]
#[derive(Clone)]
pub struct ResponseInfo {
    pub(crate) inner: NewResponse,
}

#[pymethods]
impl ResponseInfo {
    #[new]
    #[pyo3(signature = (model, *, status="completed", output_count=1, prompt_tokens=0, completion_tokens=0, cached_tokens=0, error=None, metadata=None, id=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        model: String,
        status: &str,
        output_count: u32,
        prompt_tokens: u64,
        completion_tokens: u64,
        cached_tokens: u64,
        error: Option<String>,
        metadata: Option<&Bound<'_, PyAny>>,
        id: Option<String>,
    ) -> PyResult<Self> {
        if let Some(id) = &id {
            ids::validate_response_id(id)?;
        }
        Ok(ResponseInfo {
            inner: NewResponse {
                id,
                status: ResponseStatus::parse(status)?,
                model,
                output_count,
                usage: Usage {
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                },
                error,
                metadata: metadata_text(metadata)?,
            },
        })
    }
    /// The id minted for this response before it was stored, if any.
    #[getter]
    fn id(&self) -> Option<&str> {
        self.inner.id.as_deref()
    }
    /// The model that produced it.
    #[getter]
    fn model(&self) -> &str {
        &self.inner.model
    }
    /// `completed`, `incomplete` or `failed`.
    #[getter]
    fn status(&self) -> &'static str {
        self.inner.status.as_str()
    }
    /// How many of the appended turns are outputs (at the end).
    #[getter]
    fn output_count(&self) -> u32 {
        self.inner.output_count
    }
    #[getter]
    fn prompt_tokens(&self) -> u64 {
        self.inner.usage.prompt_tokens
    }
    #[getter]
    fn completion_tokens(&self) -> u64 {
        self.inner.usage.completion_tokens
    }
    #[getter]
    fn cached_tokens(&self) -> u64 {
        self.inner.usage.cached_tokens
    }
    /// Why it failed, for failed responses.
    #[getter]
    fn error(&self) -> Option<&str> {
        self.inner.error.as_deref()
    }
    /// The metadata as JSON text, as given (checked when stored).
    #[getter]
    fn metadata_json(&self) -> Option<&str> {
        self.inner.metadata.as_deref()
    }
}

/// A thread: a named, mutable pointer to the newest turn of a conversation.
#[pyclass(frozen, get_all, new = "from_fields", module = "threadloom._core")]
pub struct Thread {
    id: String,
    owner: String,
    /// The newest turn's id, or None for an empty thread.
    head: Option<String>,
    /// The metadata as compact JSON text.
    metadata_json: String,
    /// "open", "locked" or "archived".
    state: String,
    /// False for hidden threads.
    visible: bool,
    created_ms: i64,
    /// Time of the last new message, Unix milliseconds.
    last_activity_ms: i64,
    /// Number of messages in the thread's history.
    message_count: u32,
}

impl From<ThreadRecord> for Thread {
    fn from(t: ThreadRecord) -> Thread {
        Thread {
            id: t.id,
            owner: t.owner,
            head: t.head,
            metadata_json: t.metadata,
            state: t.state.as_str().to_owned(),
            visible: t.visible,
            created_ms: t.created_ms,
            last_activity_ms: t.last_activity_ms,
            message_count: t.message_count,
        }
    }
}

impl Thread {
    pub(crate) fn times(&self) -> (i64, i64) {
        (self.created_ms, self.last_activity_ms)
    }

    /// What deciding a write to it needs: id, state and head.
    pub(crate) fn write_fields(&self) -> (&str, &str, Option<&str>) {
        (&self.id, &self.state, self.head.as_deref())
    }
}

#[pymethods]
impl Thread {
    /// The metadata object, decoded.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        metadata_object(py, &self.metadata_json)
    }
    fn __repr__(&self) -> String {
        format!(
            "Thread(id={:?}, state={:?}, visible={}, message_count={})",
            self.id, self.state, self.visible, self.message_count
        )
    }
}

/// A stored response: the turns one generation added, its status and usage.
#[pyclass(frozen, get_all, new = "from_fields", module = "threadloom._core")]
pub struct Response {
    /// `resp_...`.
    id: String,
    owner: String,
    /// "completed", "incomplete" or "failed".
    status: String,
    model: String,
    /// Its last turn (the output), `msg_...`.
    last_turn: String,
    /// The turn its inputs follow, or None when it started a conversation.
    parent_turn: Option<String>,
    input_count: u32,
    output_count: u32,
    /// The thread it was appended to, if any.
    thread_id: Option<String>,
    /// The response it continued, if any.
    previous_response_id: Option<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Prompt tokens served from a slot's cache or a saved state.
    cached_tokens: u64,
    /// The error message of a failed response.
    error: Option<String>,
    created_ms: i64,
    /// The metadata as compact JSON text.
    metadata_json: String,
}

impl From<ResponseRecord> for Response {
    fn from(r: ResponseRecord) -> Response {
        Response {
            id: r.id,
            owner: r.owner,
            status: r.status.as_str().to_owned(),
            model: r.model,
            last_turn: r.last_turn,
            parent_turn: r.parent_turn,
            input_count: r.input_count,
            output_count: r.output_count,
            thread_id: r.thread_id,
            previous_response_id: r.previous_response_id,
            prompt_tokens: r.usage.prompt_tokens,
            completion_tokens: r.usage.completion_tokens,
            cached_tokens: r.usage.cached_tokens,
            error: r.error,
            created_ms: r.created_ms,
            metadata_json: r.metadata,
        }
    }
}

impl Response {
    pub(crate) fn anchor_fields(&self) -> (&str, &str, i64) {
        (&self.id, &self.status, self.created_ms)
    }
}

#[pymethods]
impl Response {
    /// The metadata object, decoded.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        metadata_object(py, &self.metadata_json)
    }
    fn __repr__(&self) -> String {
        format!(
            "Response(id={:?}, status={:?}, model={:?})",
            self.id, self.status, self.model
        )
    }
}

/// The interned Python string of a role, shared by every turn.
fn role_name<'py>(py: Python<'py>, role: Role) -> &'py Bound<'py, PyString> {
    match role {
        Role::System => pyo3::intern!(py, "system"),
        Role::User => pyo3::intern!(py, "user"),
        Role::Assistant => pyo3::intern!(py, "assistant"),
        Role::Tool => pyo3::intern!(py, "tool"),
    }
}

/// One turn of a history. Its text fields are Python strings built once, when the history is
/// read, so reading an attribute costs no decoding; its ids are formatted when asked for.
#[pyclass(frozen, module = "threadloom._core")]
pub struct Turn {
    pub(crate) key: TurnKey,
    parent: Option<TurnKey>,
    pub(crate) role_kind: Role,
    /// "system", "user", "assistant" or "tool".
    #[pyo3(get)]
    role: Py<PyString>,
    /// The message text.
    #[pyo3(get)]
    content: Py<PyString>,
    /// The reasoning text (between `<think>` tags), if any.
    #[pyo3(get)]
    reasoning: Option<Py<PyString>>,
    /// Tool data (a tool call or a tool result) as JSON object text, if any.
    #[pyo3(get)]
    tool: Option<Py<PyString>>,
    /// Position in its conversation, 1 for a root.
    #[pyo3(get)]
    depth: u32,
    /// Creation time, Unix milliseconds.
    #[pyo3(get)]
    created_ms: i64,
}

impl Turn {
    /// Builds the turn's strings; CPython checks the text's UTF-8 as it decodes it.
    pub(crate) fn from_raw(py: Python<'_>, raw: &store::turn::RawTurn<'_>) -> PyResult<Turn> {
        let text = |bytes: &[u8]| {
            PyString::from_bytes(py, bytes)
                .map(Bound::unbind)
                .map_err(|_| PyErr::from(store::turn::corrupt(&raw.id, "text is not UTF-8")))
        };
        Ok(Turn {
            key: raw.id,
            parent: raw.parent,
            role_kind: raw.role,
            role: role_name(py, raw.role).clone().unbind(),
            content: text(raw.content)?,
            reasoning: raw.reasoning.map(text).transpose()?,
            tool: raw.tool.map(text).transpose()?,
            depth: raw.depth,
            created_ms: raw.created_ms,
        })
    }

    /// The turn's texts, owned, for work done without the GIL.
    pub(crate) fn texts(
        &self,
        py: Python<'_>,
    ) -> PyResult<(String, Option<String>, Option<String>)> {
        let owned = |s: &Py<PyString>| s.bind(py).to_str().map(str::to_owned);
        Ok((
            owned(&self.content)?,
            self.reasoning.as_ref().map(owned).transpose()?,
            self.tool.as_ref().map(owned).transpose()?,
        ))
    }
}

#[pymethods]
impl Turn {
    /// A turn from another store's row: 16-byte keys, as `msg_` ids carry them.
    #[new]
    #[pyo3(signature = (*, key, parent_key, role, content, reasoning, tool, depth, created_ms))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        key: &[u8],
        parent_key: Option<&[u8]>,
        role: &str,
        content: Py<PyString>,
        reasoning: Option<Py<PyString>>,
        tool: Option<Py<PyString>>,
        depth: u32,
        created_ms: i64,
    ) -> PyResult<Turn> {
        let role_kind = Role::parse(role)?;
        Ok(Turn {
            key: turn_key(key)?,
            parent: parent_key.map(turn_key).transpose()?,
            role_kind,
            role: role_name(py, role_kind).clone().unbind(),
            content,
            reasoning,
            tool,
            depth,
            created_ms,
        })
    }
    /// The turn id, `msg_...`.
    #[getter]
    fn id(&self) -> String {
        ids::turn_id_string(&self.key)
    }
    /// The parent turn's id, or None for a root.
    #[getter]
    fn parent_id(&self) -> Option<String> {
        self.parent.as_ref().map(ids::turn_id_string)
    }
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let content = self.content.bind(py).to_cow()?;
        let mut preview: String = content.chars().take(40).collect();
        if preview.len() < content.len() {
            preview.push('…');
        }
        Ok(format!(
            "Turn(role={:?}, content={preview:?})",
            self.role_kind.as_str()
        ))
    }
}

/// What an append wrote.
#[pyclass(frozen, get_all, new = "from_fields", module = "threadloom._core")]
pub struct Appended {
    /// Ids of the new turns, in order.
    pub(crate) turn_ids: Vec<String>,
    /// The recorded response, when one was asked for.
    pub(crate) response: Option<Py<Response>>,
    /// The thread after the append, when appending to a thread.
    pub(crate) thread: Option<Py<Thread>>,
}

/// One page of `list_threads`.
#[pyclass(frozen, get_all, new = "from_fields", module = "threadloom._core")]
pub struct ThreadPage {
    /// The threads, most recently active first.
    pub(crate) threads: Py<PyList>,
    /// Pass as `after` to get the next page; None on the last page.
    pub(crate) next_cursor: Option<String>,
}
