//! `testbed up|down|env`: start the local test bed in the background for manual work, the
//! demo and the test suite; print its settings; stop it.

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
    let mut dir = default_dir();
    let mut watch_pid = None;
    let mut command = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => dir = it.next().map(PathBuf::from).unwrap_or(dir),
            "--watch-pid" => watch_pid = it.next().and_then(|p| p.parse().ok()),
            "up" | "down" | "env" => command = Some(arg.clone()),
            other => bail!(
                "unknown argument {other:?}\nusage: testbed [--dir DIR] [--watch-pid PID] up|down|env"
            ),
        }
    }
    match command.as_deref() {
        Some("up") => {
            eprintln!(
                "starting PostgreSQL and kube-apiserver + etcd in {}",
                dir.display()
            );
            let bed = Bed::start(&dir, watch_pid)?;
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
        _ => bail!("usage: testbed [--dir DIR] [--watch-pid PID] up|down|env"),
    }
    Ok(())
}
