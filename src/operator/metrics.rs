//! The operator's Prometheus metrics: reconciles, errors by reason, duration, leadership and
//! drift repairs, in the OpenMetrics text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// One DatabaseConnection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub reason: String,
}

type HistogramFamily = Family<KindLabel, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: HistogramFamily,
    pub leader: Gauge,
    pub drift_repairs: Counter,
    /// 1 while a connection's Ready condition is True, else 0; gone once it is deleted.
    ready: Family<ConnectionLabels, Gauge>,
    /// When the webhook's serving certificate expires, in seconds since the Unix epoch.
    pub webhook_certificate_expiry: Gauge,
}

fn duration_histogram() -> Histogram {
    // 5 ms … 40 s
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dbconn");
        let reconciles = Family::<KindLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let leader = Gauge::default();
        let drift_repairs = Counter::default();
        registry.register(
            "reconciles",
            "Reconciles run, by resource kind",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by resource kind and reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "drift_repairs",
            "Reconciles that restored privileges changed outside dbconn",
            drift_repairs.clone(),
        );
        let ready = Family::<ConnectionLabels, Gauge>::default();
        registry.register(
            "connection_ready",
            "1 while a DatabaseConnection's Ready condition is True, else 0",
            ready.clone(),
        );
        let webhook_certificate_expiry = Gauge::default();
        registry.register_with_unit(
            "webhook_certificate_expiry_timestamp",
            "When the webhook's serving certificate expires (Unix time)",
            prometheus_client::registry::Unit::Seconds,
            webhook_certificate_expiry.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            drift_repairs,
            ready,
            webhook_certificate_expiry,
        }
    }
}

impl Metrics {
    /// Records one finished reconcile.
    pub fn reconciled(&self, kind: &str, seconds: f64, error: Option<&str>) {
        let label = KindLabel { kind: kind.into() };
        self.reconciles.get_or_create(&label).inc();
        self.duration.get_or_create(&label).observe(seconds);
        if let Some(reason) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    kind: kind.into(),
                    reason: reason.into(),
                })
                .inc();
        }
    }

    /// A connection's Ready condition now (`None`: it is gone).
    pub fn connection_ready(&self, namespace: &str, name: &str, ready: Option<bool>) {
        let labels = ConnectionLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        match ready {
            Some(r) => {
                self.ready.get_or_create(&labels).set(i64::from(r));
            }
            None => {
                self.ready.remove(&labels);
            }
        }
    }

    /// Every metric, for `/metrics`.
    pub fn reply(&self) -> crate::http::Reply {
        crate::http::Reply::metrics(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_and_errors_are_counted_by_kind_and_reason() {
        let m = Metrics::default();
        m.reconciled("DatabaseConnection", 0.01, None);
        m.reconciled("DatabaseConnection", 0.02, Some("Unreachable"));
        let text = m.reply().body;
        assert!(
            text.contains(r#"dbconn_reconciles_total{kind="DatabaseConnection"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"dbconn_reconcile_errors_total{kind="DatabaseConnection",reason="Unreachable"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("dbconn_reconcile_duration_seconds_count"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_connection_is_ready_or_not_until_it_is_gone() {
        let m = Metrics::default();
        m.connection_ready("shop", "orders", Some(false));
        m.connection_ready("shop", "billing", Some(true));
        m.webhook_certificate_expiry.set(1_900_000_000);
        let text = m.reply().body;
        assert!(
            text.contains(r#"dbconn_connection_ready{namespace="shop",name="orders"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"dbconn_connection_ready{namespace="shop",name="billing"} 1"#));
        assert!(text.contains("dbconn_webhook_certificate_expiry_timestamp_seconds 1900000000"));
        m.connection_ready("shop", "orders", None);
        assert!(!m.reply().body.contains(r#"name="orders""#));
    }
}
