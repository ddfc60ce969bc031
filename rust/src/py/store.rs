//! `threadloom._core.Store` and the record classes it returns.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::error::Error;
use crate::ids;
use crate::store::{
    self, Anchor, AppendOptions, NewResponse, NewTurn, ResponseRecord, ResponseStatus, Role,
    StoreOptions, ThreadRecord, ThreadState, Usage,
};

fn json_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static JSON: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    Ok(JSON
        .get_or_try_init(py, || py.import("json").map(Bound::unbind))?
        .bind(py))
}

/// Accepts metadata as a dict (encoded here), or as JSON text in `str`/`bytes`.
fn metadata_text(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
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
    let py = value.py();
    let text = json_module(py)?
        .call_method1("dumps", (value,))
        .map_err(|e| Error::InvalidInput(format!("metadata cannot be encoded as JSON: {e}")))?;
    Ok(Some(text.extract()?))
}

fn metadata_object<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    json_module(py)?.call_method1("loads", (text,))
}

fn ms_to_s(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn s_to_ms(name: &str, seconds: f64) -> PyResult<i64> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(Error::InvalidInput(format!(
            "{name} must be a non-negative number of seconds"
        ))
        .into());
    }
    Ok((seconds * 1000.0).round().min(i64::MAX as f64) as i64)
}

/// How long threads and responses live. Times are in seconds.
#[pyclass(frozen, from_py_object, module = "threadloom._core")]
#[derive(Clone)]
pub struct Retention {
    inner: store::Retention,
}

#[pymethods]
impl Retention {
    #[new]
    #[pyo3(signature = (*, thread_inactivity_s=7_776_000.0, thread_max_age_s=31_536_000.0, response_ttl_s=2_592_000.0, anchor_window_s=86_400.0))]
    fn new(
        thread_inactivity_s: f64,
        thread_max_age_s: f64,
        response_ttl_s: f64,
        anchor_window_s: f64,
    ) -> PyResult<Self> {
        Ok(Retention {
            inner: store::Retention {
                thread_inactivity_ms: s_to_ms("thread_inactivity_s", thread_inactivity_s)?,
                thread_max_age_ms: s_to_ms("thread_max_age_s", thread_max_age_s)?,
                response_ttl_ms: s_to_ms("response_ttl_s", response_ttl_s)?,
                anchor_window_ms: s_to_ms("anchor_window_s", anchor_window_s)?,
            },
        })
    }

    /// A thread with no new message for this long expires.
    #[getter]
    fn thread_inactivity_s(&self) -> f64 {
        ms_to_s(self.inner.thread_inactivity_ms)
    }

    /// A thread older than this expires.
    #[getter]
    fn thread_max_age_s(&self) -> f64 {
        ms_to_s(self.inner.thread_max_age_ms)
    }

    /// Responses expire this long after creation.
    #[getter]
    fn response_ttl_s(&self) -> f64 {
        ms_to_s(self.inner.response_ttl_ms)
    }

    /// The window in which a response may be continued where a dialect enforces one.
    #[getter]
    fn anchor_window_s(&self) -> f64 {
        ms_to_s(self.inner.anchor_window_ms)
    }

    fn __repr__(&self) -> String {
        format!(
            "Retention(thread_inactivity_s={}, thread_max_age_s={}, response_ttl_s={}, anchor_window_s={})",
            self.thread_inactivity_s(),
            self.thread_max_age_s(),
            self.response_ttl_s(),
            self.anchor_window_s()
        )
    }
}

