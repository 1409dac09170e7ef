use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request id: 1 to 64 characters of `[A-Za-z0-9._-]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    pub const MAX_LEN: usize = 64;

    /// Accepts a client-supplied id only if it is safe to echo and log.
    pub fn parse(raw: &str) -> Option<Self> {
        let valid = (1..=Self::MAX_LEN).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        valid.then(|| Self(raw.into()))
    }

    /// Makes a new random id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string().into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The request data that every message carries: the id, the
/// tracing span that actors enter so their log lines belong to the request,
/// and the deadline after which work that has not started is skipped.
#[derive(Clone, Debug)]
pub struct RequestCtx {
    pub request_id: RequestId,
    pub span: tracing::Span,
    pub deadline: Instant,
}

impl RequestCtx {
    pub fn new(request_id: RequestId, span: tracing::Span, budget: Duration) -> Self {
        Self {
            request_id,
            span,
            deadline: Instant::now() + budget,
        }
    }

    /// Creates a context for work that no client request caused, such as a readiness
    /// probe run at start-up.
    pub fn internal(budget: Duration) -> Self {
        let request_id = RequestId::generate();
        let span = tracing::info_span!("internal", request_id = %request_id);
        Self::new(request_id, span, budget)
    }

    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_accepts_safe_ids() {
        for raw in ["a", "req-1.2_3", &"x".repeat(64)] {
            assert!(
                RequestId::parse(raw).is_some(),
                "{raw:?} should be accepted"
            );
        }
    }

    #[test]
    fn request_id_rejects_unsafe_ids() {
        for raw in ["", &"x".repeat(65), "a b", "a\nb", "ä", "a/b", "a\"b"] {
            assert!(
                RequestId::parse(raw).is_none(),
                "{raw:?} should be rejected"
            );
        }
    }
}
