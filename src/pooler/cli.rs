//! The pooler's command line, shared by `dbconn pooler` and the sidecar's own binary,
//! `dbconn-pooler` (src/bin/dbconn-pooler.rs: the same code linked without the operator, so
//! an idle sidecar keeps less of its program resident).

use std::path::PathBuf;

use anyhow::Context;

use super::limits::{
    MAX_CLIENTS, MAX_PREPARED_STATEMENTS, POOL_SIZE, QUERY_WAIT_TIMEOUT_SECONDS,
    SERVER_IDLE_TIMEOUT_SECONDS, SERVER_LIFETIME_SECONDS,
};
use super::{ConfigError, Overrides, Settings, Upstream};

/// The command line of `dbconn-pooler`, the sidecar's binary.
#[derive(clap::Parser)]
#[command(
    name = "dbconn-pooler",
    version,
    about = "The dbconn pooling sidecar: 127.0.0.1:6432 in front of a few warm server connections"
)]
pub struct Standalone {
    #[command(flatten)]
    pub args: Args,
}

/// The pooler's flags, each also read from its `DBCONN_*` environment variable (how the
/// webhook configures the injected sidecar).
#[derive(clap::Args)]
pub struct Args {
    /// The mounted connection Secret (files host, port, dbname, username, password, sslmode,
    /// ca.crt, tls.crt, tls.key); watched for changes.
    #[arg(long, env = "DBCONN_SECRET_DIR")]
    secret_dir: Option<PathBuf>,
    /// Server host (overrides the Secret's).
    #[arg(long, env = "DBCONN_HOST")]
    host: Option<String>,
    #[arg(long, env = "DBCONN_PORT")]
    port: Option<u16>,
    #[arg(long, env = "DBCONN_DBNAME")]
    dbname: Option<String>,
    #[arg(long, env = "DBCONN_USER")]
    user: Option<String>,
    /// disable, allow, prefer, require, verify-ca or verify-full (default: the Secret's, else verify-full).
    #[arg(long, env = "DBCONN_SSLMODE")]
    sslmode: Option<String>,
    #[arg(long, env = "DBCONN_SSLROOTCERT")]
    sslrootcert: Option<PathBuf>,
    #[arg(long, env = "DBCONN_SSLCERT")]
    sslcert: Option<PathBuf>,
    #[arg(long, env = "DBCONN_SSLKEY")]
    sslkey: Option<PathBuf>,
    /// Name to verify in the server's certificate instead of the host.
    #[arg(long, env = "DBCONN_SERVER_NAME")]
    server_name: Option<String>,
    /// Where applications connect.
    #[arg(long, env = "DBCONN_LISTEN", default_value = "127.0.0.1:6432")]
    listen: std::net::SocketAddr,
    /// /healthz, /readyz and /metrics.
    #[arg(long, env = "DBCONN_HTTP_ADDR", default_value = "127.0.0.1:9187")]
    http_addr: std::net::SocketAddr,
    /// transaction or session.
    #[arg(long, env = "DBCONN_POOL_MODE", default_value = "transaction")]
    mode: String,
    /// How clients authenticate: scram, md5 or trust.
    #[arg(long, env = "DBCONN_CLIENT_AUTH", default_value = "scram")]
    client_auth: String,
    /// PBKDF2 iterations of the SCRAM verifier clients log in against (1 to 1000000): each
    /// client login computes them. PostgreSQL's 4096 by default; the webhook sets 16 for a
    /// generated (32-character random) password, where more protect nothing.
    #[arg(long, env = "DBCONN_CLIENT_SCRAM_ITERATIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    client_scram_iterations: u32,
    #[arg(long, env = "DBCONN_POOL_SIZE", default_value_t = 5, value_parser = clap::value_parser!(u32).range(POOL_SIZE.0..=POOL_SIZE.1))]
    pool_size: u32,
    #[arg(long, env = "DBCONN_MIN_IDLE", default_value_t = 1)]
    min_idle: u32,
    #[arg(long, env = "DBCONN_MAX_CLIENTS", default_value_t = 200, value_parser = clap::value_parser!(u32).range(MAX_CLIENTS.0..=MAX_CLIENTS.1))]
    max_clients: u32,
    #[arg(long, env = "DBCONN_SERVER_IDLE_TIMEOUT_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(SERVER_IDLE_TIMEOUT_SECONDS.0.unsigned_abs()..=SERVER_IDLE_TIMEOUT_SECONDS.1.unsigned_abs()))]
    server_idle_timeout_seconds: u64,
    #[arg(long, env = "DBCONN_SERVER_LIFETIME_SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(SERVER_LIFETIME_SECONDS.0.unsigned_abs()..=SERVER_LIFETIME_SECONDS.1.unsigned_abs()))]
    server_lifetime_seconds: u64,
    /// A client waiting longer than this for a server connection gets an error.
    #[arg(long, env = "DBCONN_QUERY_WAIT_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(QUERY_WAIT_TIMEOUT_SECONDS.0.unsigned_abs()..=QUERY_WAIT_TIMEOUT_SECONDS.1.unsigned_abs()))]
    query_wait_timeout_seconds: u64,
    #[arg(long, env = "DBCONN_CONNECT_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout_seconds: u64,
    /// After SIGTERM, how long busy clients may finish.
    #[arg(long, env = "DBCONN_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    shutdown_grace_seconds: u64,
    /// application_name of the server connections (default dbconn:<namespace>/<pod>).
    #[arg(long, env = "DBCONN_APPLICATION_NAME")]
    application_name: Option<String>,
    /// The largest message (bytes) the pooler holds whole: anything a client sends, and what the
    /// server sends but DataRow and CopyData, which pass through as they arrive. Keep it under a
    /// quarter of the sidecar's memory limit (the chart: 64 Mi).
    #[arg(long, env = "DBCONN_MAX_MESSAGE_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
    max_message_bytes: u64,
    /// Named prepared statements kept per server connection in transaction mode (the least
    /// recently used is closed first); 0 passes statement names through untouched.
    #[arg(long, env = "DBCONN_MAX_PREPARED_STATEMENTS", default_value_t = 200, value_parser = clap::value_parser!(u32).range(MAX_PREPARED_STATEMENTS.0..=MAX_PREPARED_STATEMENTS.1))]
    max_prepared_statements: u32,
    /// When a server connection is reset (RESET ALL, role, cursors, LISTEN, advisory locks,
    /// temporary tables) before another client's transaction: auto (after anything but plain
    /// queries) or always (also after plain queries, for functions called by views or
    /// row-level-security policies that change settings).
    #[arg(long, env = "DBCONN_SERVER_RESET", default_value = "auto", value_parser = ["auto", "always"])]
    server_reset: String,
    /// Log as JSON lines.
    #[arg(long, env = "DBCONN_LOG_JSON")]
    log_json: bool,
}

