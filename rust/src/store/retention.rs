//! The one place that says when threads and responses expire.

use crate::error::{Error, Result};
use crate::store::records::{ResponseRecord, ThreadRecord};

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
        now_ms - t.last_activity_ms > self.thread_inactivity_ms
            || now_ms - t.created_ms > self.thread_max_age_ms
    }

    pub fn response_expired(&self, r: &ResponseRecord, now_ms: i64) -> bool {
        now_ms - r.created_ms > self.response_ttl_ms
    }

    /// Whether `r` may be continued from: only completed and incomplete responses, and inside
    /// the anchor window when the caller's dialect has one.
    pub fn check_anchor(&self, r: &ResponseRecord, now_ms: i64, windowed: bool) -> Result<()> {
        if !r.status.is_anchor() {
            return Err(Error::StateConflict(format!(
                "response {} has status {} and cannot be continued",
                r.id,
                r.status.as_str()
            )));
        }
        if windowed && now_ms - r.created_ms > self.anchor_window_ms {
            return Err(Error::NotFound(format!(
                "response {} is older than the {} s window for continuing a response",
                r.id,
                self.anchor_window_ms / 1000
            )));
        }
        Ok(())
    }
}
