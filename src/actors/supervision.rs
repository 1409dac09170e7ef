use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Restart intensity in the manner of Erlang/OTP supervisors: at most
/// `max_restarts` restarts within `window`, with exponential backoff between
/// them. One more restart inside the window escalates the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub window: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(10),
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RestartPolicy {
    /// Returns the pause before the `recent`-th restart within the window: the base
    /// backoff, doubled for each earlier restart, at most `max_backoff`.
    pub fn backoff(&self, recent: usize) -> Duration {
        let doublings = u32::try_from(recent.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(16);
        self.base_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

/// The action a supervisor takes on one more failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    Restart { backoff: Duration },
    Escalate,
}

/// The restart history of one supervised actor.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// Records a failure at `now` and decides what follows.
    pub fn record(&mut self, now: Instant) -> RestartDecision {
        while self
            .recent
            .front()
            .is_some_and(|&at| now.duration_since(at) > self.policy.window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);

        if self.recent.len() > self.policy.max_restarts {
            return RestartDecision::Escalate;
        }
        RestartDecision::Restart {
            backoff: self.policy.backoff(self.recent.len()),
        }
    }
}

/// A failure that supervision could not contain. Once triggered, readiness
/// turns false and the process stops with a non-zero exit code, so that its
/// orchestrator restarts it.
#[derive(Debug, Default)]
pub struct Escalation {
    triggered: AtomicBool,
    notify: Notify,
}

impl Escalation {
    pub fn trigger(&self) {
        self.triggered.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    pub fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::SeqCst)
    }

    /// Waits until the escalation is triggered. Meant for one waiter.
    pub async fn wait(&self) {
        if self.is_triggered() {
            return;
        }
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(10),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        }
    }

    #[test]
    fn backoff_doubles_up_to_maximum() {
        let policy = policy();
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(3), Duration::from_millis(300), "capped");
        assert_eq!(
            policy.backoff(usize::MAX),
            Duration::from_millis(300),
            "no overflow"
        );
    }

    #[test]
    fn tracker_escalates_past_intensity() {
        let mut tracker = RestartTracker::new(policy());
        let start = Instant::now();
        let decisions: Vec<_> = (0..4)
            .map(|n| tracker.record(start + Duration::from_secs(n)))
            .collect();

        assert_eq!(
            decisions[0],
            RestartDecision::Restart {
                backoff: Duration::from_millis(100)
            }
        );
        assert_eq!(
            decisions[2],
            RestartDecision::Restart {
                backoff: Duration::from_millis(300)
            }
        );
        assert_eq!(
            decisions[3],
            RestartDecision::Escalate,
            "a fourth restart within 10 s"
        );
    }

    #[test]
    fn tracker_forgets_old_restarts() {
        let mut tracker = RestartTracker::new(policy());
        let start = Instant::now();
        for n in 0..3 {
            tracker.record(start + Duration::from_secs(n));
        }

        let later = tracker.record(start + Duration::from_secs(30));

        assert_eq!(
            later,
            RestartDecision::Restart {
                backoff: Duration::from_millis(100)
            },
            "restarts outside the window no longer count"
        );
    }

    #[tokio::test]
    async fn escalation_wakes_waiter() {
        let escalation = Escalation::default();
        escalation.trigger();
        escalation.wait().await;
        assert!(escalation.is_triggered());
    }
}
