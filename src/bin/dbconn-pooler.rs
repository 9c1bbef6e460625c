//! `dbconn-pooler`: the injected sidecar's binary. It runs exactly what `dbconn pooler` runs,
//! linked without the operator (kube, the webhook, the reconcilers), so an idle sidecar keeps
//! less of its program resident (bench/pooler.sh prints its idle RSS).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    dbconn::pooler::cli::main(dbconn::pooler::cli::Standalone::parse().args)
}
