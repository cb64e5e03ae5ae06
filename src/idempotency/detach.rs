//! Work that must not be cancelled with its request, run in the request's own task.
//!
//! A claim recorded in the store, or an app call under an owned key, must run to its end even
//! when the sender hangs up and hyper drops the request's future: cut short, the key would be
//! held for its whole lease with no one to forward it, or the app's work would never be stored
//! and its retry forwarded a second time. Spawning that work on a task of its own guarantees it,
//! but costs every first-seen request two spawns, a wake-up of the other worker, and the request
//! crossing threads twice. [`Detached`] runs the work in place and only spawns what is left of
//! it when it is dropped unfinished, which is rare.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// `work`, polled in place; dropped before it finished, the rest is spawned on `tracker` (the
/// shutdown drain waits for it).
pub(super) fn detached<F>(work: F, tracker: &TaskTracker) -> Detached<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    // Boxed at once, and only once: an exchange's future is kilobytes, and every move of it is
    // a copy (wrapped in `Instrumented` first, it was copied three times per request).
    Detached { work: Some(Box::pin(work)), span: tracing::Span::current(), tracker: tracker.clone() }
}

type Work<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub(super) struct Detached<T: Send + 'static> {
    /// `None` once finished, or once a poll panicked (a panicked future cannot be resumed).
    work: Option<Work<T>>,
    /// The request's span: polled in place the work is inside it; spawned, it takes it along.
    span: tracing::Span,
    tracker: TaskTracker,
}

/// The work's output, or `Err` if it panicked: as a spawned task's `JoinError` would say, so that
/// a panic in the app (an embedding service's handler) is the request's 500, not its caller's.
impl<T: Send + 'static> Future for Detached<T> {
    type Output = Result<T, Panicked>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, Panicked>> {
        let this = self.get_mut();
        // Out of its slot while polled: if the poll panics, the work is dropped here (its drop
        // gives a lease back) and the drop below has nothing to spawn.
        let mut work = this.work.take().expect("a Detached future polled after it finished");
        match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Ready(done)) => Poll::Ready(Ok(done)),
            Ok(Poll::Pending) => {
                this.work = Some(work);
                Poll::Pending
            }
            Err(_) => Poll::Ready(Err(Panicked)),
        }
    }
}

#[derive(Debug)]
pub(super) struct Panicked;

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else { return };
        // Without a runtime (the process is ending) the work is dropped: a lease it holds is
        // given back, as a claim the process did not finish is.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let span = std::mem::replace(&mut self.span, tracing::Span::none());
            self.tracker.spawn_on(async move { drop(work.await) }.instrument(span), &runtime);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn dropped_unfinished_the_work_runs_to_its_end_on_the_tracker() {
        let tracker = TaskTracker::new();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (done, finished) = tokio::sync::oneshot::channel();
        let mut work = Box::pin(detached(
            async move {
                let _ = wait.await;
                let _ = done.send("finished");
            },
            &tracker,
        ));
        // Polled once, in place, then dropped as hyper drops a request whose sender hung up.
        assert!(tokio::time::timeout(Duration::ZERO, &mut work).await.is_err());
        assert!(tracker.is_empty(), "nothing is spawned while the request polls the work");
        drop(work);
        assert_eq!(tracker.len(), 1);
        go.send(()).unwrap();
        assert_eq!(finished.await, Ok("finished"));
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_nothing_is_spawned() {
        let tracker = TaskTracker::new();
        let out = detached(async { panic!("the app panicked") }, &tracker).await;
        assert!(out.is_err());
        let out: Result<u8, Panicked> = detached(async { 7 }, &tracker).await;
        assert_eq!(out.ok(), Some(7));
        assert!(tracker.is_empty());
    }
}
