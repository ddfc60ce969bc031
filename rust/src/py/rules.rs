//! The store's rules as Python sees them: how long records live (`Retention`), id formats,
//! owner, thread-state, metadata, turn and cursor checks. The LMDB store applies them inside
//! the core; the PostgreSQL store calls these same functions, so both accept, refuse and word
//! errors alike and there is no second copy of a rule to drift.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::error::Error;
use crate::ids::{self, TurnKey};
use crate::py::records::{metadata_text, turn_key, Response, Thread};
use crate::store::{self, Anchor, NewTurn, ResponseStatus, Role, ThreadState};

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
    pub(crate) inner: store::Retention,
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

    /// Whether `thread` has expired at `now_ms` (Unix milliseconds).
    fn thread_expired(&self, thread: PyRef<'_, Thread>, now_ms: i64) -> bool {
        let (created, activity) = thread.times();
        self.inner.thread_expired_at(created, activity, now_ms)
    }

    /// (oldest live last activity, oldest live creation) at `now_ms`: `thread_expired` as the
    /// two bounds a database query takes.
    fn thread_cutoffs(&self, now_ms: i64) -> (i64, i64) {
        self.inner.thread_cutoffs(now_ms)
    }

    /// Whether `response` has expired at `now_ms`.
    fn response_expired(&self, response: PyRef<'_, Response>, now_ms: i64) -> bool {
        self.inner
            .response_expired_at(response.anchor_fields().2, now_ms)
    }

    /// The oldest live response's creation time at `now_ms`.
    fn response_cutoff(&self, now_ms: i64) -> i64 {
        self.inner.response_cutoff(now_ms)
    }

    /// Raises unless `response` may be continued: StateConflict for a failed one, NotFound
    /// outside the anchor window when `windowed`.
    fn check_anchor(
        &self,
        response: PyRef<'_, Response>,
        now_ms: i64,
        windowed: bool,
    ) -> PyResult<()> {
        let (id, status, created_ms) = response.anchor_fields();
        let status = ResponseStatus::parse(status)?;
        Ok(self
            .inner
            .check_anchor_at(id, status, created_ms, now_ms, windowed)?)
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

/// Turns as the API takes them (dicts with role, content and optional reasoning and tool),
/// in the core's form; not yet checked against the store's limits.
pub(crate) fn new_turns(turns: &Bound<'_, PyAny>) -> PyResult<Vec<NewTurn>> {
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
pub(crate) fn parse_expected_head(text: Option<&str>) -> PyResult<Option<Option<TurnKey>>> {
    Ok(match text {
        None => None,
        Some("") => Some(None),
        Some(id) => Some(Some(ids::parse_turn_id(id)?)),
    })
}

/// Where turns go or a history ends: at most one of a thread, a response and a turn.
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

/// A new response id (`resp_` + 128 random bits) in the store's format, for naming a response
/// before it is stored (`ResponseInfo(id=...)`).
#[pyfunction]
#[pyo3(signature = ())]
pub fn new_response_id() -> String {
    ids::new_response_id()
}

/// A new thread id, `thread_` + 128 random bits.
#[pyfunction]
#[pyo3(signature = ())]
pub fn new_thread_id() -> String {
    ids::new_thread_id()
}

/// A new turn's 16-byte key: 48 bits of time (above the parent's) over 80 random bits.
#[pyfunction]
#[pyo3(signature = (now_ms, parent=None))]
pub fn new_turn_key<'py>(
    py: Python<'py>,
    now_ms: i64,
    parent: Option<&[u8]>,
) -> PyResult<Bound<'py, PyBytes>> {
    let parent = parent.map(turn_key).transpose()?;
    Ok(PyBytes::new(
        py,
        &store::new_turn_key(now_ms, parent.as_ref()),
    ))
}

/// The `msg_` id of a 16-byte turn key.
#[pyfunction]
pub fn turn_id_string(key: &[u8]) -> PyResult<String> {
    Ok(ids::turn_id_string(&turn_key(key)?))
}

/// The 16-byte key of a `msg_` id, or InvalidInput.
#[pyfunction]
pub fn parse_turn_id<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &ids::parse_turn_id(text)?))
}

/// Raises InvalidInput unless `thread_id` is 1 to 128 characters of `[A-Za-z0-9_.:-]`, not
/// `.` or `..`.
#[pyfunction]
pub fn validate_thread_id(thread_id: &str) -> PyResult<()> {
    Ok(ids::validate_thread_id(thread_id)?)
}

