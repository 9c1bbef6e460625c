//! Connecting to PostgreSQL as libpq would for each sslmode, with time-outs, and turning
//! failures into messages that say what to fix.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::tls::{MakeRustls, TlsConfigError, TlsMaterial, client_config};
use crate::api::SslMode;

/// Everything needed to open one session (equal endpoints open interchangeable sessions).
/// Its `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    pub sslmode: SslMode,
    pub tls: TlsMaterial,
    pub application_name: String,
    pub connect_timeout: Duration,
    /// Server-side statement_timeout for the session.
    pub statement_timeout: Duration,
    /// What the startup may not do (see `guard`): for a server a tenant names, no password
    /// but through SCRAM; for a proof of a role's password, no login without one.
    pub guard: super::guard::Policy,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("sslmode", &self.sslmode)
            .field("tls", &self.tls)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("guard", &self.guard)
            .finish()
    }
}

impl Endpoint {
    /// An endpoint with dbconn's defaults: 10 s to connect, 30 s per statement.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        database: impl Into<String>,
        user: impl Into<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            database: database.into(),
            user: user.into(),
            password: None,
            sslmode: SslMode::VerifyFull,
            tls: TlsMaterial::default(),
            application_name: "dbconn".into(),
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            guard: super::guard::Policy::default(),
        }
    }
}

/// An open session; the connection task runs until the client is dropped.
pub struct Session {
    pub client: Client,
    /// Whether the session runs over TLS.
    pub tls: bool,
}

/// Why a session could not be opened, worded as what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TLS settings: {0}")]
    TlsConfig(#[from] TlsConfigError),
    #[error("no answer from {0} within {1:?}: check host, port and network policy")]
    Timeout(String, Duration),
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, std::io::Error),
    #[error(
        "server certificate is not trusted: {0} (set tls.caSecretRef to the CA that signed it)"
    )]
    UntrustedCertificate(String),
    #[error(
        "server certificate does not name {0:?}: {1} (set tls.serverName, or use sslmode verify-ca)"
    )]
    WrongHostName(String, String),
    #[error("TLS handshake with {0} failed: {1}")]
    Handshake(String, String),
    #[error("server at {0} does not offer TLS, which sslmode {1} requires")]
    NoTls(String, &'static str),
    #[error("password authentication failed for user {0:?}")]
    PasswordRejected(String),
    #[error("the server refused the connection: {0}")]
    Refused(String),
    #[error("database {0:?} does not exist")]
    NoDatabase(String),
    #[error("the password was accepted, then the login refused: {0}")]
    RefusedAfterLogin(String),
    #[error(
        "{0}: the role's CONNECTION LIMIT (spec.role.connectionLimit) or the server's max_connections is reached"
    )]
    TooManyConnections(String),
    #[error(
        "{1} at {0} (sslmode {2}): dbconn sends passwords to a server named in a DatabaseConnection only through SCRAM-SHA-256 with at least 4096 iterations, and proves a role's password only by a login that asks for it; set scram-sha-256 in the server's pg_hba.conf"
    )]
    InsecureAuth(String, super::guard::InsecureAuthRequest, &'static str),
    #[error("{0}")]
    Other(String),
}

impl ConnectError {
    /// A short, stable label for metrics and condition reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::TlsConfig(_) => "TLSConfigInvalid",
            ConnectError::Timeout(..) => "ConnectTimeout",
            ConnectError::Unreachable(..) => "Unreachable",
            ConnectError::UntrustedCertificate(_) => "CertificateUntrusted",
            ConnectError::WrongHostName(..) => "CertificateNameMismatch",
            ConnectError::Handshake(..) => "TLSHandshakeFailed",
            ConnectError::NoTls(..) => "TLSNotOffered",
            ConnectError::PasswordRejected(_) => "AuthenticationFailed",
            ConnectError::Refused(_) => "ConnectionRefused",
            ConnectError::NoDatabase(_) => "DatabaseMissing",
            ConnectError::RefusedAfterLogin(_) => "LoginRefused",
            ConnectError::TooManyConnections(_) => "TooManyConnections",
            ConnectError::InsecureAuth(..) => "InsecureAuthentication",
            ConnectError::Other(_) => "ConnectFailed",
        }
    }
}

