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