/// Raises InvalidInput unless `response_id` is a `resp_` id.
#[pyfunction]
pub fn validate_response_id(response_id: &str) -> PyResult<()> {
    Ok(ids::validate_response_id(response_id)?)
}

/// Checks a summary a store is asked to keep (owner, key and, when given, the text's size).
#[pyfunction]
#[pyo3(signature = (owner, name, text=None))]
pub fn check_summary(owner: &str, name: &str, text: Option<&str>) -> PyResult<()> {
    Ok(crate::store::check_summary(owner, name, text)?)
}

/// Raises InvalidInput unless `owner` is 1 to 128 characters without NUL.
#[pyfunction]
pub fn validate_owner(owner: &str) -> PyResult<()> {
    Ok(ids::validate_owner(owner)?)
}

/// The thread state named by `text`, or InvalidInput.
#[pyfunction]
pub fn parse_thread_state(text: &str) -> PyResult<&'static str> {
    Ok(ThreadState::parse(text)?.as_str())
}

/// Raises StateConflict unless a thread may go from state `old` to `new`.
#[pyfunction]
pub fn check_state_change(old: &str, new: &str) -> PyResult<()> {
    Ok(ThreadState::parse(old)?.check_transition(ThreadState::parse(new)?)?)
}

/// Metadata as the API takes it (a dict, JSON text in `str` or `bytes`, or None) checked and
/// re-encoded compactly as the store keeps it; None stays None.
#[pyfunction]
#[pyo3(signature = (value))]
pub fn normalize_metadata(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    let Some(text) = metadata_text(value)? else {
        return Ok(None);
    };
    Ok(Some(store::records::normalize_metadata(Some(&text))?))
}

/// Turns as an append takes them, checked as every write checks them (roles, text types,
/// sizes, tool data a JSON object): a list of (role index, content, reasoning, tool), the
/// texts UTF-8 encoded as they are stored; the role index is a position in `ROLES`.
#[pyfunction]
pub fn parse_turns<'py>(
    py: Python<'py>,
    turns: &Bound<'py, PyAny>,
) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    let parsed = parse_turns_checked(turns)?;
    let bytes = |s: &Option<String>| s.as_ref().map(|s| PyBytes::new(py, s.as_bytes()));
    parsed
        .iter()
        .map(|t| {
            (
                t.role as u8,
                PyBytes::new(py, t.content.as_bytes()),
                bytes(&t.reasoning),
                bytes(&t.tool),
            )
                .into_pyobject(py)
        })
        .collect()
}

pub(crate) fn parse_turns_checked(turns: &Bound<'_, PyAny>) -> PyResult<Vec<NewTurn>> {
    let parsed = new_turns(turns)?;
    store::check_turns(&parsed)?;
    Ok(parsed)
}

/// Where an append or a history is anchored: ("root", None), ("thread", id),
/// ("response", id) or ("turn", 16-byte key); InvalidInput for more than one.
#[pyfunction]
#[pyo3(signature = (thread=None, response=None, turn=None))]
pub fn parse_anchor<'py>(
    py: Python<'py>,
    thread: Option<String>,
    response: Option<String>,
    turn: Option<String>,
) -> PyResult<(&'static str, Option<Bound<'py, PyAny>>)> {
    Ok(match anchor_from(thread, response, turn)? {
        Anchor::Root => ("root", None),
        Anchor::Thread(t) => ("thread", Some(t.into_pyobject(py)?.into_any())),
        Anchor::Response(r) => ("response", Some(r.into_pyobject(py)?.into_any())),
        Anchor::Turn(k) => ("turn", Some(PyBytes::new(py, &k).into_any())),
    })
}

/// A `list_threads` cursor after the thread last active at `last_activity_ms` named `id`.
#[pyfunction]
pub fn thread_cursor(last_activity_ms: i64, thread_id: &str) -> String {
    store::thread_cursor(last_activity_ms, thread_id)
}

/// (last activity ms, thread id) of a `list_threads` cursor, or InvalidInput.
#[pyfunction]
pub fn parse_thread_cursor(cursor: &str) -> PyResult<(i64, String)> {
    Ok(store::parse_thread_cursor(cursor)?)
}

/// `text` quoted as the core quotes names in its error messages.
#[pyfunction]
pub fn quote(text: &str) -> String {
    format!("{text:?}")
}

