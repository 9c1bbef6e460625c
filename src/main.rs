//! The `dbconn` binary: CLI parsing and dispatch only.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dbconn::pooler::limits::{
    MAX_CLIENTS, MAX_PREPARED_STATEMENTS, POOL_SIZE, QUERY_WAIT_TIMEOUT_SECONDS,
    SERVER_IDLE_TIMEOUT_SECONDS, SERVER_LIFETIME_SECONDS,
};

#[derive(Parser)]
#[command(
    name = "dbconn",
    version,
    about = "PostgreSQL connections for Kubernetes workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The pod-injection webhook's flags (all off unless --webhook-addr is given).
#[derive(clap::Args)]
struct WebhookArgs {
    /// Serve the pod-injection webhook (HTTPS) here, e.g. 0.0.0.0:9443.
    #[arg(long, env = "DBCONN_WEBHOOK_ADDR")]
    webhook_addr: Option<String>,
    /// The Secret (operator namespace) with the webhook's tls.crt, tls.key and ca.crt.
    #[arg(
        long,
        env = "DBCONN_WEBHOOK_SECRET",
        default_value = "dbconn-webhook-tls"
    )]
    webhook_secret: String,
    /// self: the operator issues and renews the certificate and patches the caBundle;
    /// external: cert-manager (or another tool) fills the Secret.
    #[arg(long, env = "DBCONN_WEBHOOK_CERTS", default_value = "self", value_parser = ["self", "external"])]
    webhook_certs: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps.
    #[arg(long, env = "DBCONN_WEBHOOK_CONFIG", default_value = "dbconn")]
    webhook_config: String,
    /// The webhook's Service (its DNS names go into the certificate).
    #[arg(long, env = "DBCONN_WEBHOOK_SERVICE", default_value = "dbconn-webhook")]
    webhook_service: String,
    /// More certificate names or IP addresses, comma-separated (a url clientConfig's host).
    #[arg(long, env = "DBCONN_WEBHOOK_EXTRA_NAMES", value_delimiter = ',')]
    webhook_extra_names: Vec<String>,
    /// deny: a pod that cannot get its sidecar is refused; admit: admitted with a warning.
    #[arg(long, env = "DBCONN_WEBHOOK_FAILURE_MODE", default_value = "deny", value_parser = ["deny", "admit"])]
    webhook_failure_mode: String,
    /// warn: a pod whose sidecar would push a connection over its budget (status.budget) is
    /// admitted with a warning; refuse: it is refused with the reason.
    #[arg(long, env = "DBCONN_BUDGET_MODE", default_value = "warn", value_parser = ["warn", "refuse"])]
    budget_mode: String,
    /// Connections one pod may name.
    #[arg(long, env = "DBCONN_MAX_CONNECTIONS_PER_POD", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
    max_connections_per_pod: u16,
    /// The sidecar's image (the chart sets the operator's own).
    #[arg(
        long,
        env = "DBCONN_POOLER_IMAGE",
        default_value = "ghcr.io/dbconn/dbconn:0.1.0"
    )]
    pooler_image: String,
    /// The sidecar's default resources; empty sets none. Pod annotations
    /// dbconn.io/pooler-{cpu,memory}-{request,limit} override them.
    #[arg(long, env = "DBCONN_POOLER_CPU_REQUEST", default_value = "10m")]
    pooler_cpu_request: String,
    #[arg(long, env = "DBCONN_POOLER_MEMORY_REQUEST", default_value = "16Mi")]
    pooler_memory_request: String,
    #[arg(long, env = "DBCONN_POOLER_CPU_LIMIT", default_value = "")]
    pooler_cpu_limit: String,
    #[arg(long, env = "DBCONN_POOLER_MEMORY_LIMIT", default_value = "64Mi")]
    pooler_memory_limit: String,
}

