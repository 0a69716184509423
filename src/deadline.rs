//! The deadline of the call being served, for the layers under transport.
//!
//! `observability::layers` (the deadline layer) sets it (the shorter of the server's limit and the
//! client's `grpc-timeout`) around the handler; the store reads it to give
//! each transaction a `statement_timeout` no longer than the time left, so
//! Postgres itself stops a statement when its call's deadline passes. A
//! dropped future stops our side at the deadline; without this the
//! statement would go on in Postgres (a write waiting on a lock, holding a
//! pooled connection) until the server-wide timeout.
//!
//! A task-local: set and read on the task that polls the call. Work spawned
//! off it (Redis fills) sees no deadline.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use tokio::task::futures::TaskLocalFuture;

tokio::task_local! {
    static DEADLINE: Option<Instant>;
}

/// Runs `call` with `deadline` visible to `remaining`. A named future, so
/// the layer that sets it need not box its own.
pub(crate) fn scope<F: Future>(
    deadline: Option<Instant>,
    call: F,
) -> TaskLocalFuture<Option<Instant>, F> {
    DEADLINE.scope(deadline, call)
}

/// Time left before the current call's deadline; `None` outside a call or
/// for a call without one.
pub(crate) fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|deadline| deadline.map(|d| d.saturating_duration_since(Instant::now())))
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_deadline_is_seen_inside_the_call_only() {
        assert_eq!(remaining(), None);
        let deadline = Instant::now() + Duration::from_secs(2);
        let left = scope(Some(deadline), async { remaining() }).await;
        assert!(left.is_some_and(|l| l > Duration::from_secs(1) && l <= Duration::from_secs(2)));
        assert_eq!(scope(None, async { remaining() }).await, None);
        let past = scope(Some(Instant::now()), async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            remaining()
        })
        .await;
        assert_eq!(past, Some(Duration::ZERO));
    }
}
