//! Talking to PostgreSQL as a client: the sslmode-aware TLS connector and sessions. Used by
//! the operator and by `dbconn check`.

pub mod connect;
pub mod tls;

pub use connect::{ConnectError, Endpoint, Session, connect};
pub use tls::TlsMaterial;