impl WebhookArgs {
    fn settings(self) -> anyhow::Result<Option<dbconn::webhook::Settings>> {
        use dbconn::webhook::{Certs, FailureMode};
        let Some(addr) = self.webhook_addr.filter(|a| !a.trim().is_empty()) else {
            return Ok(None);
        };
        let set = |v: String| Some(v).filter(|v| !v.trim().is_empty());
        Ok(Some(dbconn::webhook::Settings {
            addr: addr
                .parse()
                .with_context(|| format!("--webhook-addr {addr:?} is not host:port"))?,
            secret: self.webhook_secret,
            certs: if self.webhook_certs == "external" {
                Certs::External
            } else {
                Certs::SelfSigned
            },
            config_name: self.webhook_config,
            service: self.webhook_service,
            extra_names: self
                .webhook_extra_names
                .into_iter()
                .filter(|n| !n.trim().is_empty())
                .collect(),
            failure_mode: if self.webhook_failure_mode == "admit" {
                FailureMode::Admit
            } else {
                FailureMode::Deny
            },
            sidecar: dbconn::inject::Sidecar {
                image: self.pooler_image,
                cpu_request: set(self.pooler_cpu_request),
                memory_request: set(self.pooler_memory_request),
                cpu_limit: set(self.pooler_cpu_limit),
                memory_limit: set(self.pooler_memory_limit),
                max_connections: usize::from(self.max_connections_per_pod),
                refuse_over_budget: self.budget_mode == "refuse",
            },
        }))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller for DatabaseConnections and DatabaseServers.
    #[command(args_override_self = true)]
    Operator {
        /// The operator's namespace: DatabaseServer Secrets are read here.
        #[arg(long, env = "POD_NAMESPACE", default_value = "dbconn-system")]
        namespace: String,
        /// Seconds between re-validations of a Ready connection (repairs drift).
        #[arg(long, env = "DBCONN_REVALIDATE_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        revalidate_seconds: u64,
        /// The longest wait between retries of a failing reconcile (the wait doubles from 1 s).
        #[arg(long, env = "DBCONN_MAX_BACKOFF_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        max_backoff_seconds: u64,
        /// Reconciles of each kind that may run at once (each holds up to two server sessions).
        #[arg(long, env = "DBCONN_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
        concurrency: u16,
        /// Of those, how many one namespace may hold (a tenant whose servers stall cannot take
        /// them all); 0: half of --concurrency.
        #[arg(long, env = "DBCONN_NAMESPACE_CONCURRENCY", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..))]
        namespace_concurrency: u16,
        /// Run without leader election (only when exactly one replica runs).
        #[arg(long, env = "DBCONN_NO_LEADER_ELECTION")]
        no_leader_election: bool,
        /// The leader Lease, in the operator's namespace.
        #[arg(long, env = "DBCONN_LEASE_NAME", default_value = "dbconn-operator")]
        lease_name: String,
        /// Seconds a leader that stopped renewing keeps the Lease.
        #[arg(long, env = "DBCONN_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
        lease_seconds: u64,
        /// Address of /healthz, /readyz and /metrics.
        #[arg(long, env = "DBCONN_HTTP_ADDR", default_value = "0.0.0.0:8080")]
        http_addr: std::net::SocketAddr,
        /// After SIGTERM, seconds to keep serving the webhook (reporting not ready) before
        /// stopping, while Services stop sending to this replica: no admission is lost in a
        /// rollout. 0 to 60.
        #[arg(long, env = "DBCONN_SHUTDOWN_DELAY_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60))]
        shutdown_delay_seconds: u64,
        /// Log as JSON lines.
        #[arg(long, env = "DBCONN_LOG_JSON")]
        log_json: bool,
        #[command(flatten)]
        webhook: Box<WebhookArgs>,
    },
    /// Log in as a connection's role and print what it can do; exit 1 when something asked
    /// for is missing, 2 when the login fails.
    Check {
        /// A DatabaseConnection in the current kube context (its Secret gives the login).
        #[arg(long, conflicts_with = "url", required_unless_present = "url")]
        connection: Option<String>,
        /// The DatabaseConnection's namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// postgres://user@host:port/db?sslmode=… (the password in PGPASSWORD, or in the URL).
        #[arg(long)]
        url: Option<String>,
        /// With --url: the preset to check (readOnly, readWrite, owner, none).
        #[arg(long, default_value = "readOnly", value_parser = parse_access)]
        access: dbconn::api::Access,
        /// With --url: a schema the preset covers; repeatable (default public).
        #[arg(long = "schema")]
        schemas: Vec<String>,
        /// With --url: CA bundle (PEM) that verifies the server.
        #[arg(long)]
        sslrootcert: Option<PathBuf>,
        /// With --url: client certificate (PEM).
        #[arg(long)]
        sslcert: Option<PathBuf>,
        /// With --url: client key (PEM).
        #[arg(long)]
        sslkey: Option<PathBuf>,
        /// With --url: the name to verify instead of the host.
        #[arg(long)]
        server_name: Option<String>,
    },
    /// Run the pooling sidecar: 127.0.0.1:6432 in front of a few warm server connections.
    Pooler(Box<PoolerArgs>),
    /// Print the CRDs generated from the Rust types (or write one file each into directories).
    Crd {
        /// Write `<crd name>.yaml` files into this directory instead of printing; repeatable.
        #[arg(long = "write", value_name = "DIR")]
        write: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct PoolerArgs {
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

/// Parses the pooler's flags into settings and the upstream, or names the bad one.
fn pooler_config(
    a: PoolerArgs,
) -> Result<
    (
        dbconn::pooler::Settings,
        dbconn::pooler::Upstream,
        dbconn::pooler::Overrides,
    ),
    dbconn::pooler::ConfigError,
> {
    use dbconn::pooler::{ClientAuth, ConfigError, Mode, Overrides, Settings};
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
        Some(dir) => dbconn::pooler::config::read_secret_dir(dir)?,
        None => Default::default(),
    };
    let upstream = dbconn::pooler::config::upstream(&files, &overrides)?;
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
            dbconn::pooler::config::ServerReset::Always
        } else {
            dbconn::pooler::config::ServerReset::Auto
        },
        secret_dir: a.secret_dir,
    };
    Ok((settings, upstream, overrides))
}

fn parse_access(s: &str) -> Result<dbconn::api::Access, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("unknown access {s:?}: use readOnly, readWrite, owner or none"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            connection,
            namespace,
            url,
            access,
            schemas,
            sslrootcert,
            sslcert,
            sslkey,
            server_name,
        } => {
            dbconn::telemetry::init(false);
            let target = match (connection, url) {
                (Some(name), _) => dbconn::check::Target::Connection { namespace, name },
                (None, Some(url)) => dbconn::check::Target::Url {
                    url,
                    access,
                    schemas,
                    ca: sslrootcert,
                    cert: sslcert,
                    key: sslkey,
                    server_name,
                },
                (None, None) => anyhow::bail!("give --connection or --url"),
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            match runtime.block_on(dbconn::check::run(target)) {
                Ok(report) => {
                    print!("{}", report.text);
                    std::process::exit(if report.complete { 0 } else { 1 });
                }
                Err(e) => {
                    eprintln!("dbconn check: {e:#}");
                    std::process::exit(2);
                }
            }
        }
        Command::Crd { write } => crd(&write),
        Command::Pooler(args) => {
            let log_json = args.log_json;
            let (settings, upstream, overrides) = match pooler_config(*args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("dbconn pooler: {e}");
                    std::process::exit(64);
                }
            };
            dbconn::telemetry::init(log_json);
            // One thread: a sidecar gets a fraction of a core, and no cross-thread handoff
            // is cheaper than any.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(dbconn::pooler::run(settings, upstream, overrides))
        }
        Command::Operator {
            namespace,
            revalidate_seconds,
            max_backoff_seconds,
            concurrency,
            namespace_concurrency,
            no_leader_election,
            lease_name,
            lease_seconds,
            http_addr,
            shutdown_delay_seconds,
            log_json,
            webhook,
        } => {
            dbconn::telemetry::init(log_json);
            let lease = (!no_leader_election).then_some(dbconn::operator::LeaseSettings {
                name: lease_name,
                duration_seconds: lease_seconds,
            });
            let settings = dbconn::operator::Settings {
                namespace,
                identity: identity(),
                revalidate: std::time::Duration::from_secs(revalidate_seconds),
                max_backoff: std::time::Duration::from_secs(max_backoff_seconds),
                concurrency,
                namespace_concurrency: match namespace_concurrency {
                    0 => concurrency.div_ceil(2),
                    n => n.min(concurrency),
                },
                lease,
                http: http_addr,
                shutdown_delay: std::time::Duration::from_secs(shutdown_delay_seconds),
                webhook: webhook.settings()?,
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .context("connecting to Kubernetes (KUBECONFIG or in-cluster)")?;
                dbconn::operator::run(client, settings).await
            })
        }
    }
}

/// This replica's name in the Lease: the pod name in a cluster, else host and process.
fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

fn crd(dirs: &[PathBuf]) -> anyhow::Result<()> {
    let crds = dbconn::api::crds();
    if dirs.is_empty() {
        for crd in &crds {
            print!("---\n{}", dbconn::api::crd_yaml(crd)?);
        }
        return Ok(());
    }
    for dir in dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for crd in &crds {
            let path = dir.join(dbconn::api::crd_file_name(crd));
            std::fs::write(&path, dbconn::api::crd_yaml(crd)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each bounded `dbconn pooler` flag takes its limits and refuses one past them: the same
    /// numbers the CRD's schema holds for spec.pooler (src/pooler/limits.rs).
    #[test]
    fn pooler_flags_take_exactly_the_limits_the_crd_has() {
        let parse = |flag: &str, v: i64| {
            Cli::try_parse_from(["dbconn", "pooler", flag, &v.to_string()]).map(|_| ())
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