/// Opens a session with the endpoint's sslmode, as libpq would: `allow` tries plain first
/// and TLS if the server refuses; `prefer` tries TLS first and plain if the server offers none.
pub async fn connect(ep: &Endpoint) -> Result<Session, ConnectError> {
    match ep.sslmode {
        SslMode::Disable => open(ep, Wire::Plain).await,
        SslMode::Allow => match open(ep, Wire::Plain).await {
            // Only a refusal by the server (pg_hba "hostssl" only, say) is worth a TLS retry.
            Err(ConnectError::Refused(_) | ConnectError::PasswordRejected(_)) => {
                open(ep, Wire::Tls).await
            }
            other => other,
        },
        SslMode::Prefer => open(ep, Wire::TlsThenPlain).await,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => open(ep, Wire::Tls).await,
    }
}

#[derive(Clone, Copy)]
enum Wire {
    Plain,
    Tls,
    TlsThenPlain,
}

async fn open(ep: &Endpoint, wire: Wire) -> Result<Session, ConnectError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&ep.host)
        .port(ep.port)
        .dbname(&ep.database)
        .user(&ep.user)
        .application_name(&ep.application_name)
        .connect_timeout(ep.connect_timeout)
        // A fixed search_path: function signatures read from the catalog (regprocedure
        // text) then name the same functions in every session.
        .options(format!(
            "-c statement_timeout={} -c search_path=pg_catalog",
            ep.statement_timeout.as_millis()
        ));
    if let Some(password) = &ep.password {
        config.password(password);
    }
    let addr = format!("{}:{}", ep.host, ep.port);
    // The whole handshake, not only the TCP connect, is bounded.
    let limit = ep.connect_timeout + Duration::from_secs(5);
    if ep.guard != super::guard::Policy::default() {
        return match tokio::time::timeout(limit, guarded_session(ep, &mut config, wire, &addr))
            .await
        {
            Err(_) => Err(ConnectError::Timeout(addr, limit)),
            Ok(result) => result,
        };
    }
    let result = match wire {
        Wire::Plain => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            tokio::time::timeout(limit, async {
                let (client, conn) = config.connect(NoTls).await?;
                tokio::spawn(conn);
                Ok::<_, tokio_postgres::Error>(Session { client, tls: false })
            })
            .await
        }
        Wire::Tls | Wire::TlsThenPlain => {
            let mode = if matches!(wire, Wire::Tls) {
                tokio_postgres::config::SslMode::Require
            } else {
                tokio_postgres::config::SslMode::Prefer
            };
            config.ssl_mode(mode);
            // client_config: allow and prefer verify nothing; the others verify as they say.
            let Some(tls) = client_config(ep.sslmode, &ep.tls)? else {
                return Err(ConnectError::Other(
                    "TLS requested with sslmode disable".into(),
                ));
            };
            let connector = MakeRustls::new(tls, ep.tls.server_name.clone());
            tokio::time::timeout(limit, async {
                let (client, conn) = config.connect(connector).await?;
                // tokio-postgres does not say whether `prefer` fell back; the server does.
                tokio::spawn(conn);
                Ok::<_, tokio_postgres::Error>(Session { client, tls: true })
            })
            .await
        }
    };
    match result {
        Err(_) => Err(ConnectError::Timeout(addr, limit)),
        Ok(Ok(mut session)) => {
            if matches!(wire, Wire::TlsThenPlain) {
                session.tls = session_uses_tls(&session.client).await;
            }
            Ok(session)
        }
        Ok(Err(e)) => Err(classify(&e, ep, &addr)),
    }
}

