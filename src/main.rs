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
    Operator {
        /// The operator's namespace: DatabaseServer Secrets are read here.
        #[arg(long, env = "POD_NAMESPACE", default_value = "dbconn-system")]
        namespace: String,
        /// Seconds between re-validations of a Ready connection (repairs drift).
        #[arg(long, env = "DBCONN_REVALIDATE_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        revalidate_seconds: u64,
        /// Log as JSON lines.
        #[arg(long, env = "DBCONN_LOG_JSON")]
        log_json: bool,
    },
    /// Print the CRDs generated from the Rust types (or write one file each into directories).
    Crd {
        /// Write `<crd name>.yaml` files into this directory instead of printing; repeatable.
        #[arg(long = "write", value_name = "DIR")]
        write: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { write } => crd(&write),
        Command::Operator {
            namespace,
            revalidate_seconds,
            log_json,
        } => {
            dbconn::telemetry::init(log_json);
            let settings = dbconn::operator::Settings {
                namespace,
                revalidate: std::time::Duration::from_secs(revalidate_seconds),
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
