//! Concurrent calls per caller, and in all, on one listener.
//!
//! Every call takes a [`CallPermit`] before it does any work and holds it
//! until its answer is complete (a streamed answer hands it to the stream,
//! which drops it when the last chunk is taken or the answer is cut off).
//! A caller at its limit is refused at once with RESOURCE_EXHAUSTED rather
//! than queued: a partner opening hundreds of streams gets errors, and the
//! other partners' calls go on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Limits concurrent calls per caller key and in all.
#[derive(Debug)]
pub struct CallLimiter {
    per_caller: usize,
    total: Arc<Semaphore>,
    callers: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A call's place under the limits; released when dropped.
#[derive(Debug)]
pub struct CallPermit {
    _caller: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

/// Callers tracked before idle ones are forgotten.
const MAX_TRACKED: usize = 4_096;

impl CallLimiter {
    /// At most `per_caller` calls of one caller, and `total` in all.
    pub fn new(per_caller: usize, total: usize) -> CallLimiter {
        CallLimiter {
            per_caller,
            total: Arc::new(Semaphore::new(total)),
            callers: Mutex::new(HashMap::new()),
        }
    }

    /// A permit for a call by `caller`, or RESOURCE_EXHAUSTED naming the
    /// limit that was hit.
    pub fn admit(&self, caller: &str) -> Result<CallPermit, Status> {
        let semaphore = {
            let mut callers = self
                .callers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if callers.len() >= MAX_TRACKED && !callers.contains_key(caller) {
                // Forget callers with nothing in progress.
                callers.retain(|_, s| s.available_permits() < self.per_caller);
            }
            Arc::clone(
                callers
                    .entry(caller.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_caller))),
            )
        };
        let caller_permit = semaphore.try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many calls in progress from this caller (at most {}); wait for one to end",
                self.per_caller
            ))
        })?;
        let total_permit = Arc::clone(&self.total).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(
                "this node is at its limit of calls in progress; retry shortly",
            )
        })?;
        Ok(CallPermit {
            _caller: caller_permit,
            _total: total_permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_at_its_limit_does_not_block_another() {
        let limiter = CallLimiter::new(2, 3);
        let a1 = limiter.admit("a").expect("a1");
        let _a2 = limiter.admit("a").expect("a2");
        let refused = limiter.admit("a").expect_err("a3");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let _b1 = limiter.admit("b").expect("b1");
        // The total is reached.
        assert_eq!(
            limiter.admit("c").expect_err("c1").code(),
            tonic::Code::ResourceExhausted
        );
        drop(a1);
        limiter.admit("a").expect("a again after one ended");
    }
}