/// Runs the pooler with `args` until SIGTERM/SIGINT and its grace period are over. A bad
/// flag or Secret file is printed with what to fix, and the process exits with 64 (EX_USAGE).
pub fn main(args: Args) -> anyhow::Result<()> {
    let log_json = args.log_json;
    let (settings, upstream, overrides) = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dbconn pooler: {e}");
            std::process::exit(64);
        }
    };
    crate::telemetry::init(log_json);
    // One thread: a sidecar gets a fraction of a core, and no cross-thread handoff
    // is cheaper than any.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(super::run(settings, upstream, overrides))
}

/// Parses the pooler's flags into settings and the upstream, or names the bad one.
fn config(a: Args) -> Result<(Settings, Upstream, Overrides), ConfigError> {
    use super::{ClientAuth, Mode};
    let bad = |setting: &str, problem: String| ConfigError {
        setting: setting.into(),
        problem,
    };
    let mode = match a.mode.as_str() {
        "transaction" => Mode::Transaction,
        "session" => Mode::Session,
        other => {
            return Err(bad(
                "--mode",
                format!("{other:?}: use transaction or session"),
            ));
        }
    };
    let client_auth = match a.client_auth.as_str() {
        "scram" | "scram-sha-256" => ClientAuth::Scram,
        "md5" => ClientAuth::Md5,
        "trust" => ClientAuth::Trust,
        other => {
            return Err(bad(
                "--client-auth",
                format!("{other:?}: use scram, md5 or trust"),
            ));
        }
    };
    let sslmode = a
        .sslmode
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| bad("--sslmode", e))?;
    let overrides = Overrides {
        host: a.host,
        port: a.port,
        dbname: a.dbname,
        user: a.user,
        // Never a flag: it would show in the process list.
        password: std::env::var("DBCONN_PASSWORD").ok(),
        sslmode,
        sslrootcert: a.sslrootcert,
        sslcert: a.sslcert,
        sslkey: a.sslkey,
        server_name: a.server_name,
    };
    let files = match &a.secret_dir {
        Some(dir) => super::config::read_secret_dir(dir)?,
        None => Default::default(),
    };
    let upstream = super::config::upstream(&files, &overrides)?;
    if a.min_idle > a.pool_size {
        return Err(bad(
            "--min-idle",
            format!("{} is more than --pool-size {}", a.min_idle, a.pool_size),
        ));
    }
    let application_name = a.application_name.unwrap_or_else(|| {
        match (std::env::var("POD_NAMESPACE"), std::env::var("POD_NAME")) {
            (Ok(ns), Ok(pod)) => format!("dbconn:{ns}/{pod}"),
            _ => "dbconn-pooler".to_owned(),
        }
    });
    let secs = std::time::Duration::from_secs;
    let settings = Settings {
        listen: a.listen,
        http: a.http_addr,
        mode,
        client_auth,
        client_scram_iterations: a.client_scram_iterations,
        pool_size: a.pool_size as usize,
        min_idle: a.min_idle as usize,
        max_clients: a.max_clients as usize,
        server_idle_timeout: secs(a.server_idle_timeout_seconds),
        server_lifetime: secs(a.server_lifetime_seconds),
        query_wait_timeout: secs(a.query_wait_timeout_seconds),
        connect_timeout: secs(a.connect_timeout_seconds),
        shutdown_grace: secs(a.shutdown_grace_seconds),
        application_name,
        max_message_bytes: usize::try_from(a.max_message_bytes).unwrap_or(16 << 20),
        max_prepared_statements: a.max_prepared_statements as usize,
        server_reset: if a.server_reset == "always" {
            super::config::ServerReset::Always
        } else {
            super::config::ServerReset::Auto
        },
        secret_dir: a.secret_dir,
    };
    Ok((settings, upstream, overrides))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Each bounded pooler flag takes its limits and refuses one past them: the same
    /// numbers the CRD's schema holds for spec.pooler (src/pooler/limits.rs).
    #[test]
    fn pooler_flags_take_exactly_the_limits_the_crd_has() {
        let parse = |flag: &str, v: i64| {
            Standalone::try_parse_from(["dbconn-pooler", flag, &v.to_string()]).map(|_| ())
        };
        for (flag, (min, max)) in [
            ("--pool-size", POOL_SIZE),
            ("--max-clients", MAX_CLIENTS),
            ("--query-wait-timeout-seconds", QUERY_WAIT_TIMEOUT_SECONDS),
            ("--server-idle-timeout-seconds", SERVER_IDLE_TIMEOUT_SECONDS),
            ("--server-lifetime-seconds", SERVER_LIFETIME_SECONDS),
            ("--max-prepared-statements", MAX_PREPARED_STATEMENTS),
        ] {
            assert!(parse(flag, min).is_ok(), "{flag} {min}");
            assert!(parse(flag, max).is_ok(), "{flag} {max}");
            assert!(parse(flag, max + 1).is_err(), "{flag} {}", max + 1);
            if min > 0 {
                assert!(parse(flag, min - 1).is_err(), "{flag} {}", min - 1);
            }
        }
    }
}
