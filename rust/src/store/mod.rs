//! The LMDB conversation store: a forest of immutable turns, responses that point into it, and
//! named threads that point at a head turn. See docs/storage.md for the on-disk layout.

mod branches;
mod children;
mod commit;
pub mod decide;
mod keys;
mod pending;
pub mod records;
mod retention;
mod summaries;
pub mod turn;

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, RoTxn, WithoutTls};

use crate::error::{Error, Result};
use crate::ids::{self, TurnKey};
pub use branches::{BranchRecord, MAX_THREAD_BRANCHES};
pub use keys::{cursor as thread_cursor, parse_cursor as parse_thread_cursor};
pub use ops::{check_turns, new_turn_key};
pub use pending::{PendingRecord, MAX_PENDING_BYTES};
pub use records::{
    NewResponse, ResponseRecord, ResponseStatus, ThreadRecord, ThreadState, Usage,
    MAX_METADATA_BYTES, MAX_THREAD_MESSAGES,
};
pub use retention::Retention;
pub use summaries::check_summary;
pub use turn::{NewTurn, Role, TurnView};

/// The on-disk format this code reads and writes. Bump it with every layout change.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &[u8] = b"threadloom-store";
/// One turn's text may not exceed this (the record stores lengths as u32).
pub const MAX_TURN_BYTES: usize = 64 * 1024 * 1024;
const DEFAULT_MAP_SIZE: usize = 1 << 30;
const DEFAULT_MAX_MAP_SIZE: usize = 1 << 40;

/// Where new turns go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// Start a new conversation.
    Root,
    /// After the thread's head; the head moves to the last new turn.
    Thread(String),
    /// After a response's last turn (a branch when it is not the newest).
    Response(String),
    /// After any turn.
    Turn(TurnKey),
}

#[derive(Debug, Clone, Default)]
pub struct AppendOptions {
    /// Refuse the append (StateConflict) unless the thread's head is this one.
    pub expected_head: Option<Option<TurnKey>>,
    /// Refuse response anchors older than the retention's anchor window.
    pub anchor_window: bool,
    /// With a thread anchor: the response whose reply is the thread's head, which the new
    /// response continues and records as its previous one. Refused (StateConflict) when the
    /// head is no longer that response's last turn.
    pub previous_response_id: Option<String>,
    /// Remove the pending record of the new response's id in the same transaction: the
    /// stored reply and the end of its announcement commit together or not at all.
    pub settle_pending: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub turn_ids: Vec<TurnKey>,
    pub response: Option<ResponseRecord>,
    pub thread: Option<ThreadRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ThreadPage {
    pub threads: Vec<ThreadRecord>,
    /// Pass back as `after` for the next page; none on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub threads: u64,
    pub responses: u64,
    pub turns: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub threads: u64,
    pub responses: u64,
    pub turns: u64,
    pub file_bytes: u64,
    pub map_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub map_size: usize,
    /// The map doubles on demand up to this size, then writes fail with `StoreFull`.
    pub max_map_size: usize,
    pub retention: Retention,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            map_size: DEFAULT_MAP_SIZE,
            max_map_size: DEFAULT_MAX_MAP_SIZE,
            retention: Retention::default(),
        }
    }
}

type Db = Database<Bytes, Bytes>;

