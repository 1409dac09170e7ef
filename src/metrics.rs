//! Prometheus metrics. Each running service has its own registry, so tests
//! that run several services in one process do not mix their numbers.
//!
//! Counters that actors keep in atomics (panics, restarts, deadline skips)
//! and the pool's live state are copied into the registry when `/metrics`
//! is scraped.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::actors::{Admission, BatchStats, PoolStats, StoreStats, WorkerStats};
use crate::db::DbPool;

/// Latency buckets in seconds, from 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Creates the histogram of database queue waits, in seconds.
pub fn queue_wait_histogram() -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(
        HistogramOpts::new(
            "db_queue_wait_seconds",
            "Time a request waited for a place in the database queue, in seconds.",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
    )
}

/// The metrics of one service and the live sources they are read from.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    unavailable: IntCounterVec,
    /// Messages sent to the user store and not yet replied to.
    pub store_in_flight: IntGauge,
    db_queue_depth: IntGauge,
    db_queue_capacity: IntGauge,
    db_pool_connections: IntGaugeVec,
    copied: CopiedCounters,
    sources: Sources,
}

/// Counters whose source of truth is an atomic elsewhere.
struct CopiedCounters {
    overload_rejections: IntCounter,
    worker_panics: IntCounter,
    deadline_skips: IntCounter,
    store_restarts: IntCounter,
    store_panics: IntCounter,
    user_batches: IntCounter,
    user_batched_writes: IntCounter,
    post_batches: IntCounter,
    post_batched_writes: IntCounter,
    read_batches: IntCounter,
    batched_reads: IntCounter,
    workers_replaced: IntCounter,
}

/// The live sources of the values read at scrape time.
pub struct Sources {
    pub pool: DbPool,
    pub admission: Admission,
    /// The histogram given to `Admission::with_wait_histogram`.
    pub queue_wait: Histogram,
    pub worker_stats: Arc<WorkerStats>,
    pub store_stats: Arc<StoreStats>,
    /// The batches of post writes.
    pub post_writes: Arc<BatchStats>,
    pub pool_stats: Arc<PoolStats>,
}

