//! The one place that says when threads and responses expire.

use crate::error::{Error, Result};
use crate::store::records::{ResponseRecord, ResponseStatus, ThreadRecord};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// A thread with no new message for this long expires.
    pub thread_inactivity_ms: i64,
    /// A thread older than this expires, active or not.
    pub thread_max_age_ms: i64,
    /// Responses expire this long after they were created.
    pub response_ttl_ms: i64,
    /// Dialects with a previous-response window (Freddy) refuse older anchors.
    pub anchor_window_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            thread_inactivity_ms: 90 * DAY_MS,
            thread_max_age_ms: 365 * DAY_MS,
            response_ttl_ms: 30 * DAY_MS,
            anchor_window_ms: DAY_MS,
        }
    }
}

impl Retention {
    pub fn thread_expired(&self, t: &ThreadRecord, now_ms: i64) -> bool {
        self.thread_expired_at(t.created_ms, t.last_activity_ms, now_ms)
    }

    /// Whether a thread created at `created_ms` and last active at `last_activity_ms` has
    /// expired at `now_ms`.
    pub fn thread_expired_at(&self, created_ms: i64, last_activity_ms: i64, now_ms: i64) -> bool {
        let (live_activity, live_created) = self.thread_cutoffs(now_ms);
        last_activity_ms < live_activity || created_ms < live_created
    }

    /// (oldest live last activity, oldest live creation): `thread_expired` as two bounds, the
    /// form a database query takes.
    pub fn thread_cutoffs(&self, now_ms: i64) -> (i64, i64) {
        (
            now_ms.saturating_sub(self.thread_inactivity_ms),
            now_ms.saturating_sub(self.thread_max_age_ms),
        )
    }

    pub fn response_expired(&self, r: &ResponseRecord, now_ms: i64) -> bool {
        self.response_expired_at(r.created_ms, now_ms)
    }

    /// Whether a response created at `created_ms` has expired at `now_ms`.
    pub fn response_expired_at(&self, created_ms: i64, now_ms: i64) -> bool {
        created_ms < self.response_cutoff(now_ms)
    }

    /// The oldest live response's creation time.
    pub fn response_cutoff(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.response_ttl_ms)
    }

    /// Whether `r` may be continued from.
    pub fn check_anchor(&self, r: &ResponseRecord, now_ms: i64, windowed: bool) -> Result<()> {
        self.check_anchor_at(&r.id, r.status, r.created_ms, now_ms, windowed)
    }

    /// Whether the response `id` may be continued from: only completed and incomplete
    /// responses, and inside the anchor window when the caller's dialect has one.
    pub fn check_anchor_at(
        &self,
        id: &str,
        status: ResponseStatus,
        created_ms: i64,
        now_ms: i64,
        windowed: bool,
    ) -> Result<()> {
        if !status.is_anchor() {
            return Err(Error::StateConflict(format!(
                "response {id} has status {} and cannot be continued",
                status.as_str()
            )));
        }
        if windowed && now_ms - created_ms > self.anchor_window_ms {
            return Err(Error::missing(
                "response",
                id,
                format!(
                    "response {id} is older than the {} s window for continuing a response",
                    self.anchor_window_ms / 1000
                ),
            ));
        }
        Ok(())
    }
}
