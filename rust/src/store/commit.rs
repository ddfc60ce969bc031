//! Group commit. Every write of the store is a job; concurrent writers of one process queue
//! their jobs and one of them, the leader, runs the queued batch in ONE LMDB write transaction,
//! each job in its own nested transaction, and commits once: one pair of syncs for the whole
//! batch instead of one per write. A job that fails rolls back only its own nested transaction,
//! and later jobs of the batch see the effects of the earlier ones exactly as if they had run one
//! after another. Every writer returns only after the commit that holds its writes, with its own
//! result.
//!
//! The leader is an ordinary writer thread (no background thread): the first writer to find no
//! batch running takes everything queued (its own job included), runs it, wakes the others, and
//! returns. Writers that queued meanwhile form the next batch.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use heed::RwTxn;

use super::Store;
use crate::error::{Error, Result};

/// At most this many writes share one transaction, so that one commit never grows without bound.
const MAX_BATCH: usize = 64;

/// How a job ended inside its (nested) transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// It succeeded: keep its changes.
    Done,
    /// It failed (or panicked): roll back its changes; its error is its result.
    Failed,
    /// It ran out of map space: the whole batch must run again in a larger map.
    Full,
}

/// One queued write, its closure and its result slot erased behind a trait object.
trait Job: Send {
    /// Runs the job in `txn` and keeps its result until the batch is over. A job may run more
    /// than once (after the map grows); the last run's result counts.
    fn run(&mut self, store: &Store, txn: &mut RwTxn<'_>) -> Outcome;
    /// The batch did not commit: a job that had succeeded gets `error` as its result instead.
    fn fail(&mut self, error: &Error);
}

/// A job's result, or the panic of its closure (raised again in the thread that owns the job).
type Slot<R> = Arc<Mutex<Option<std::thread::Result<Result<R>>>>>;

struct TypedJob<F, R> {
    f: F,
    slot: Slot<R>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<F, R> Job for TypedJob<F, R>
where
    F: Fn(&Store, &mut RwTxn<'_>) -> Result<R> + Send,
    R: Send,
{
    fn run(&mut self, store: &Store, txn: &mut RwTxn<'_>) -> Outcome {
        let out = panic::catch_unwind(AssertUnwindSafe(|| (self.f)(store, txn)));
        let outcome = match &out {
            Ok(Ok(_)) => Outcome::Done,
            Ok(Err(Error::StoreFull(_))) => Outcome::Full,
            _ => Outcome::Failed,
        };
        *lock(&self.slot) = Some(out);
        outcome
    }

    fn fail(&mut self, error: &Error) {
        let mut slot = lock(&self.slot);
        // A job that failed on its own wrote nothing; its own error stays its answer. A job that
        // found the map full gets the final word on why it stays full.
        if matches!(*slot, None | Some(Ok(Ok(_)) | Ok(Err(Error::StoreFull(_))))) {
            *slot = Some(Ok(Err(error.clone())));
        }
    }
}

#[derive(Default)]
struct QueueState {
    /// Jobs waiting for a batch, oldest first, with their tickets.
    pending: VecDeque<(u64, Box<dyn Job>)>,
    /// The ticket of the newest queued job.
    issued: u64,
    /// Every job with a ticket up to this one has its final result.
    finished: u64,
    /// Whether a leader is running a batch now.
    leading: bool,
    /// How many batches have run (for tests and diagnostics).
    batches: u64,
}

/// The writers' queue of one store.
#[derive(Default)]
pub(super) struct CommitQueue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

impl CommitQueue {
    /// How many writes wait for the next batch.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        lock(&self.state).pending.len()
    }

    /// How many batches have run.
    #[cfg(test)]
    pub(super) fn batches(&self) -> u64 {
        lock(&self.state).batches
    }
}

/// Ends a batch, also when the leader unwinds: whatever happens, waiters must not wait forever.
struct Leadership<'a> {
    queue: &'a CommitQueue,
    last: u64,
}

impl Drop for Leadership<'_> {
    fn drop(&mut self) {
        let mut q = lock(&self.queue.state);
        q.finished = q.finished.max(self.last);
        q.leading = false;
        drop(q);
        self.queue.wake.notify_all();
    }
}

