//! Counters and gauges for `/metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The relay's numbers. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    accepted: AtomicU64,
    delivered: AtomicU64,
    deferred: AtomicU64,
    bounced: AtomicU64,
    notices: AtomicU64,
    callout_hits: AtomicU64,
    callout_misses: AtomicU64,
    queue_depth: AtomicU64,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }
    pub fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
    pub fn deferred(&self) {
        self.deferred.fetch_add(1, Ordering::Relaxed);
    }
    pub fn bounced(&self) {
        self.bounced.fetch_add(1, Ordering::Relaxed);
    }
    pub fn notice(&self) {
        self.notices.fetch_add(1, Ordering::Relaxed);
    }
    pub fn callout(&self, hit: bool) {
        let c = if hit {
            &self.callout_hits
        } else {
            &self.callout_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn rejected(&self, reason: &'static str) {
        *self
            .rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
    pub fn set_queue_depth(&self, n: u64) {
        self.queue_depth.store(n, Ordering::Relaxed);
    }

    /// The exposition text; `oldest` is the arrival of the oldest queued
    /// message.
    pub fn render(&self, oldest: Option<SystemTime>) -> String {
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        one(
            "mxguard_queue_messages",
            "gauge",
            "Messages in the queue.",
            g(&self.queue_depth),
        );
        one(
            "mxguard_accepted_total",
            "counter",
            "Messages accepted and spooled.",
            g(&self.accepted),
        );
        one(
            "mxguard_delivered_total",
            "counter",
            "Recipients delivered to the next hop.",
            g(&self.delivered),
        );
        one(
            "mxguard_deferred_total",
            "counter",
            "Recipient attempts deferred (to be retried).",
            g(&self.deferred),
        );
        one(
            "mxguard_bounced_total",
            "counter",
            "Recipients given up on (permanent failure or lifetime).",
            g(&self.bounced),
        );
        one(
            "mxguard_notices_total",
            "counter",
            "Delivery status notifications queued.",
            g(&self.notices),
        );
        one(
            "mxguard_callout_cache_hits_total",
            "counter",
            "Recipient checks answered from the callout cache.",
            g(&self.callout_hits),
        );
        one(
            "mxguard_callout_cache_misses_total",
            "counter",
            "Recipient checks that asked the primary.",
            g(&self.callout_misses),
        );
        let age = oldest
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        out.push_str(&format!(
            "# HELP mxguard_queue_oldest_age_seconds Age of the oldest queued message.\n\
             # TYPE mxguard_queue_oldest_age_seconds gauge\nmxguard_queue_oldest_age_seconds {age:.0}\n"
        ));
        out.push_str(
            "# HELP mxguard_rejections_total SMTP refusals by reason.\n# TYPE mxguard_rejections_total counter\n",
        );
        for (reason, n) in self
            .rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            out.push_str(&format!(
                "mxguard_rejections_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        out
    }
}