/// What to record about the response that an `append` stores.
#[pyclass(frozen, from_py_object, module = "threadloom._core")]
#[derive(Clone)]
pub struct ResponseInfo {
    inner: NewResponse,
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
    /// Prompt tokens.
    #[getter]
    fn prompt_tokens(&self) -> u64 {
        self.inner.usage.prompt_tokens
    }
    /// Generated tokens.
    #[getter]
    fn completion_tokens(&self) -> u64 {
        self.inner.usage.completion_tokens
    }
    /// Prompt tokens reused from a slot's cache.
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

/// A new response id (`resp_` + 128 random bits) in the store's format, for naming a response
/// before it is stored (`ResponseInfo(id=...)`).
#[pyfunction]
#[pyo3(signature = ())]
pub fn new_response_id() -> String {
    ids::new_response_id()
}

/// A thread: a named, mutable pointer to the newest turn of a conversation.
#[pyclass(frozen, module = "threadloom._core")]
pub struct Thread {
    inner: ThreadRecord,
}

#[pymethods]
impl Thread {
    /// The thread id.
    #[getter]
    fn id(&self) -> &str {
        &self.inner.id
    }
    /// The tenant that owns the thread.
    #[getter]
    fn owner(&self) -> &str {
        &self.inner.owner
    }
    /// The newest turn's id, or None for an empty thread.
    #[getter]
    fn head(&self) -> Option<&str> {
        self.inner.head.as_deref()
    }
    /// The metadata object, decoded.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        metadata_object(py, &self.inner.metadata)
    }
    /// The metadata as compact JSON text.
    #[getter]
    fn metadata_json(&self) -> &str {
        &self.inner.metadata
    }
    /// "open", "locked" or "archived".
    #[getter]
    fn state(&self) -> &'static str {
        self.inner.state.as_str()
    }
    /// False for hidden threads.
    #[getter]
    fn visible(&self) -> bool {
        self.inner.visible
    }
    /// Creation time, Unix milliseconds.
    #[getter]
    fn created_ms(&self) -> i64 {
        self.inner.created_ms
    }
    /// Time of the last new message, Unix milliseconds.
    #[getter]
    fn last_activity_ms(&self) -> i64 {
        self.inner.last_activity_ms
    }
    /// Number of messages in the thread's history.
    #[getter]
    fn message_count(&self) -> u32 {
        self.inner.message_count
    }
    fn __repr__(&self) -> String {
        format!(
            "Thread(id={:?}, state={:?}, visible={}, message_count={})",
            self.inner.id,
            self.inner.state.as_str(),
            self.inner.visible,
            self.inner.message_count
        )
    }
}

/// A stored response: the turns one generation added, its status and usage.
#[pyclass(frozen, module = "threadloom._core")]
pub struct Response {
    inner: ResponseRecord,
}

#[pymethods]
impl Response {
    /// The response id, `resp_...`.
    #[getter]
    fn id(&self) -> &str {
        &self.inner.id
    }
    /// The tenant that owns the response.
    #[getter]
    fn owner(&self) -> &str {
        &self.inner.owner
    }
    /// "completed", "incomplete" or "failed".
    #[getter]
    fn status(&self) -> &'static str {
        self.inner.status.as_str()
    }
    /// The model that produced it.
    #[getter]
    fn model(&self) -> &str {
        &self.inner.model
    }
    /// Its last turn (the output), `msg_...`.
    #[getter]
    fn last_turn(&self) -> &str {
        &self.inner.last_turn
    }
    /// The turn its inputs follow, or None when it started a conversation.
    #[getter]
    fn parent_turn(&self) -> Option<&str> {
        self.inner.parent_turn.as_deref()
    }
    /// How many input turns it added.
    #[getter]
    fn input_count(&self) -> u32 {
        self.inner.input_count
    }
    /// How many output turns it added.
    #[getter]
    fn output_count(&self) -> u32 {
        self.inner.output_count
    }
    /// The thread it was appended to, if any.
    #[getter]
    fn thread_id(&self) -> Option<&str> {
        self.inner.thread_id.as_deref()
    }
    /// The response it continued, if any.
    #[getter]
    fn previous_response_id(&self) -> Option<&str> {
        self.inner.previous_response_id.as_deref()
    }
    /// Prompt tokens used.
    #[getter]
    fn prompt_tokens(&self) -> u64 {
        self.inner.usage.prompt_tokens
    }
    /// Tokens generated.
    #[getter]
    fn completion_tokens(&self) -> u64 {
        self.inner.usage.completion_tokens
    }
    /// Prompt tokens served from the prefix cache.
    #[getter]
    fn cached_tokens(&self) -> u64 {
        self.inner.usage.cached_tokens
    }
    /// The error message of a failed response.
    #[getter]
    fn error(&self) -> Option<&str> {
        self.inner.error.as_deref()
    }
    /// Creation time, Unix milliseconds.
    #[getter]
    fn created_ms(&self) -> i64 {
        self.inner.created_ms
    }
    /// The metadata object, decoded.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        metadata_object(py, &self.inner.metadata)
    }
    fn __repr__(&self) -> String {
        format!(
            "Response(id={:?}, status={:?}, model={:?})",
            self.inner.id,
            self.inner.status.as_str(),
            self.inner.model
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
/// read, so reading an attribute costs no decoding.
#[pyclass(frozen, module = "threadloom._core")]
pub struct Turn {
    key: ids::TurnKey,
    parent: Option<ids::TurnKey>,
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
    fn new(py: Python<'_>, raw: &store::turn::RawTurn<'_>) -> PyResult<Turn> {
        let text = |bytes: &[u8]| {
            PyString::from_bytes(py, bytes)
                .map(Bound::unbind)
                .map_err(|_| PyErr::from(store::turn::corrupt(&raw.id, "text is not UTF-8")))
        };
        Ok(Turn {
            key: raw.id,
            parent: raw.parent,
            role: role_name(py, raw.role).clone().unbind(),
            content: text(raw.content)?,
            reasoning: raw.reasoning.map(text).transpose()?,
            tool: raw.tool.map(text).transpose()?,
            depth: raw.depth,
            created_ms: raw.created_ms,
        })
    }
}

#[pymethods]
impl Turn {
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
            self.role.bind(py).to_cow()?
        ))
    }
}

