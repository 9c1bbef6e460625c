//! The Kubernetes control plane: etcd and kube-apiserver on loopback, built by
//! scripts/build-controlplane.sh and cached outside the repository. Client-certificate auth
//! (admin in system:masters), RBAC, and service-account signing keys so TokenRequest works.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::certs::{Ca, service_account_keys};
use crate::free_port;
use crate::node::{NODE_IP, Plan, SERVICE_SUBNET};

/// What a running control plane looks like to its users.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KubeInfo {
    pub apiserver_port: u16,
    pub etcd_port: u16,
    pub kubeconfig: PathBuf,
    pub apiserver_pid: u32,
    pub etcd_pid: u32,
    pub apiserver_log: PathBuf,
}

/// Where the control-plane binaries are cached ($DBCONN_CACHE/bin, default ~/.cache/dbconn/bin).
pub fn cache_bin_dir() -> PathBuf {
    let cache = std::env::var_os("DBCONN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/dbconn")
        });
    cache.join("bin")
}

pub(crate) fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = cache_bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run scripts/setup.sh (it builds the control plane once)",
            path.display()
        );
    }
    Ok(path)
}

/// Starts etcd and kube-apiserver in `dir`/kube and waits until the apiserver is ready.
pub fn start(dir: &Path, ca: &Ca, node: Option<&Plan>) -> anyhow::Result<KubeInfo> {
    let root = dir.join("kube");
    std::fs::create_dir_all(&root)?;
    let etcd_port = free_port()?;
    let peer_port = free_port()?;
    let apiserver_port = free_port()?;

    let etcd_log = std::fs::File::create(root.join("etcd.log"))?;
    let etcd = Command::new(binary("etcd")?)
        .arg(format!("--data-dir={}", root.join("etcd").display()))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
        .arg(format!(
            "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
        ))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
        ))
        .arg(format!(
            "--initial-cluster=default=http://127.0.0.1:{peer_port}"
        ))
        .args([
            "--unsafe-no-fsync=true",
            "--log-level=warn",
            "--quota-backend-bytes=4294967296",
        ])
        .stdin(Stdio::null())
        .stdout(etcd_log.try_clone()?)
        .stderr(etcd_log)
        .spawn()
        .context("starting etcd")?;

    // 10.0.0.1 is the `kubernetes` Service, NODE_IP where pods and the kubelet reach it.
    let serving = ca.server(
        "apiserver",
        &["localhost", "127.0.0.1", "10.0.0.1", NODE_IP],
    )?;
    let admin = ca.client("admin", "dbconn-testbed-admin", Some("system:masters"))?;
    let sa = service_account_keys(&root)?;
    let apiserver_log = root.join("apiserver.log");
    let log = std::fs::File::create(&apiserver_log)?;
    let mut apiserver = Command::new(binary("kube-apiserver")?);
    match node {
        // The `kubernetes` Service's endpoint is the node's address (relayed to this port),
        // "cluster" traffic goes through the relay, and pods get service-account tokens.
        Some(plan) => apiserver
            .arg(format!("--advertise-address={NODE_IP}"))
            .arg(format!(
                "--egress-selector-config-file={}",
                plan.egress_config.display()
            ))
            .arg(format!(
                "--kubelet-client-certificate={}",
                admin.cert.display()
            ))
            .arg(format!("--kubelet-client-key={}", admin.key.display()))
            .arg("--kubelet-preferred-address-types=InternalIP"),
        // Without a node nothing creates service accounts: pods are only admitted, as envtest.
        None => apiserver.args([
            "--advertise-address=127.0.0.1",
            "--disable-admission-plugins=ServiceAccount",
        ]),
    };
    let apiserver = apiserver
        .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
        .arg(format!("--secure-port={apiserver_port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--cert-dir={}", root.join("certs").display()))
        .arg(format!("--tls-cert-file={}", serving.cert.display()))
        .arg(format!("--tls-private-key-file={}", serving.key.display()))
        .arg(format!("--client-ca-file={}", ca.cert_path().display()))
        .args([
            &format!("--service-cluster-ip-range={SERVICE_SUBNET}"),
            "--allow-privileged=true",
        ])
        .arg("--authorization-mode=RBAC")
        .arg(format!(
            "--service-account-issuer=https://127.0.0.1:{apiserver_port}/"
        ))
        .arg(format!("--service-account-key-file={}", sa.cert.display()))
        .arg(format!(
            "--service-account-signing-key-file={}",
            sa.key.display()
        ))
        .args(["--profiling=false", "--v=1"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting kube-apiserver")?;

    let kubeconfig = root.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: dbconn-testbed\n  cluster:\n    server: https://127.0.0.1:{apiserver_port}\n    certificate-authority: {ca}\n\
             users:\n- name: admin\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
             contexts:\n- name: dbconn-testbed\n  context:\n    cluster: dbconn-testbed\n    user: admin\n    namespace: default\n\
             current-context: dbconn-testbed\n",
            ca = ca.cert_path().display(),
            cert = admin.cert.display(),
            key = admin.key.display(),
        ),
    )?;
    let info = KubeInfo {
        apiserver_port,
        etcd_port,
        kubeconfig,
        apiserver_pid: apiserver.id(),
        etcd_pid: etcd.id(),
        apiserver_log,
    };
    wait_ready(&info, Duration::from_secs(120))?;
    Ok(info)
}

/// Polls /readyz with kubectl until the apiserver answers "ok" or the time runs out.
fn wait_ready(info: &KubeInfo, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let out = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", info.kubeconfig.display()))
            .args(["get", "--raw=/readyz", "--request-timeout=5s"])
            .output()
            .context("running kubectl (is it installed?)")?;
        if out.status.success() && out.stdout.starts_with(b"ok") {
            return Ok(());
        }
        if !crate::alive(info.apiserver_pid) {
            bail!(
                "kube-apiserver exited; see {}",
                info.apiserver_log.display()
            );
        }
        if started.elapsed() > limit {
            bail!(
                "kube-apiserver not ready after {limit:?}; see {}",
                info.apiserver_log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
