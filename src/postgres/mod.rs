//! Talking to PostgreSQL as a client: the sslmode-aware TLS connector and sessions. Used by
//! the operator and by `dbconn check`.

pub mod connect;
pub mod guard;
pub mod privileges;
pub mod quote;
pub mod role;
pub mod tls;
pub mod url;

pub use connect::{ConnectError, Endpoint, Session, connect};
pub use tls::TlsMaterial;
