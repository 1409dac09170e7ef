//! `MemoryReleaser`: gives memory back to the system once traffic stops.
//!
//! A burst leaves memory behind that nothing uses any more: SQLite page
//! caches filled to their limit, and freed blocks spread through the
//! allocator's arenas, which the allocator keeps for reuse. When a quiet
//! period follows activity, the releaser has every database worker shrink
//! its connection's cache, then has the allocator return its free pages.
//! Nothing happens while requests keep coming, so the cost (an estimated
//! few milliseconds) never lands on a busy service.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;

/// Asks a database worker, or every worker of a pool, to free the memory
/// its connection caches. Replies with the connections that freed some.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "usize")]
pub struct ReleaseMemory;

/// Asks the releaser to check for a quiet period now. It replies with the
/// connections that freed memory if it released, or `None` if it did not:
/// requests came in since the last check, or nothing came in since the
/// last release. The releaser sends itself one every check interval.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Option<usize>")]
pub struct CheckQuiet;

/// Reads a count that grows with every request the service finishes.
pub type ActivityCount = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Releases memory after a check interval with no finished request. See
/// the module documentation.
pub struct MemoryReleaser {
    activity: ActivityCount,
    pools: Vec<Recipient<ReleaseMemory>>,
    interval: Duration,
    /// The activity count at the last check; `None` before the first.
    seen: Option<u64>,
    /// Set once memory was released, until activity resumes.
    released: bool,
}

impl MemoryReleaser {
    /// Checks every `interval` and releases the memory of `pools` when the
    /// `activity` count did not move since the previous check.
    pub fn new(
        activity: ActivityCount,
        pools: Vec<Recipient<ReleaseMemory>>,
        interval: Duration,
    ) -> Self {
        Self {
            activity,
            pools,
            interval,
            seen: None,
            released: false,
        }
    }

    /// Records the activity count and returns whether this is the first
    /// quiet check since the last activity.
    fn quiet_again(&mut self) -> bool {
        let count = (self.activity)();
        if self.seen != Some(count) {
            self.seen = Some(count);
            self.released = false;
            return false;
        }
        !std::mem::replace(&mut self.released, true)
    }
}

impl Actor for MemoryReleaser {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.interval, |_, ctx| ctx.notify(CheckQuiet));
    }
}

impl Handler<CheckQuiet> for MemoryReleaser {
    type Result = ResponseFuture<Option<usize>>;

    fn handle(&mut self, _: CheckQuiet, _: &mut Context<Self>) -> Self::Result {
        if !self.quiet_again() {
            return Box::pin(async { None });
        }
        let replies: Vec<_> = self
            .pools
            .iter()
            .map(|pool| pool.send(ReleaseMemory))
            .collect();
        Box::pin(async move {
            // A pool that is gone has no memory left to free.
            let connections = join_all(replies).await.into_iter().flatten().sum();
            // The caches just freed go back to the allocator first, so the
            // trim returns their pages too.
            let trimmed = trim_allocator();
            tracing::debug!(connections, trimmed, "released memory after a quiet period");
            Some(connections)
        })
    }
}

/// Returns the allocator's free pages to the system. glibc keeps freed
/// memory in its arenas and returns only what lies at the top of each, so
/// after a burst most of it would stay resident. Returns whether memory was
/// returned; `false` where the allocator offers no such call.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_allocator() -> bool {
    // SAFETY: malloc_trim takes no pointers; it locks each arena while it
    // walks it, so it is safe to call while other threads allocate.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_allocator() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;

    /// Stands in for a worker pool: counts the requests it gets and frees
    /// memory on two connections.
    struct CountingPool(Arc<AtomicUsize>);

    impl Actor for CountingPool {
        type Context = Context<Self>;
    }

    impl Handler<ReleaseMemory> for CountingPool {
        type Result = usize;

        fn handle(&mut self, _: ReleaseMemory, _: &mut Context<Self>) -> usize {
            self.0.fetch_add(1, Ordering::SeqCst);
            2
        }
    }

    fn releaser() -> (Addr<MemoryReleaser>, Arc<AtomicU64>, Arc<AtomicUsize>) {
        let requests = Arc::new(AtomicU64::new(0));
        let released = Arc::new(AtomicUsize::new(0));
        let pools = vec![
            CountingPool(Arc::clone(&released)).start().recipient(),
            CountingPool(Arc::clone(&released)).start().recipient(),
        ];
        let count = Arc::clone(&requests);
        let activity: ActivityCount = Arc::new(move || count.load(Ordering::SeqCst));
        // The interval is long so that only the test's checks run.
        let addr = MemoryReleaser::new(activity, pools, Duration::from_secs(3600)).start();
        (addr, requests, released)
    }

    #[actix::test]
    async fn releases_once_per_quiet_period_after_activity() {
        let (releaser, requests, released) = releaser();

        // The first check only records the count.
        assert_eq!(releaser.send(CheckQuiet).await.ok(), Some(None));
        assert_eq!(releaser.send(CheckQuiet).await.ok(), Some(Some(4)));
        assert_eq!(released.load(Ordering::SeqCst), 2, "one request per pool");
        // Still quiet: nothing new to release.
        assert_eq!(releaser.send(CheckQuiet).await.ok(), Some(None));
        assert_eq!(released.load(Ordering::SeqCst), 2);

        requests.fetch_add(10, Ordering::SeqCst);
        assert_eq!(releaser.send(CheckQuiet).await.ok(), Some(None));
        assert_eq!(releaser.send(CheckQuiet).await.ok(), Some(Some(4)));
        assert_eq!(released.load(Ordering::SeqCst), 4);
    }

    #[actix::test]
    async fn never_releases_while_requests_keep_coming() {
        let (releaser, requests, released) = releaser();

        for _ in 0..5 {
            requests.fetch_add(1, Ordering::SeqCst);
            assert_eq!(releaser.send(CheckQuiet).await.ok(), Some(None));
        }
        assert_eq!(released.load(Ordering::SeqCst), 0);
    }
}