/// What an append wrote.
#[pyclass(frozen, module = "threadloom._core")]
pub struct Appended {
    /// Ids of the new turns, in order.
    #[pyo3(get)]
    turn_ids: Vec<String>,
    /// The recorded response, when one was asked for.
    #[pyo3(get)]
    response: Option<Py<Response>>,
    /// The thread after the append, when appending to a thread.
    #[pyo3(get)]
    thread: Option<Py<Thread>>,
}

/// One page of `list_threads`.
#[pyclass(frozen, module = "threadloom._core")]
pub struct ThreadPage {
    /// The threads, most recently active first.
    #[pyo3(get)]
    threads: Py<PyList>,
    /// Pass as `after` to get the next page; None on the last page.
    #[pyo3(get)]
    next_cursor: Option<String>,
}

pub(crate) fn parse_turns(turns: &Bound<'_, PyAny>) -> PyResult<Vec<NewTurn>> {
    let mut out = Vec::new();
    for (i, item) in turns.try_iter()?.enumerate() {
        let item = item?;
        let dict = item.cast::<PyDict>().map_err(|_| {
            Error::InvalidInput(format!("turns[{i}] must be a dict with role and content"))
        })?;
        let field = |name: &str| -> PyResult<Option<String>> {
            match dict.get_item(name)? {
                None => Ok(None),
                Some(v) if v.is_none() => Ok(None),
                Some(v) => v.extract::<String>().map(Some).map_err(|_| {
                    Error::InvalidInput(format!("turns[{i}].{name} must be a string")).into()
                }),
            }
        };
        let role = field("role")?
            .ok_or_else(|| Error::InvalidInput(format!("turns[{i}].role is missing")))?;
        let content = field("content")?
            .ok_or_else(|| Error::InvalidInput(format!("turns[{i}].content is missing")))?;
        out.push(NewTurn {
            role: Role::parse(&role)
                .map_err(|e| Error::InvalidInput(format!("turns[{i}].role: {e}")))?,
            content,
            reasoning: field("reasoning")?,
            tool: field("tool")?,
        });
    }
    Ok(out)
}

/// `expected_head` as the callers give it: a turn id, "" for an empty thread, or None.
fn parse_expected_head(text: Option<&str>) -> PyResult<Option<Option<ids::TurnKey>>> {
    Ok(match text {
        None => None,
        Some("") => Some(None),
        Some(id) => Some(Some(ids::parse_turn_id(id)?)),
    })
}

