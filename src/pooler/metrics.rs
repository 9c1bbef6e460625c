//! The pooler's Prometheus metrics: clients and server connections by state, wait time,
//! transactions, queries, bytes and errors by kind.

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

pub struct Metrics {
    registry: Registry,
    pub clients_active: Gauge,
    pub clients_waiting: Gauge,
    pub servers_active: Gauge,
    pub servers_idle: Gauge,
    pub server_connects: Counter,
    pub transactions: Counter,
    pub queries: Counter,
    pub bytes_from_clients: Counter,
    pub bytes_from_server: Counter,
    pub wait: Histogram,
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
        let m = Metrics {
            clients_active: Gauge::default(),
            clients_waiting: Gauge::default(),
            servers_active: Gauge::default(),
            servers_idle: Gauge::default(),
            server_connects: Counter::default(),
            transactions: Counter::default(),
            queries: Counter::default(),
            bytes_from_clients: Counter::default(),
            bytes_from_server: Counter::default(),
            // 10 µs … 80 s
            wait: Histogram::new(exponential_buckets(0.000_01, 4.0, 12)),
            pinned: Gauge::default(),
            prepares: Counter::default(),
            resets: Counter::default(),
            errors: Family::default(),
            pins: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "clients_active",
            "Client connections open",
            m.clients_active.clone(),
        );
        r.register(
            "clients_waiting",
            "Clients waiting for a server connection",
            m.clients_waiting.clone(),
        );
        r.register(
            "servers_active",
            "Server connections lent to a client",
            m.servers_active.clone(),
        );
        r.register(
            "servers_idle",
            "Server connections idle in the pool",
            m.servers_idle.clone(),
        );
        r.register(
            "server_connects",
            "Server connections opened",
            m.server_connects.clone(),
        );
        r.register(
            "transactions",
            "Transactions (or sessions) served",
            m.transactions.clone(),
        );
        r.register(
            "queries",
            "Query and Sync messages forwarded",
            m.queries.clone(),
        );
        r.register(
            "client_bytes",
            "Bytes received from clients",
            m.bytes_from_clients.clone(),
        );
        r.register(
            "server_bytes",
            "Bytes received from the server",
            m.bytes_from_server.clone(),
        );
        r.register(
            "wait_seconds",
            "Time clients waited for a server connection",
            m.wait.clone(),
        );
        r.register("errors", "Errors by kind", m.errors.clone());
        r.register(
            "pinned_servers",
            "Server connections pinned to a client by session state",
            m.pinned.clone(),
        );
        r.register(
            "pins",
            "Times a server connection was pinned to a client, by what pinned it",
            m.pins.clone(),
        );
        r.register(
            "server_prepares",
            "Named statements prepared on a server connection for a client",
            m.prepares.clone(),
        );
        r.register(
            "server_resets",
            "Server connections reset (RESET ALL and the rest) before another client's transaction",
            m.resets.clone(),
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
