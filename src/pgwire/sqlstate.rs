//! The SQLSTATE codes the pooler sends, by PostgreSQL's names (PostgreSQL docs, Appendix A
//! "PostgreSQL Error Codes").

/// 08P01 protocol_violation: a malformed or oversized message.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// 08006 connection_failure: the server went away or cannot be reached.
pub const CONNECTION_FAILURE: &str = "08006";
/// 53300 too_many_connections: no server connection within query_wait_timeout.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// 57P03 cannot_connect_now: the pooler has not reached the server yet.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// 57P01 admin_shutdown: the pooler is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// 28000 invalid_authorization_specification: wrong user, or an unsupported method.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// 28P01 invalid_password.
pub const INVALID_PASSWORD: &str = "28P01";
/// 3D000 invalid_catalog_name: a database this pooler does not serve.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// 22023 invalid_parameter_value: a startup option the pooler cannot apply.
pub const INVALID_PARAMETER_VALUE: &str = "22023";
/// 58000 system_error: the operating system failed the pooler (randomness).
pub const SYSTEM_ERROR: &str = "58000";
/// 0A000 feature_not_supported, as PostgreSQL raises "cached plan must not change result
/// type" for a prepared statement whose tables changed.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// syntax_error: an admin console command it does not know.
pub const SYNTAX_ERROR: &str = "42601";