/// Why a batch's transaction did not commit.
enum BatchError {
    /// Another process grew the map past this process's mapping.
    Resized,
    /// The map is full.
    Full,
    /// Anything else: every job that had succeeded fails with this error.
    Failed(Error),
}

impl From<heed::Error> for BatchError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(heed::MdbError::MapResized) => BatchError::Resized,
            heed::Error::Mdb(heed::MdbError::MapFull) => BatchError::Full,
            other => BatchError::Failed(other.into()),
        }
    }
}

impl Store {
    /// Runs `f` in a write transaction that is committed (and synced) before this returns,
    /// sharing the transaction with concurrent writers of this process (see the module doc).
    /// `f` sees every earlier write; if it fails, none of its changes stay. It may run more than
    /// once (after the map grows), so it must not have effects outside the transaction, and it
    /// must not write to the store itself.
    pub(super) fn write<R, F>(&self, f: F) -> Result<R>
    where
        F: Fn(&Store, &mut RwTxn<'_>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let slot: Slot<R> = Arc::new(Mutex::new(None));
        let job = Box::new(TypedJob {
            f,
            slot: Arc::clone(&slot),
        });
        let queue = &self.commits;
        let mut q = lock(&queue.state);
        q.issued += 1;
        let ticket = q.issued;
        q.pending.push_back((ticket, job));
        while q.finished < ticket {
            if q.leading {
                q = queue.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead: take the oldest queued jobs (normally all of them, this one included).
            q.leading = true;
            q.batches += 1;
            let n = q.pending.len().min(MAX_BATCH);
            let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(n);
            let mut last = q.finished;
            for (t, job) in q.pending.drain(..n) {
                last = t;
                batch.push(job);
            }
            drop(q);
            let leadership = Leadership { queue, last };
            self.run_batch(&mut batch);
            drop(batch);
            drop(leadership);
            q = lock(&queue.state);
        }
        drop(q);
        let result = lock(&slot).take();
        match result {
            Some(Ok(result)) => result,
            Some(Err(payload)) => panic::resume_unwind(payload),
            None => Err(Error::Storage(
                "the write was abandoned: its batch ended without an answer".to_owned(),
            )),
        }
    }

    /// Runs and commits one batch, growing or adopting the map as needed; every job ends with
    /// its final result in its slot.
    fn run_batch(&self, jobs: &mut [Box<dyn Job>]) {
        loop {
            let (seen, outcome) = {
                let _shared = self.map_lock.read().unwrap_or_else(|p| p.into_inner());
                (self.env.info().map_size, self.try_batch(jobs))
            };
            let error = match outcome {
                Ok(()) => return,
                Err(BatchError::Resized) => match self.adopt_map() {
                    Ok(()) => continue,
                    Err(e) => e,
                },
                Err(BatchError::Full) => match self.grow_map(seen) {
                    Ok(()) => continue,
                    // At the maximum size: the batch cannot commit as a whole, but each write
                    // may still fit on its own, exactly as it would without batching.
                    Err(e) if jobs.len() == 1 => e,
                    Err(_) => {
                        for job in jobs.iter_mut() {
                            self.run_batch(std::slice::from_mut(job));
                        }
                        return;
                    }
                },
                Err(BatchError::Failed(e)) => e,
            };
            for job in jobs.iter_mut() {
                job.fail(&error);
            }
            return;
        }
    }

    /// One attempt at a batch. A lone job runs in the top-level transaction itself; in a larger
    /// batch each job gets a nested transaction, so that its failure undoes only its own changes.
    fn try_batch(&self, jobs: &mut [Box<dyn Job>]) -> std::result::Result<(), BatchError> {
        let mut txn = self.env.write_txn()?;
        let mut changed = false;
        if let [job] = jobs {
            match job.run(self, &mut txn) {
                Outcome::Done => changed = true,
                Outcome::Failed => {}
                Outcome::Full => return Err(BatchError::Full),
            }
        } else {
            for job in jobs.iter_mut() {
                let mut nested = self.env.nested_write_txn(&mut txn)?;
                match job.run(self, &mut nested) {
                    Outcome::Done => {
                        nested.commit()?;
                        changed = true;
                    }
                    Outcome::Failed => nested.abort(),
                    Outcome::Full => return Err(BatchError::Full),
                }
            }
        }
        if changed {
            txn.commit()?;
        } else {
            txn.abort();
        }
        Ok(())
    }
}
