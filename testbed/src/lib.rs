//! dbconn's local test bed: a throwaway PostgreSQL with TLS and a real Kubernetes control
//! plane (kube-apiserver + etcd, no kubelet), on loopback, in one folder.
//!
//! `Bed::start` starts both and writes `bed.json` (what tests read) and `down.sh` (how every
//! process of the bed is stopped and the folder removed). The `testbed` binary wraps the same
//! calls for `make bed-up` / `make bed-down`, and tests attach to a running bed through the
//! `DBCONN_BED` environment variable or start their own.

pub mod certs;
pub mod kube;
pub mod postgres;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

pub use kube::KubeInfo;
pub use postgres::PostgresInfo;

/// Everything a test or tool needs to use a running bed, saved as `bed.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bed {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub postgres: PostgresInfo,
    pub kube: KubeInfo,
}

impl Bed {
    /// Starts PostgreSQL and the control plane in a new folder `dir`. When `watch_pid` is
    /// given, a watchdog stops the bed as soon as that process is gone (a test binary that
    /// panicked or was killed still leaves nothing running).
    pub fn start(dir: &Path, watch_pid: Option<u32>) -> anyhow::Result<Bed> {
        if dir.exists() {
            bail!(
                "{} already exists: stop that bed first (make bed-down)",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir)?;
        // The postgres user must reach its data directory below this folder.
        set_mode(dir, 0o755)?;
        let started = Self::start_in(dir);
        match started {
            Ok(bed) => {
                if let Some(pid) = watch_pid {
                    bed.watch(pid)?;
                }
                Ok(bed)
            }
            Err(e) => {
                // Whatever did start is stopped again.
                let _ = run(Command::new("sh").arg(dir.join("down.sh")));
                Err(e)
            }
        }
    }

    fn start_in(dir: &Path) -> anyhow::Result<Bed> {
        let ca = certs::Ca::create(dir, "dbconn-testbed-ca")?;
        write_down_script(dir, &[], None)?;
        let postgres = postgres::start(dir, &ca)?;
        write_down_script(dir, &[], Some(&postgres))?;
        let kube = kube::start(dir, &ca);
        // etcd may have started even if the apiserver did not: the script must know both.
        let kube = match kube {
            Ok(k) => k,
            Err(e) => {
                let _ = std::process::Command::new("pkill")
                    .arg("-f")
                    .arg(dir.join("kube").display().to_string())
                    .status();
                return Err(e);
            }
        };
        write_down_script(dir, &[kube.apiserver_pid, kube.etcd_pid], Some(&postgres))?;
        let bed = Bed {
            dir: dir.to_owned(),
            ca_cert: ca.cert_path(),
            postgres,
            kube,
        };
        std::fs::write(dir.join("bed.json"), serde_json::to_vec_pretty(&bed)?)?;
        Ok(bed)
    }

    /// Reads the `bed.json` of a running bed.
    pub fn load(dir: &Path) -> anyhow::Result<Bed> {
        let path = dir.join("bed.json");
        let text = std::fs::read(&path)
            .with_context(|| format!("no bed at {} (make bed-up)", dir.display()))?;
        Ok(serde_json::from_slice(&text)?)
    }

    /// Stops every process of the bed and removes its folder.
    pub fn stop(&self) -> anyhow::Result<()> {
        run(Command::new("sh").arg(self.dir.join("down.sh")))
    }

    /// The lines `make bed-up` prints: environment settings for other tools.
    pub fn env_lines(&self) -> Vec<String> {
        vec![
            format!("KUBECONFIG={}", self.kube.kubeconfig.display()),
            format!(
                "DATABASE_URL={}",
                self.postgres.superuser_url(&self.ca_cert)
            ),
            format!("PGSSLROOTCERT={}", self.ca_cert.display()),
            format!("DBCONN_BED={}", self.dir.display()),
        ]
    }

    fn watch(&self, pid: u32) -> anyhow::Result<()> {
        // A detached shell loop, bounded by the life of `pid`: `setsid` keeps it out of the
        // test's process group so it outlives the test it watches.
        Command::new("setsid")
            .args([
                "sh",
                "-c",
                "while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; exec sh \"$1\"",
            ])
            .arg(pid.to_string())
            .arg(self.dir.join("down.sh"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the bed's watchdog")?;
        Ok(())
    }
}

/// `down.sh`: terminate the given processes and PostgreSQL, wait up to 15 s, kill what is
/// left, remove the folder. Idempotent.
fn write_down_script(dir: &Path, pids: &[u32], pg: Option<&PostgresInfo>) -> anyhow::Result<()> {
    let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    let pg_pid = pg.map(|p| {
        format!(
            "$(head -n1 '{}/postmaster.pid' 2>/dev/null)",
            p.data_dir.display()
        )
    });
    let script = format!(
        "#!/bin/sh\n# Stops the dbconn test bed in {dir} and removes it.\n\
         pids=\"{pids}\"\npg={pg}\n\
         [ -n \"$pg\" ] && kill -INT $pg 2>/dev/null\n\
         [ -n \"$pids\" ] && kill -TERM $pids 2>/dev/null\n\
         for i in $(seq 1 150); do alive=; for p in $pids $pg; do kill -0 $p 2>/dev/null && alive=1; done; [ -z \"$alive\" ] && break; sleep 0.1; done\n\
         for p in $pids $pg; do kill -KILL $p 2>/dev/null; done\n\
         rm -rf '{dir}'\n",
        dir = dir.display(),
        pids = pids.join(" "),
        pg = pg_pid
            .map(|p| format!("\"{p}\""))
            .unwrap_or_else(|| "\"\"".into()),
    );
    std::fs::write(dir.join("down.sh"), script)?;
    Ok(())
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `n` random bytes from the kernel, hex-encoded.
pub fn random_hex(n: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether a process exists.
pub fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command to completion; its stderr becomes the error.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
