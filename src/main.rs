//! The `dbconn` binary: CLI parsing and dispatch only.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
        /// Log as JSON lines.
        #[arg(long, env = "DBCONN_LOG_JSON")]
        log_json: bool,
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
    /// Print the CRDs generated from the Rust types (or write one file each into directories).
    Crd {
        /// Write `<crd name>.yaml` files into this directory instead of printing; repeatable.
        #[arg(long = "write", value_name = "DIR")]
        write: Vec<PathBuf>,
    },
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
        Command::Operator {
            namespace,
            revalidate_seconds,
            max_backoff_seconds,
            concurrency,
            no_leader_election,
            lease_name,
            lease_seconds,
            http_addr,
            log_json,
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
                lease,
                http: http_addr,
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
