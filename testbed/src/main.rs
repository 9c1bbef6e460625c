//! `testbed up|down|env`: start the local test bed in the background for manual work, the
//! demo and the test suite (with a node unless `--no-node`); print its settings; stop it.
//! `testbed relay …` is the node's relay (relay.rs), started by `up`.

use std::path::PathBuf;

use anyhow::bail;
use testbed::Bed;

fn default_dir() -> PathBuf {
    std::env::var_os("DBCONN_BED")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("dbconn-bed"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("relay") {
        return testbed::relay::Relay::from_args(&args[1..])?.run();
    }
    let usage = "usage: testbed [--dir DIR] [--watch-pid PID] [--no-node] up|down|env";
    let mut with_node = true;
    let mut dir = default_dir();
    let mut watch_pid = None;
    let mut command = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => dir = it.next().map(PathBuf::from).unwrap_or(dir),
            "--watch-pid" => watch_pid = it.next().and_then(|p| p.parse().ok()),
            "--no-node" => with_node = false,
            "up" | "down" | "env" => command = Some(arg.clone()),
            other => bail!("unknown argument {other:?}\n{usage}"),
        }
    }
    match command.as_deref() {
        Some("up") => {
            eprintln!(
                "starting PostgreSQL, kube-apiserver + etcd{} in {}",
                if with_node { " and a node" } else { "" },
                dir.display()
            );
            let bed = if with_node {
                Bed::start_with_node(&dir, watch_pid, &std::env::current_exe()?)?
            } else {
                Bed::start(&dir, watch_pid)?
            };
            for line in bed.env_lines() {
                println!("{line}");
            }
        }
        Some("env") => {
            for line in Bed::load(&dir)?.env_lines() {
                println!("{line}");
            }
        }
        Some("down") => match Bed::load(&dir) {
            Ok(bed) => bed.stop()?,
            Err(_) if dir.join("down.sh").exists() => {
                testbed::run(std::process::Command::new("sh").arg(dir.join("down.sh")))?
            }
            Err(_) => eprintln!("no bed at {}", dir.display()),
        },
        _ => bail!("{usage}"),
    }
    Ok(())
}
