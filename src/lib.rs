//! dbconn: a Kubernetes operator and a per-pod pooling sidecar that give workloads a
//! least-privilege PostgreSQL connection.

pub mod api;
pub mod check;
pub mod http;
pub mod inject;
pub mod operator;
pub mod pgwire;
pub mod pooler;
pub mod postgres;
pub mod shutdown;
pub mod telemetry;
pub mod webhook;
