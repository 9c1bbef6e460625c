//! dbconn's local test bed: a throwaway PostgreSQL with TLS and a real Kubernetes control
//! plane (kube-apiserver + etcd) on loopback, and (`Bed::start_with_node`) a node that runs
//! pods in a network namespace of its own (node.rs), in one folder.
//!
//! `Bed::start` starts them and writes `bed.json` (what tests read) and `down.sh` (how every
//! process of the bed is stopped and the folder removed). The `testbed` binary wraps the same
//! calls for `make bed-up` / `make bed-down`, and tests attach to a running bed through the
//! `DBCONN_BED` environment variable or start their own.

pub mod certs;
pub mod kube;
pub mod node;
pub mod postgres;
pub mod relay;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

pub use kube::KubeInfo;
pub use node::NodeInfo;
pub use postgres::PostgresInfo;

/// Everything a test or tool needs to use a running bed, saved as `bed.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bed {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub postgres: PostgresInfo,
    pub kube: KubeInfo,
    /// The node, when the bed has one.
    #[serde(default)]
    pub node: Option<NodeInfo>,
}

impl Bed {
    /// Starts PostgreSQL and the control plane in a new folder `dir`. When `watch_pid` is
    /// given, a watchdog stops the bed as soon as that process is gone (a test binary that
    /// panicked or was killed still leaves nothing running).
    pub fn start(dir: &Path, watch_pid: Option<u32>) -> anyhow::Result<Bed> {
        Self::start_with(dir, watch_pid, None)
    }

    /// As [`Bed::start`], with a node (node.rs) as well; `relay` is the `testbed` binary,
    /// which serves the node's `testbed relay`.
    pub fn start_with_node(
        dir: &Path,
        watch_pid: Option<u32>,
        relay: &Path,
    ) -> anyhow::Result<Bed> {
        Self::start_with(dir, watch_pid, Some(relay))
    }

    fn start_with(dir: &Path, watch_pid: Option<u32>, relay: Option<&Path>) -> anyhow::Result<Bed> {
        if dir.exists() {
            bail!(
                "{} already exists: stop that bed first (make bed-down)",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir)?;
        // The postgres user must reach its data directory below this folder.
        set_mode(dir, 0o755)?;
        let started = Self::start_in(dir, relay);
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

    fn start_in(dir: &Path, relay: Option<&Path>) -> anyhow::Result<Bed> {
        let ca = certs::Ca::create(dir, "dbconn-testbed-ca")?;
        let plan = relay.map(|_| node::Plan::new(dir)).transpose()?;
        let down = |pids: &[u32], pg: Option<&PostgresInfo>| {
            write_down_script(dir, pids, pg, plan.as_ref())
        };
        down(&[], None)?;
        let postgres = postgres::start(dir, &ca)?;
        down(&[], Some(&postgres))?;
        let kube = kube::start(dir, &ca, plan.as_ref());
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
        down(&[kube.apiserver_pid, kube.etcd_pid], Some(&postgres))?;
        let node = match (&plan, relay) {
            (Some(plan), Some(relay)) => Some(node::start(plan, &ca, &kube, postgres.port, relay)?),
            _ => None,
        };
        let bed = Bed {
            dir: dir.to_owned(),
            ca_cert: ca.cert_path(),
            postgres,
            kube,
            node,
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
    /// With a node, also where pods reach PostgreSQL (`DBCONN_NODE_IP`, the same port) and
    /// the node's containerd (`DBCONN_CONTAINERD`, for `ctr --address`).
    pub fn env_lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("KUBECONFIG={}", self.kube.kubeconfig.display()),
            format!(
                "DATABASE_URL={}",
                self.postgres.superuser_url(&self.ca_cert)
            ),
            format!("PGSSLROOTCERT={}", self.ca_cert.display()),
            format!("DBCONN_BED={}", self.dir.display()),
        ];
        if let Some(node) = &self.node {
            lines.push(format!("DBCONN_NODE_IP={}", node.ip));
            lines.push(format!(
                "DBCONN_CONTAINERD={}",
                node.containerd_socket.display()
            ));
        }
        lines
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

/// `down.sh`: stop the node, then the given processes in order and PostgreSQL (each gets
/// 15 s before SIGKILL), remove the folder. Idempotent.
fn write_down_script(
    dir: &Path,
    pids: &[u32],
    pg: Option<&PostgresInfo>,
    node: Option<&node::Plan>,
) -> anyhow::Result<()> {
    let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    let pg_pid = pg.map(|p| {
        format!(
            "$(head -n1 '{}/postmaster.pid' 2>/dev/null)",
            p.data_dir.display()
        )
    });
    let script = format!(
        "#!/bin/sh\n# Stops the dbconn test bed in {dir} and removes it.\n\
         # A zombie (a process whose parent is gone and not yet reaped) counts as stopped.\n\
         running() {{ s=$(ps -o stat= -p \"$1\" 2>/dev/null) && [ \"${{s#Z}}\" = \"$s\" ]; }}\n\
         # stop PID SIGNAL: signal it, wait up to 15 s, then kill it.\n\
         stop() {{ kill -$2 $1 2>/dev/null; for i in $(seq 1 150); do running $1 || return 0; sleep 0.1; done; kill -KILL $1 2>/dev/null; }}\n{node}\
         pg={pg}\n\
         [ -n \"$pg\" ] && kill -INT $pg 2>/dev/null\n\
         # In order: the apiserver before etcd (without etcd it does not finish stopping).\n\
         for p in {pids}; do stop $p TERM; done\n\
         [ -n \"$pg\" ] && stop $pg INT\n\
         rm -rf '{dir}'\n",
        dir = dir.display(),
        node = node.map(node::Plan::down_script).unwrap_or_default(),
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