pub(crate) fn anchor_from(
    thread: Option<String>,
    response: Option<String>,
    turn: Option<String>,
) -> PyResult<Anchor> {
    match (thread, response, turn) {
        (None, None, None) => Ok(Anchor::Root),
        (Some(t), None, None) => Ok(Anchor::Thread(t)),
        (None, Some(r), None) => Ok(Anchor::Response(r)),
        (None, None, Some(t)) => Ok(Anchor::Turn(ids::parse_turn_id(&t)?)),
        _ => {
            Err(Error::InvalidInput("give at most one of thread, response and turn".into()).into())
        }
    }
}

/// The conversation store: an LMDB file of turns, responses and threads.
///
/// Every method releases the GIL while it touches the store. Several threads and processes
/// may use the same path at once.
#[pyclass(frozen, module = "threadloom._core")]
pub struct Store {
    pub(crate) inner: Arc<store::Store>,
}

#[pymethods]
impl Store {
    #[new]
    #[pyo3(signature = (path, *, map_size=None, max_map_size=None, retention=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        map_size: Option<usize>,
        max_map_size: Option<usize>,
        retention: Option<Retention>,
    ) -> PyResult<Self> {
        let mut options = StoreOptions::default();
        if let Some(m) = map_size {
            options.map_size = m;
        }
        if let Some(m) = max_map_size {
            options.max_map_size = m;
        }
        if let Some(r) = retention {
            options.retention = r.inner;
        }
        let inner = py.detach(|| store::Store::open(&path, options))?;
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// The store's directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_owned()
    }

    /// The store's retention rules.
    #[getter]
    fn retention(&self) -> Retention {
        Retention {
            inner: *self.inner.retention(),
        }
    }

    /// The on-disk format version.
    #[getter]
    fn format_version(&self, py: Python<'_>) -> PyResult<u32> {
        Ok(py.detach(|| self.inner.format_version())?)
    }

    /// Creates a thread (a generated `thread_...` id when none is given). With `exist_ok`, an
    /// existing thread of that id is returned unchanged.
    #[pyo3(signature = (thread_id=None, *, owner="default", metadata=None, visible=true, exist_ok=false))]
    fn create_thread(
        &self,
        py: Python<'_>,
        thread_id: Option<String>,
        owner: &str,
        metadata: Option<&Bound<'_, PyAny>>,
        visible: bool,
        exist_ok: bool,
    ) -> PyResult<Thread> {
        let metadata = metadata_text(metadata)?;
        let inner = py.detach(|| {
            self.inner.create_thread(
                owner,
                thread_id.as_deref(),
                metadata.as_deref(),
                visible,
                exist_ok,
            )
        })?;
        Ok(Thread { inner })
    }

    /// The thread, or NotFound (also for another owner's or an expired thread).
    #[pyo3(signature = (thread_id, *, owner="default"))]
    fn get_thread(&self, py: Python<'_>, thread_id: String, owner: &str) -> PyResult<Thread> {
        let inner = py.detach(|| self.inner.get_thread(owner, &thread_id))?;
        Ok(Thread { inner })
    }

    /// One page of the owner's visible (or hidden) threads, most recently active first.
    #[pyo3(signature = (*, owner="default", visible=true, limit=20, after=None))]
    fn list_threads(
        &self,
        py: Python<'_>,
        owner: &str,
        visible: bool,
        limit: usize,
        after: Option<String>,
    ) -> PyResult<ThreadPage> {
        let page = py.detach(|| {
            self.inner
                .list_threads(owner, visible, limit, after.as_deref())
        })?;
        let threads = PyList::empty(py);
        for t in page.threads {
            threads.append(Thread { inner: t })?;
        }
        Ok(ThreadPage {
            threads: threads.unbind(),
            next_cursor: page.next_cursor,
        })
    }

    /// Replaces the metadata and/or changes the state (open <-> locked, -> archived).
    #[pyo3(signature = (thread_id, *, owner="default", metadata=None, state=None))]
    fn update_thread(
        &self,
        py: Python<'_>,
        thread_id: String,
        owner: &str,
        metadata: Option<&Bound<'_, PyAny>>,
        state: Option<String>,
    ) -> PyResult<Thread> {
        let metadata = metadata_text(metadata)?;
        let state = state.as_deref().map(ThreadState::parse).transpose()?;
        let inner = py.detach(|| {
            self.inner
                .update_thread(owner, &thread_id, metadata.as_deref(), state)
        })?;
        Ok(Thread { inner })
    }

    /// Deletes the thread and every turn that no other thread or live response reaches.
    #[pyo3(signature = (thread_id, *, owner="default"))]
    fn delete_thread(&self, py: Python<'_>, thread_id: String, owner: &str) -> PyResult<()> {
        Ok(py.detach(|| self.inner.delete_thread(owner, &thread_id))?)
    }

    /// Appends turns (dicts with role, content and optional reasoning) after a thread's head,
    /// a response, a turn, or as a new conversation when no anchor is given, in one durable
    /// transaction. With `response`, records them under a new response id. `expected_head`
    /// (a turn id, or "" for an empty thread) refuses the append if the thread moved on;
    /// `anchor_window` refuses response anchors older than the retention's window.
    #[pyo3(signature = (turns, *, owner="default", thread=None, after_response=None, after_turn=None, response=None, expected_head=None, anchor_window=false))]
    #[allow(clippy::too_many_arguments)]
    fn append(
        &self,
        py: Python<'_>,
        turns: &Bound<'_, PyAny>,
        owner: &str,
        thread: Option<String>,
        after_response: Option<String>,
        after_turn: Option<String>,
        response: Option<ResponseInfo>,
        expected_head: Option<String>,
        anchor_window: bool,
    ) -> PyResult<Appended> {
        let turns = parse_turns(turns)?;
        let anchor = anchor_from(thread, after_response, after_turn)?;
        let expected_head = parse_expected_head(expected_head.as_deref())?;
        let options = AppendOptions {
            expected_head,
            anchor_window,
        };
        let response = response.map(|r| r.inner);
        let out = py.detach(|| {
            self.inner
                .append(owner, &anchor, &turns, response.as_ref(), &options)
        })?;
        Ok(Appended {
            turn_ids: out.turn_ids.iter().map(ids::turn_id_string).collect(),
            response: out
                .response
                .map(|r| Py::new(py, Response { inner: r }))
                .transpose()?,
            thread: out
                .thread
                .map(|t| Py::new(py, Thread { inner: t }))
                .transpose()?,
        })
    }

    /// Points a thread at a new path: `turns` written after `after_turn` (None: a new root),
    /// the head moving to the last of them, or to `after_turn` when there are none (an empty
    /// thread when neither is given), in one durable transaction. Turns never change: the old
    /// path stays for the responses and threads that reach it. Refused (StateConflict) on a
    /// locked or archived thread and, with `expected_head` ("" for an empty thread), when the
    /// thread moved on.
    #[pyo3(signature = (thread_id, turns=None, *, owner="default", after_turn=None, expected_head=None))]
    fn rebase_thread(
        &self,
        py: Python<'_>,
        thread_id: String,
        turns: Option<&Bound<'_, PyAny>>,
        owner: &str,
        after_turn: Option<String>,
        expected_head: Option<String>,
    ) -> PyResult<Thread> {
        let turns = turns.map(parse_turns).transpose()?.unwrap_or_default();
        let base = after_turn.as_deref().map(ids::parse_turn_id).transpose()?;
        let expected_head = parse_expected_head(expected_head.as_deref())?;
        let inner = py.detach(|| {
            self.inner
                .rebase_thread(owner, &thread_id, base, &turns, expected_head)
        })?;
        Ok(Thread { inner })
    }

    /// The conversation ending at a thread's head, a response or a turn, oldest first; with
    /// `limit`, only its newest `limit` turns (page back with `turn=` the oldest one's parent).
    #[pyo3(signature = (*, owner="default", thread=None, response=None, turn=None, limit=None))]
    fn history(
        &self,
        py: Python<'_>,
        owner: &str,
        thread: Option<String>,
        response: Option<String>,
        turn: Option<String>,
        limit: Option<usize>,
    ) -> PyResult<Py<PyList>> {
        let anchor = anchor_from(thread, response, turn)?;
        if anchor == Anchor::Root {
            return Err(Error::InvalidInput("give one of thread, response and turn".into()).into());
        }
        let limit = limit.unwrap_or(usize::MAX);
        let buffer = py.detach(|| self.inner.history_tail(owner, &anchor, limit))?;
        let turns = (0..buffer.len())
            .map(|i| Bound::new(py, Turn::new(py, &buffer.raw(i)?)?))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, turns)?.unbind())
    }

    /// The response, or NotFound (also for another owner's or an expired one).
    #[pyo3(signature = (response_id, *, owner="default"))]
    fn get_response(&self, py: Python<'_>, response_id: String, owner: &str) -> PyResult<Response> {
        let inner = py.detach(|| self.inner.get_response(owner, &response_id))?;
        Ok(Response { inner })
    }

    /// Records an announced response whose generation runs (an opaque payload), so that a
    /// restart after a crash can still store it; see `pending`.
    #[pyo3(signature = (response_id, payload, *, owner))]
    fn put_pending(
        &self,
        py: Python<'_>,
        response_id: String,
        payload: Vec<u8>,
        owner: &str,
    ) -> PyResult<()> {
        Ok(py.detach(|| self.inner.put_pending(owner, &response_id, payload))?)
    }

    /// Removes a pending record (its response is stored), if there is one.
    #[pyo3(signature = (response_id, *, owner))]
    fn remove_pending(&self, py: Python<'_>, response_id: String, owner: &str) -> PyResult<()> {
        Ok(py.detach(|| self.inner.remove_pending(owner, &response_id))?)
    }

    /// The payload recorded for this owner's running response, or None.
    #[pyo3(signature = (response_id, *, owner))]
    fn get_pending(
        &self,
        py: Python<'_>,
        response_id: String,
        owner: &str,
    ) -> PyResult<Option<Py<PyBytes>>> {
        let found = py.detach(|| self.inner.get_pending(owner, &response_id))?;
        Ok(found.map(|b| PyBytes::new(py, &b).unbind()))
    }

    /// Every pending record as (owner, response id, payload).
    fn pending(&self, py: Python<'_>) -> PyResult<Vec<(String, String, Py<PyBytes>)>> {
        let records = py.detach(|| self.inner.pending())?;
        Ok(records
            .into_iter()
            .map(|(owner, id, payload)| (owner, id, PyBytes::new(py, &payload).unbind()))
            .collect())
    }

    /// Deletes the response and the turns only it reached.
    #[pyo3(signature = (response_id, *, owner="default"))]
    fn delete_response(&self, py: Python<'_>, response_id: String, owner: &str) -> PyResult<()> {
        Ok(py.detach(|| self.inner.delete_response(owner, &response_id))?)
    }

    /// Deletes expired threads and responses; returns how many threads, responses and turns.
    #[pyo3(signature = ())]
    fn sweep<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = py.detach(|| self.inner.sweep())?;
        let d = PyDict::new(py);
        d.set_item("threads", stats.threads)?;
        d.set_item("responses", stats.responses)?;
        d.set_item("turns", stats.turns)?;
        Ok(d)
    }

    /// Counts of threads, responses and turns, and the file and map sizes in bytes.
    #[pyo3(signature = ())]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = py.detach(|| self.inner.stats())?;
        let d = PyDict::new(py);
        d.set_item("threads", stats.threads)?;
        d.set_item("responses", stats.responses)?;
        d.set_item("turns", stats.turns)?;
        d.set_item("file_bytes", stats.file_bytes)?;
        d.set_item("map_bytes", stats.map_bytes)?;
        Ok(d)
    }

    /// Checks the store's internal consistency; raises StoreFormatError on the first problem.
    #[pyo3(signature = ())]
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.inner.verify())?)
    }

    fn __repr__(&self) -> String {
        format!("Store({:?})", self.inner.path().display().to_string())
    }
}
