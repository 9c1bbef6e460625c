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
    Pooler(Box<dbconn::pooler::cli::Args>),
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
        Command::Pooler(args) => dbconn::pooler::cli::main(*args),
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