impl Metrics {
    pub fn new(sources: Sources) -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("troupe".to_owned()), None)?;
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };

        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by method, route template and status.",
            ),
            &["method", "route", "status"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency in seconds.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route"],
        )?;
        registry.register(Box::new(http_duration.clone()))?;
        let unavailable = IntCounterVec::new(
            Opts::new("unavailable_responses_total", "503 responses by reason."),
            &["reason"],
        )?;
        registry.register(Box::new(unavailable.clone()))?;
        registry.register(Box::new(sources.queue_wait.clone()))?;
        let db_pool_connections = IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "Database pool connections by state (idle or in_use).",
            ),
            &["state"],
        )?;
        registry.register(Box::new(db_pool_connections.clone()))?;
        let write_batches = IntCounterVec::new(
            Opts::new(
                "write_batches_total",
                "Batches of writes sent to the database, each one transaction, by kind of write.",
            ),
            &["writes"],
        )?;
        registry.register(Box::new(write_batches.clone()))?;
        let batched_writes = IntCounterVec::new(
            Opts::new(
                "batched_writes_total",
                "Writes sent to the database in batches, by kind of write.",
            ),
            &["writes"],
        )?;
        registry.register(Box::new(batched_writes.clone()))?;

        Ok(Self {
            http_requests,
            http_duration,
            unavailable,
            store_in_flight: gauge(
                "user_store_in_flight",
                "Messages sent to the user store and not yet replied to.",
            )?,
            db_queue_depth: gauge(
                "db_queue_depth",
                "Requests admitted to the database workers, queued or running.",
            )?,
            db_queue_capacity: gauge("db_queue_capacity", "Bound on db_queue_depth.")?,
            db_pool_connections,
            copied: CopiedCounters {
                overload_rejections: counter(
                    "db_queue_rejections_total",
                    "Requests rejected because the database queue stayed full.",
                )?,
                worker_panics: counter(
                    "db_worker_panics_total",
                    "Panics caught in database worker handlers.",
                )?,
                deadline_skips: counter(
                    "db_deadline_skips_total",
                    "Queries skipped because their deadline passed before they started.",
                )?,
                store_restarts: counter(
                    "user_store_restarts_total",
                    "Restarts of the user store.",
                )?,
                store_panics: counter(
                    "user_store_panics_total",
                    "Panics caught in user store handlers.",
                )?,
                user_batches: write_batches.with_label_values(&["users"]),
                user_batched_writes: batched_writes.with_label_values(&["users"]),
                post_batches: write_batches.with_label_values(&["posts"]),
                post_batched_writes: batched_writes.with_label_values(&["posts"]),
                read_batches: counter(
                    "user_read_batches_total",
                    "Queries that read several uncached users at once.",
                )?,
                batched_reads: counter(
                    "user_batched_reads_total",
                    "Uncached user reads answered by those queries.",
                )?,
                workers_replaced: counter(
                    "db_workers_replaced_total",
                    "Database workers replaced because they did not answer a health ping in time.",
                )?,
            },
            sources,
            registry,
        })
    }

    /// Counts one finished HTTP request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[method, route])
            .observe(seconds);
    }

    /// Returns how many HTTP requests have finished, over every route but
    /// the probes (see `is_probe`).
    pub fn requests_finished(&self) -> u64 {
        use prometheus::core::Collector;

        self.http_requests
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                let route = metric
                    .get_label()
                    .iter()
                    .find(|label| label.name() == "route");
                !route.is_some_and(|label| is_probe(label.value()))
            })
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum()
    }

    /// Counts one 503 response.
    pub fn observe_unavailable(&self, reason: &str) {
        self.unavailable.with_label_values(&[reason]).inc();
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        self.refresh();
        let mut text = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut text)?;
        String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// Copies the live values into the registry.
    fn refresh(&self) {
        let Sources {
            pool,
            admission,
            worker_stats,
            store_stats,
            post_writes,
            pool_stats,
            ..
        } = &self.sources;
        let state = pool.state();
        let idle = i64::from(state.idle_connections);
        self.db_pool_connections
            .with_label_values(&["idle"])
            .set(idle);
        self.db_pool_connections
            .with_label_values(&["in_use"])
            .set(i64::from(state.connections) - idle);
        self.db_queue_depth.set(admission.in_use() as i64);
        self.db_queue_capacity.set(admission.capacity() as i64);

        let copies = [
            (&self.copied.overload_rejections, admission.rejected()),
            (&self.copied.worker_panics, load(&worker_stats.panics)),
            (
                &self.copied.deadline_skips,
                load(&worker_stats.deadline_skips),
            ),
            (&self.copied.store_restarts, load(&store_stats.restarts)),
            (&self.copied.store_panics, load(&store_stats.panics)),
            (&self.copied.user_batches, load(&store_stats.writes.batches)),
            (
                &self.copied.user_batched_writes,
                load(&store_stats.writes.writes),
            ),
            (&self.copied.post_batches, load(&post_writes.batches)),
            (&self.copied.post_batched_writes, load(&post_writes.writes)),
            (&self.copied.read_batches, load(&store_stats.reads.batches)),
            (&self.copied.batched_reads, load(&store_stats.reads.reads)),
            (&self.copied.workers_replaced, load(&pool_stats.replaced)),
        ];
        for (counter, total) in copies {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }
}

/// Tells whether `route` is a health check or the metrics page. An
/// orchestrator or Prometheus calls them every few seconds, so counting them
/// as traffic would keep the service from ever looking quiet.
fn is_probe(route: &str) -> bool {
    matches!(
        route,
        "/healthz" | "/readyz" | "/metrics" | "/api/v1/healthz"
    )
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::db::{DatabaseUrl, PoolSettings};

    fn metrics(dir: &tempfile::TempDir) -> Metrics {
        let url = DatabaseUrl::Sqlite(dir.path().join("metrics.db"));
        // The pool opens only a file that exists, so migrate to create it.
        crate::db::migrations::run_pending(&url).unwrap();
        let settings = PoolSettings {
            max_size: 1,
            min_idle: Some(1),
            connection_timeout: Duration::from_secs(5),
            sqlite_busy_timeout: Duration::from_secs(1),
            pg_statement_timeout: Duration::from_secs(1),
        };
        Metrics::new(Sources {
            pool: DbPool::connect(&url, &settings).unwrap(),
            admission: Admission::unbounded(),
            queue_wait: queue_wait_histogram().unwrap(),
            worker_stats: Arc::default(),
            store_stats: Arc::default(),
            post_writes: Arc::default(),
            pool_stats: Arc::default(),
        })
        .unwrap()
    }

    #[test]
    fn requests_finished_skips_probes() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = metrics(&dir);

        for route in ["/healthz", "/readyz", "/metrics", "/api/v1/healthz"] {
            metrics.observe_request("GET", route, 200, 0.001);
        }
        let after_probes = metrics.requests_finished();
        metrics.observe_request("GET", "/api/v1/users/{id}", 200, 0.001);
        metrics.observe_request("POST", "/api/v1/users", 503, 0.001);
        metrics.observe_request("GET", "unmatched", 404, 0.001);

        assert_eq!(after_probes, 0, "probes are not traffic");
        assert_eq!(metrics.requests_finished(), 3, "every other request is");
    }
}