/// An open store. Cheap to share between threads; several processes may open the same path.
pub struct Store {
    env: Env<WithoutTls>,
    /// Readers and writers hold it shared; growing the map holds it exclusively, because LMDB
    /// allows a resize only while this process has no transaction open.
    map_lock: RwLock<()>,
    /// Writers of this process queue here and share transactions (group commit).
    commits: commit::CommitQueue,
    max_map_size: usize,
    retention: Retention,
    path: PathBuf,
    meta: Db,
    turns: Db,
    refs: Db,
    threads: Db,
    activity: Db,
    responses: Db,
    token_counts: Db,
    tombstones: Db,
    pending: Db,
    branches: Db,
    summaries: Db,
    children: Db,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Map sizes are multiples of 64 KiB: a multiple of every common OS page size (4, 16 and 64 KiB),
/// which LMDB (and heed's `resize`) require, and never smaller than 64 KiB.
fn round_to_page(size: usize) -> usize {
    const GRANULE: usize = 64 * 1024;
    size.div_ceil(GRANULE).max(1).saturating_mul(GRANULE)
}

/// The named databases of a store.
struct Dbs {
    meta: Db,
    turns: Db,
    refs: Db,
    threads: Db,
    activity: Db,
    responses: Db,
    token_counts: Db,
    tombstones: Db,
    pending: Db,
    branches: Db,
    summaries: Db,
    children: Db,
}

/// Creates (or opens) the databases and checks the format header, in one write transaction.
/// None when another process grew the map past this mapping (adopt it, then try again).
fn init(env: &Env<WithoutTls>, path: &Path) -> Result<Option<Dbs>> {
    let mut txn = match env.write_txn() {
        Err(heed::Error::Mdb(heed::MdbError::MapResized)) => return Ok(None),
        txn => txn?,
    };
    let mut create = |name: &str| -> Result<Db> { Ok(env.create_database(&mut txn, Some(name))?) };
    let dbs = Dbs {
        meta: create("meta")?,
        turns: create("turns")?,
        refs: create("turn_refs")?,
        threads: create("threads")?,
        activity: create("thread_activity")?,
        responses: create("responses")?,
        token_counts: create("token_counts")?,
        tombstones: create("thread_tombstones")?,
        // Added after format version 1 shipped; older code ignores them.
        pending: create("pending_responses")?,
        branches: create("thread_branches")?,
        summaries: create("summaries")?,
        children: create("turn_children")?,
    };
    let meta = dbs.meta;
    match meta.get(&txn, b"format")? {
        None => {
            meta.put(&mut txn, b"format", FORMAT_NAME)?;
            meta.put(&mut txn, b"version", &FORMAT_VERSION.to_le_bytes())?;
        }
        Some(name) if name != FORMAT_NAME => {
            return Err(Error::Format(format!(
                "{} is not a threadloom store",
                path.display()
            )))
        }
        Some(_) => {
            let version = meta
                .get(&txn, b"version")?
                .and_then(|v| <[u8; 4]>::try_from(v).ok())
                .map(u32::from_le_bytes);
            if version != Some(FORMAT_VERSION) {
                return Err(Error::Format(format!(
                    "store {} has format version {}; this threadloom reads version {FORMAT_VERSION}",
                    path.display(),
                    version.map_or("unknown".to_owned(), |v| v.to_string())
                )));
            }
        }
    }
    children::backfill(&mut txn, dbs.meta, dbs.turns, dbs.children)?;
    txn.commit()?;
    Ok(Some(dbs))
}

impl Store {
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store> {
        std::fs::create_dir_all(path).map_err(|e| {
            Error::Storage(format!(
                "cannot create store directory {}: {e}",
                path.display()
            ))
        })?;
        let map_size = round_to_page(options.map_size);
        // SAFETY: LMDB's lock file coordinates every process that opens this path; the store
        // never opens it with NO_LOCK and never truncates the file behind LMDB's back.
        let env = unsafe {
            EnvOpenOptions::new()
                .read_txn_without_tls()
                .map_size(map_size)
                .max_dbs(16)
                .max_readers(1022)
                .open(path)
        }
        .map_err(|e| match e {
            heed::Error::EnvAlreadyOpened => Error::Storage(format!(
                "store {} is already open in this process; share that Store instead of opening it again",
                path.display()
            )),
            e => Error::Storage(format!("cannot open store {}: {e}", path.display())),
        })?;
        let max_map_size = options.max_map_size.max(map_size);
        // A map too small even for the databases grows like any other write would.
        // Another process may grow it meanwhile: adopt its size and try again.
        let dbs = loop {
            match init(&env, path) {
                Err(Error::StoreFull(_)) if env.info().map_size < max_map_size => {
                    let doubled = round_to_page(env.info().map_size.saturating_mul(2));
                    // SAFETY: `init` has ended its transaction and the env is not shared yet.
                    unsafe { env.resize(doubled.min(round_to_page(max_map_size))) }?;
                }
                // SAFETY: as above; size 0 adopts the size recorded in the store.
                Ok(None) => unsafe { env.resize(0) }?,
                Ok(Some(dbs)) => break dbs,
                Err(e) => return Err(e),
            }
        };
        Ok(Store {
            env,
            map_lock: RwLock::new(()),
            commits: commit::CommitQueue::default(),
            max_map_size,
            retention: options.retention,
            path: path.to_owned(),
            meta: dbs.meta,
            turns: dbs.turns,
            refs: dbs.refs,
            threads: dbs.threads,
            activity: dbs.activity,
            responses: dbs.responses,
            token_counts: dbs.token_counts,
            tombstones: dbs.tombstones,
            pending: dbs.pending,
            summaries: dbs.summaries,
            branches: dbs.branches,
            children: dbs.children,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    pub fn format_version(&self) -> Result<u32> {
        self.read(|txn| {
            Ok(self
                .meta
                .get(txn, b"version")?
                .and_then(|v| <[u8; 4]>::try_from(v).ok())
                .map(u32::from_le_bytes)
                .unwrap_or(0))
        })
    }

    // ---- transactions -------------------------------------------------------------------

    /// Runs `f` in one read transaction, under the shared map lock. A map that another process
    /// grew past this process's mapping is adopted first (LMDB refuses to begin transactions
    /// until then). Writes go through `write` (commit.rs), which also grows the map.
    fn read<R>(&self, f: impl Fn(&RoTxn<'_, WithoutTls>) -> Result<R>) -> Result<R> {
        loop {
            let outcome = {
                let _shared = self.map_lock.read().unwrap_or_else(|p| p.into_inner());
                self.env.read_txn().map(|txn| f(&txn))
            };
            match outcome {
                Err(heed::Error::Mdb(heed::MdbError::MapResized)) => self.adopt_map()?,
                Err(e) => return Err(e.into()),
                Ok(result) => return result,
            }
        }
    }

    /// Maps the size another process recorded in the store after growing it.
    fn adopt_map(&self) -> Result<()> {
        let _exclusive = self.map_lock.write().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the exclusive map lock guarantees no transaction of this process is open;
        // size 0 makes LMDB adopt the size recorded in the store (at least its used size).
        unsafe { self.env.resize(0) }?;
        Ok(())
    }

    /// Doubles the map after a write found it full at size `seen`.
    fn grow_map(&self, seen: usize) -> Result<()> {
        let _exclusive = self.map_lock.write().unwrap_or_else(|p| p.into_inner());
        let current = self.env.info().map_size;
        if current > seen {
            // Another thread grew it meanwhile; try again at the new size.
            return Ok(());
        }
        if current >= self.max_map_size {
            return Err(Error::StoreFull(format!(
                "the store at {} is full: it reached its maximum map size of {} bytes",
                self.path.display(),
                self.max_map_size
            )));
        }
        // Another process may have grown the file past our map; adopt at least its size.
        let file = self.env.real_disk_size().unwrap_or(0) as usize;
        let wanted = round_to_page(current.max(file).saturating_mul(2));
        let new_size = wanted.min(round_to_page(self.max_map_size));
        // SAFETY: the exclusive map lock guarantees no transaction of this process is open.
        unsafe { self.env.resize(new_size) }?;
        Ok(())
    }
}

mod append;
mod history;
mod maintenance;
mod ops;
mod rebase;
mod responses;
pub use history::HistoryBuffer;

#[cfg(test)]
mod tests;
