//! The pooler's Prometheus metrics, `dbconn_pooler_*`: clients and server connections by state
//! with PgBouncer's names (cl_active, cl_waiting, sv_active, sv_idle, sv_used, maxwait), wait,
//! transaction and query time histograms, transactions, queries, bytes and errors by kind.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// The pool figures carry PgBouncer's names (`SHOW POOLS`): `cl_*` for clients, `sv_*` for
/// server connections.
pub struct Metrics {
    registry: Registry,
    /// Clients logged in and not waiting: bound to a server connection, or idle between
    /// transactions (PgBouncer's cl_active).
    pub cl_active: Gauge,
    /// Clients waiting for a server connection.
    pub cl_waiting: Gauge,
    /// Server connections lent to a client.
    pub sv_active: Gauge,
    /// Server connections idle in the pool, ready for any client (read at each scrape).
    pub sv_idle: Gauge,
    /// Idle server connections another client left session state on: reset before their
    /// next client (PgBouncer's sv_used; read at each scrape).
    pub sv_used: Gauge,
    /// The configured pool size.
    pub pool_size: Gauge,
    /// How long the longest-waiting client has waited, in seconds (read at each scrape).
    pub maxwait: Gauge<f64, AtomicU64>,
    pub server_connects: Counter,
    pub transactions: Counter,
    pub queries: Counter,
    /// Bytes received from clients (PgBouncer's total_received).
    pub received_bytes: Counter,
    /// Bytes sent to clients (PgBouncer's total_sent).
    pub sent_bytes: Counter,
    pub wait: Histogram,
    /// From a client's first message of a transaction to its end.
    pub transaction_duration: Histogram,
    /// From a client's query (Query, or a Sync ending an extended-protocol batch) to the
    /// server's ReadyForQuery.
    pub query_duration: Histogram,
    /// Server connections held by one client between transactions (transaction mode).
    pub pinned: Gauge,
    /// Statements the pooler prepared on a server connection for a client's named statement.
    pub prepares: Counter,
    /// Server connections reset before another client's transaction.
    pub resets: Counter,
    errors: Family<KindLabel, Counter>,
    pins: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("dbconn_pooler");
        // 10 µs … 80 s, by factors of 4.
        let latency = || Histogram::new(exponential_buckets(0.000_01, 4.0, 12));
        let m = Metrics {
            cl_active: Gauge::default(),
            cl_waiting: Gauge::default(),
            sv_active: Gauge::default(),
            sv_idle: Gauge::default(),
            sv_used: Gauge::default(),
            pool_size: Gauge::default(),
            maxwait: Gauge::default(),
            server_connects: Counter::default(),
            transactions: Counter::default(),
            queries: Counter::default(),
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            wait: latency(),
            transaction_duration: latency(),
            query_duration: latency(),
            pinned: Gauge::default(),
            prepares: Counter::default(),
            resets: Counter::default(),
            errors: Family::default(),
            pins: Family::default(),
            registry: Registry::default(),
        };
        let gauges = [
            (
                "cl_active",
                "Clients logged in and not waiting (bound, or idle between transactions)",
                &m.cl_active,
            ),
            (
                "cl_waiting",
                "Clients waiting for a server connection",
                &m.cl_waiting,
            ),
            (
                "sv_active",
                "Server connections lent to a client",
                &m.sv_active,
            ),
            (
                "sv_idle",
                "Server connections idle in the pool, ready for any client",
                &m.sv_idle,
            ),
            (
                "sv_used",
                "Idle server connections to be reset before their next client",
                &m.sv_used,
            ),
            (
                "pool_size",
                "Server connections the pool may open (pool_size)",
                &m.pool_size,
            ),
            (
                "pinned_servers",
                "Server connections pinned to a client by session state",
                &m.pinned,
            ),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
        r.register_with_unit(
            "maxwait",
            "How long the longest-waiting client has waited",
            Unit::Seconds,
            m.maxwait.clone(),
        );
        let counters = [
            (
                "server_connects",
                "Server connections opened",
                &m.server_connects,
            ),
            (
                "transactions",
                "Transactions (or sessions) served",
                &m.transactions,
            ),
            ("queries", "Query and Sync messages forwarded", &m.queries),
            (
                "server_prepares",
                "Named statements prepared on a server connection for a client",
                &m.prepares,
            ),
            (
                "server_resets",
                "Server connections reset (RESET ALL and the rest) before another client's transaction",
                &m.resets,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        r.register_with_unit(
            "received",
            "Bytes received from clients",
            Unit::Bytes,
            m.received_bytes.clone(),
        );
        r.register_with_unit(
            "sent",
            "Bytes sent to clients",
            Unit::Bytes,
            m.sent_bytes.clone(),
        );
        let histograms = [
            (
                "wait",
                "Time clients waited for a server connection",
                &m.wait,
            ),
            (
                "transaction_duration",
                "Time from a transaction's first message to its end",
                &m.transaction_duration,
            ),
            (
                "query_duration",
                "Time from a query (or Sync) to the server's ReadyForQuery",
                &m.query_duration,
            ),
        ];
        for (name, help, h) in histograms {
            r.register_with_unit(name, help, Unit::Seconds, h.clone());
        }
        r.register("errors", "Errors by kind", m.errors.clone());
        r.register(
            "pins",
            "Times a server connection was pinned to a client, by what pinned it",
            m.pins.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

impl Metrics {
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// A server connection was pinned by `reason` (advisory_lock, listen, …).
    pub fn pin(&self, reason: &str) {
        self.pins
            .get_or_create(&KindLabel {
                kind: reason.into(),
            })
            .inc();
    }

    /// Every metric, for `/metrics`.
    pub fn reply(&self) -> crate::http::Reply {
        crate::http::Reply::metrics(&self.registry)
    }
}
