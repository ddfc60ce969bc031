//! `threadloom._core.Store`: the LMDB conversation store. The records it returns are in
//! `records`, the rules it shares with the PostgreSQL store in `rules`.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::ids;
use crate::py::records::{
    metadata_text, Appended, Response, ResponseInfo, Thread, ThreadPage, Turn,
};
use crate::py::rules::{anchor_from, new_turns, parse_expected_head, Retention};
use crate::store::{self, decide, Anchor, AppendOptions, StoreOptions, ThreadState};

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
        Ok(Thread::from(inner))
    }

    /// The thread, or NotFound (also for another owner's or an expired thread).
    #[pyo3(signature = (thread_id, *, owner="default"))]
    fn get_thread(&self, py: Python<'_>, thread_id: String, owner: &str) -> PyResult<Thread> {
        let inner = py.detach(|| self.inner.get_thread(owner, &thread_id))?;
        Ok(Thread::from(inner))
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
            threads.append(Thread::from(t))?;
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
        Ok(Thread::from(inner))
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
    /// With both `thread` and `previous_response_id`, the turns go after the thread's head,
    /// which must be that response's last turn, and the new response records it as its
    /// previous one. `settle_pending` removes the pending record of `response.id` in the same
    /// transaction.
    #[pyo3(signature = (turns, *, owner="default", thread=None, previous_response_id=None, after_turn=None, response=None, expected_head=None, anchor_window=false, settle_pending=false))]
    #[allow(clippy::too_many_arguments)]
    fn append(
        &self,
        py: Python<'_>,
        turns: &Bound<'_, PyAny>,
        owner: &str,
        thread: Option<String>,
        previous_response_id: Option<String>,
        after_turn: Option<String>,
        response: Option<ResponseInfo>,
        expected_head: Option<String>,
        anchor_window: bool,
        settle_pending: bool,
    ) -> PyResult<Appended> {
        let turns = new_turns(turns)?;
        // A thread continued from the response at its head: the thread is the anchor, the
        // response is what the new one records as its previous.
        let (anchor, continued) = match (thread, previous_response_id) {
            (Some(t), Some(r)) if after_turn.is_none() => (Anchor::Thread(t), Some(r)),
            (thread, previous) => (anchor_from(thread, previous, after_turn)?, None),
        };
        let expected_head = parse_expected_head(expected_head.as_deref())?;
        let options = AppendOptions {
            expected_head,
            anchor_window,
            previous_response_id: continued,
            settle_pending,
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
                .map(|r| Py::new(py, Response::from(r)))
                .transpose()?,
            thread: out
                .thread
                .map(|t| Py::new(py, Thread::from(t)))
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
        let turns = turns.map(new_turns).transpose()?.unwrap_or_default();
        let base = after_turn.as_deref().map(ids::parse_turn_id).transpose()?;
        let expected_head = parse_expected_head(expected_head.as_deref())?;
        let inner = py.detach(|| {
            self.inner
                .rebase_thread(owner, &thread_id, base, &turns, expected_head)
        })?;
        Ok(Thread::from(inner))
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
        limit: Option<i64>,
    ) -> PyResult<Py<PyList>> {
        let anchor = anchor_from(thread, response, turn)?;
        let limit = decide::check_history(anchor == Anchor::Root, limit)?.unwrap_or(usize::MAX);
        let buffer = py.detach(|| self.inner.history_tail(owner, &anchor, limit))?;
        let turns = (0..buffer.len())
            .map(|i| Bound::new(py, Turn::from_raw(py, &buffer.raw(i)?)?))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, turns)?.unbind())
    }

    /// Records `response_id` (a reply stored outside the thread, after `after_turn` or as a
    /// new first message) as a branch of the thread, and drops the records of `replaces`, in
    /// one transaction. NotFound for a missing thread; LimitExceeded past `MAX_THREAD_BRANCHES`.
    #[pyo3(signature = (thread_id, response_id, *, owner="default", after_turn=None, replaces=Vec::new()))]
    fn add_branch(
        &self,
        py: Python<'_>,
        thread_id: String,
        response_id: String,
        owner: &str,
        after_turn: Option<String>,
        replaces: Vec<String>,
    ) -> PyResult<()> {
        let after = after_turn.as_deref().map(ids::parse_turn_id).transpose()?;
        Ok(py.detach(|| {
            self.inner
                .add_branch(owner, &thread_id, &response_id, after, &replaces)
        })?)
    }

    /// The thread's recorded branches: (response id, the turn it continues or None).
    #[pyo3(signature = (thread_id, *, owner="default"))]
    fn branches(
        &self,
        py: Python<'_>,
        thread_id: String,
        owner: &str,
    ) -> PyResult<Vec<(String, Option<String>)>> {
        let found = py.detach(|| self.inner.branches(owner, &thread_id))?;
        Ok(found
            .into_iter()
            .map(|(id, after)| (id, after.as_ref().map(ids::turn_id_string)))
            .collect())
    }

    /// For each of `turn_ids`, the ids of the turns that continue it (every branch made after
    /// it, whichever route made it), in creation order to the millisecond; empty for another
    /// owner's or a missing turn. One read for them all: a tree walk asks a level at once.
    #[pyo3(signature = (turn_ids, *, owner="default"))]
    fn children(
        &self,
        py: Python<'_>,
        turn_ids: Vec<String>,
        owner: &str,
    ) -> PyResult<Vec<Vec<String>>> {
        let keys = turn_ids
            .iter()
            .map(|t| ids::parse_turn_id(t))
            .collect::<crate::error::Result<Vec<_>>>()?;
        let found = py.detach(|| self.inner.children_of(owner, &keys))?;
        Ok(found
            .iter()
            .map(|kids| kids.iter().map(ids::turn_id_string).collect())
            .collect())
    }

    /// The response, or NotFound (also for another owner's or an expired one).
    #[pyo3(signature = (response_id, *, owner="default"))]
    fn get_response(&self, py: Python<'_>, response_id: String, owner: &str) -> PyResult<Response> {
        let inner = py.detach(|| self.inner.get_response(owner, &response_id))?;
        Ok(Response::from(inner))
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

    /// Keeps a summary the model wrote under `name` (the owner's own), replacing an earlier one.
    #[pyo3(signature = (name, text, *, owner))]
    fn put_summary(&self, py: Python<'_>, name: String, text: String, owner: &str) -> PyResult<()> {
        Ok(py.detach(|| self.inner.put_summary(owner, &name, &text))?)
    }

    /// The owner's summary kept under `name`, or None.
    #[pyo3(signature = (name, *, owner))]
    fn get_summary(&self, py: Python<'_>, name: String, owner: &str) -> PyResult<Option<String>> {
        Ok(py.detach(|| self.inner.get_summary(owner, &name))?)
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