// ---- the store's decisions (`store::decide`), for the PostgreSQL store ---------------------

/// A history read's rules (`decide::check_history`): an end named, a limit not negative.
#[pyfunction]
#[pyo3(signature = (root, limit=None))]
pub fn check_history(root: bool, limit: Option<i64>) -> PyResult<()> {
    store::decide::check_history(root, limit)?;
    Ok(())
}

/// Raises unless turns may be written after `thread`'s head: StateConflict for a thread that is
/// not open, or whose head is not `expected_head` (a turn id, "" for an empty thread; None:
/// not checked) or not `continued_turn` (the last turn of the response continued).
#[pyfunction]
#[pyo3(signature = (thread, expected_head=None, continued_turn=None))]
pub fn check_thread_write(
    thread: PyRef<'_, Thread>,
    expected_head: Option<&str>,
    continued_turn: Option<&str>,
) -> PyResult<()> {
    let (id, state, head) = thread.write_fields();
    let head = head.map(ids::parse_turn_id).transpose()?;
    let expected = parse_expected_head(expected_head)?;
    let continued = continued_turn.map(ids::parse_turn_id).transpose()?;
    Ok(store::decide::check_thread_write(
        id,
        ThreadState::parse(state)?,
        head,
        expected,
        continued,
    )?)
}

/// InvalidInput unless an append's shape may go: some turns, at most `output_count` of them
/// outputs, and turns outside a thread recorded under a response (`output_count` None: none).
#[pyfunction]
#[pyo3(signature = (turns, output_count, in_thread))]
pub fn check_append_shape(
    turns: usize,
    output_count: Option<u32>,
    in_thread: bool,
) -> PyResult<()> {
    Ok(store::decide::check_append_shape(
        turns,
        output_count,
        in_thread,
    )?)
}

/// The conversation's length once `added` turns follow `depth`, or LimitExceeded.
#[pyfunction]
#[pyo3(signature = (depth, added, rebase=false))]
pub fn check_length(depth: u32, added: usize, rebase: bool) -> PyResult<u32> {
    Ok(store::decide::check_length(depth, added, rebase)?)
}

/// A create of `thread_id` meeting a `live` thread or a `tombstoned` id: True to return the
/// live thread, False to create (clearing the tombstone); StateConflict or NotFound otherwise.
#[pyfunction]
pub fn check_create(
    thread_id: &str,
    exist_ok: bool,
    live: bool,
    tombstoned: bool,
) -> PyResult<bool> {
    Ok(store::decide::check_create(
        thread_id, exist_ok, live, tombstoned,
    )?)
}

/// StateConflict when a new response's id is `taken`.
#[pyfunction]
pub fn check_response_id_free(response_id: &str, taken: bool) -> PyResult<()> {
    Ok(store::decide::check_response_id_free(response_id, taken)?)
}

/// LimitExceeded when a thread holding `held` branch records may not record a `new` one.
#[pyfunction]
pub fn check_branch_room(thread_id: &str, held: usize, new: bool) -> PyResult<()> {
    Ok(store::decide::check_branch_room(thread_id, held, new)?)
}

/// StateConflict when a thread in `state` may not take new metadata (`state_change`: the same
/// update changes its state).
#[pyfunction]
pub fn check_metadata_change(thread_id: &str, state: &str, state_change: bool) -> PyResult<()> {
    Ok(store::decide::check_metadata_change(
        thread_id,
        ThreadState::parse(state)?,
        state_change,
    )?)
}

/// InvalidInput unless one page may list `limit` threads.
#[pyfunction]
pub fn check_page_limit(limit: usize) -> PyResult<()> {
    Ok(store::decide::check_page_limit(limit)?)
}

/// The NotFound error (not raised) for a missing record: `kind` "thread" or "response" with
/// its id, or "turn" with its 16-byte key.
#[pyfunction]
pub fn not_found(py: Python<'_>, kind: &str, id: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let error = match kind {
        "thread" => store::decide::thread_not_found(&id.extract::<String>()?),
        "response" => store::decide::response_not_found(&id.extract::<String>()?),
        "turn" => store::decide::turn_not_found(&turn_key(&id.extract::<Vec<u8>>()?)?),
        _ => return Err(Error::InvalidInput(format!("no record kind {kind:?}")).into()),
    };
    Ok(PyErr::from(error).into_value(py).into_any())
}