/// A session whose startup is watched by `AuthGuard`, below TLS for the SSLRequest answer and
/// a plain-text fallback, and above it for what the server asks once encrypted.
async fn guarded_session(
    ep: &Endpoint,
    config: &mut tokio_postgres::Config,
    wire: Wire,
    addr: &str,
) -> Result<Session, ConnectError> {
    use super::guard::{AuthGuard, GuardedConnect, Start};
    use tokio_postgres::tls::MakeTlsConnect;
    let tcp = tokio::net::TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| ConnectError::Unreachable(addr.to_owned(), e))?;
    let _ = tcp.set_nodelay(true);
    let failed = |e: tokio_postgres::Error| classify(&e, ep, addr);
    match wire {
        Wire::Plain => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, conn) = config
                .connect_raw(AuthGuard::new(tcp, Start::Messages, ep.guard), NoTls)
                .await
                .map_err(failed)?;
            tokio::spawn(conn);
            Ok(Session { client, tls: false })
        }
        Wire::Tls | Wire::TlsThenPlain => {
            config.ssl_mode(if matches!(wire, Wire::Tls) {
                tokio_postgres::config::SslMode::Require
            } else {
                tokio_postgres::config::SslMode::Prefer
            });
            let Some(tls) = client_config(ep.sslmode, &ep.tls)? else {
                return Err(ConnectError::Other(
                    "TLS requested with sslmode disable".into(),
                ));
            };
            let mut make = MakeRustls::new(tls, ep.tls.server_name.clone());
            let connect = MakeTlsConnect::<AuthGuard<tokio::net::TcpStream>>::make_tls_connect(
                &mut make, &ep.host,
            )?;
            let (client, conn) = config
                .connect_raw(
                    AuthGuard::new(tcp, Start::SslResponse, ep.guard),
                    GuardedConnect(connect, ep.guard),
                )
                .await
                .map_err(failed)?;
            tokio::spawn(conn);
            let mut session = Session { client, tls: true };
            if matches!(wire, Wire::TlsThenPlain) {
                session.tls = session_uses_tls(&session.client).await;
            }
            Ok(session)
        }
    }
}

async fn session_uses_tls(client: &Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()",
            &[],
        )
        .await
        .map(|row| row.get::<_, bool>(0))
        .unwrap_or(false)
}

/// Turns a tokio-postgres error into what the user should fix.
pub(crate) fn classify(e: &tokio_postgres::Error, ep: &Endpoint, addr: &str) -> ConnectError {
    if let Some(db) = e.as_db_error() {
        return match *db.code() {
            SqlState::INVALID_PASSWORD => ConnectError::PasswordRejected(ep.user.clone()),
            SqlState::INVALID_CATALOG_NAME => ConnectError::NoDatabase(ep.database.clone()),
            // "permission denied for database": raised only after authentication succeeded.
            SqlState::INSUFFICIENT_PRIVILEGE => {
                ConnectError::RefusedAfterLogin(db.message().to_owned())
            }
            SqlState::TOO_MANY_CONNECTIONS => {
                ConnectError::TooManyConnections(db.message().to_owned())
            }
            _ if db.code().code().starts_with("28") => {
                ConnectError::Refused(db.message().to_owned())
            }
            _ => ConnectError::Other(db.message().to_owned()),
        };
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return tls_error(tls, ep, addr);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(refused) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<super::guard::InsecureAuthRequest>())
            {
                return ConnectError::InsecureAuth(
                    addr.to_owned(),
                    refused.clone(),
                    ep.sslmode.as_str(),
                );
            }
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return tls_error(tls, ep, addr);
            }
            return ConnectError::Unreachable(
                addr.to_owned(),
                std::io::Error::new(io.kind(), io.to_string()),
            );
        }
        if let Some(cfg) = err.downcast_ref::<TlsConfigError>() {
            return ConnectError::Other(format!("TLS settings: {cfg}"));
        }
        source = err.source();
    }
    let text = e.to_string();
    if text.contains("server does not support TLS") {
        return ConnectError::NoTls(addr.to_owned(), ep.sslmode.as_str());
    }
    ConnectError::Other(text)
}

fn tls_error(e: &rustls::Error, ep: &Endpoint, addr: &str) -> ConnectError {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => ConnectError::WrongHostName(
            ep.tls
                .server_name
                .clone()
                .unwrap_or_else(|| ep.host.clone()),
            e.to_string(),
        ),
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            ConnectError::UntrustedCertificate("unknown issuer".into())
        }
        rustls::Error::InvalidCertificate(other) => {
            ConnectError::UntrustedCertificate(format!("{other:?}"))
        }
        other => ConnectError::Handshake(addr.to_owned(), other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_leaves_out_the_password_and_the_client_key() {
        let mut ep = Endpoint::new("db", 5432, "app", "admin");
        ep.password = Some("s3cret-Pa55".into());
        ep.tls.client_key_pem = Some(b"-----BEGIN PRIVATE KEY-----\nKEYBYTES".to_vec());
        ep.tls.ca_pem = Some(b"-----BEGIN CERTIFICATE-----".to_vec());
        let shown = format!("{ep:?} {ep:#?}");
        assert!(!shown.contains("s3cret-Pa55"), "{shown}");
        assert!(!shown.contains("KEYBYTES"), "{shown}");
        assert!(
            shown.contains("admin") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
