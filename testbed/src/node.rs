//! A node for the bed: containerd (Debian's, with runc and the CNI plugins), a kubelet and
//! kube-proxy in a network namespace the bed makes, and kube-controller-manager and
//! kube-scheduler beside the apiserver, so that Deployments, Jobs and Services really run.
//!
//! Confinement (docs/testbed.md): the node's namespace has only its loopback, which also
//! carries the node's address [`NODE_IP`], and the CNI bridge to the pods' namespaces. Nothing
//! in it is routed to the host. The apiserver and PostgreSQL stay on the host's loopback;
//! `testbed relay` forwards [`NODE_IP`] ports to them and carries the apiserver's "cluster"
//! traffic (webhook Services, kubelet logs) into the namespace over a Unix socket. Host state
//! the kubelet changes (its kernel tunables, /var/log/containers links) is put back by
//! `down.sh`, which also stops every container, unmounts what the node mounted and deletes the
//! namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::certs::Ca;
use crate::kube::{KubeInfo, binary};
use crate::run;

/// The node's address inside its namespace, on its loopback. Pods reach the apiserver and
/// PostgreSQL here (their host ports, relayed), the apiserver reaches the kubelet here.
pub const NODE_IP: &str = "10.254.0.1";
/// The Node object's name.
pub const NODE_NAME: &str = "dbconn-node";
/// Pod addresses (the CNI bridge's host-local range).
pub const POD_SUBNET: &str = "10.88.0.0/16";
/// The pods' bridge in the node's namespace and its address (their gateway).
const POD_BRIDGE: &str = "dbconn0";
const POD_GATEWAY: &str = "10.88.0.1";
/// The apiserver's --service-cluster-ip-range.
pub const SERVICE_SUBNET: &str = "10.0.0.0/24";
/// Images the node has (scripts/bed-images.sh); pods use them with imagePullPolicy
/// IfNotPresent or Never.
pub const DBCONN_IMAGE: &str = "dbconn.local/dbconn:dev";
pub const PSQL_IMAGE: &str = "dbconn.local/psql:dev";
const PAUSE_IMAGE: &str = "dbconn.local/pause:dev";

/// Kernel settings the kubelet sets at start (its `setupKernelTunables`), put back on stop.
const KUBELET_SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// What a running node looks like to tests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// [`NODE_IP`].
    pub ip: String,
    /// The network namespace, under /var/run/netns.
    pub netns: String,
    /// containerd's socket, for `ctr --address`.
    pub containerd_socket: PathBuf,
    /// Logs of containerd, kubelet, kube-proxy, the controller manager, the scheduler, relay.
    pub log_dir: PathBuf,
}

/// The node's folder, namespace name and egress configuration, known before anything starts
/// (the apiserver needs the egress file, `down.sh` the rest).
#[derive(Clone, Debug)]
pub struct Plan {
    pub root: PathBuf,
    pub netns: String,
    pub egress_config: PathBuf,
    pub egress_socket: PathBuf,
    pub containerd_socket: PathBuf,
}

impl Plan {
    pub fn new(dir: &Path) -> anyhow::Result<Plan> {
        let root = dir.join("node");
        std::fs::create_dir_all(&root)?;
        let tag: String = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("bed")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let plan = Plan {
            netns: format!("dbconn-{tag}"),
            egress_config: root.join("egress.yaml"),
            egress_socket: root.join("egress.sock"),
            containerd_socket: root.join("containerd.sock"),
            root,
        };
        std::fs::write(
            &plan.egress_config,
            format!(
                "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n\
                 - name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      uds:\n        udsName: {}\n",
                plan.egress_socket.display()
            ),
        )?;
        Ok(plan)
    }

    fn netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.netns)
    }

    /// The part of `down.sh` that stops the node; safe to run when only some of it started.
    pub fn down_script(&self) -> String {
        let sock = self.containerd_socket.display();
        let root = self.root.display();
        let mut restore = String::new();
        for key in KUBELET_SYSCTLS {
            if let Ok(value) = std::fs::read_to_string(Path::new("/proc/sys").join(key)) {
                restore.push_str(&format!(
                    "echo '{}' > /proc/sys/{key} 2>/dev/null\n",
                    value.trim()
                ));
            }
        }
        format!(
            "# The node: the kubelet first (it would restart what stops next), every container\n\
             # through containerd, the other parts, then mounts, the namespace and host settings.\n\
             [ -f '{root}/kubelet.pid' ] && stop $(cat '{root}/kubelet.pid') TERM\n\
             if [ -S '{sock}' ]; then\n\
               for c in $(ctr --address '{sock}' -n k8s.io containers ls -q 2>/dev/null); do\n\
                 ctr --address '{sock}' -n k8s.io tasks kill -a -s SIGKILL \"$c\" >/dev/null 2>&1\n\
               done\n\
               for i in $(seq 1 50); do [ -z \"$(ctr --address '{sock}' -n k8s.io tasks ls -q 2>/dev/null | head -1)\" ] && break\n\
                 for c in $(ctr --address '{sock}' -n k8s.io tasks ls -q 2>/dev/null); do ctr --address '{sock}' -n k8s.io tasks delete -f \"$c\" >/dev/null 2>&1; done; sleep 0.2; done\n\
             fi\n\
             for p in $(cat '{root}'/*.pid 2>/dev/null); do stop $p TERM; done\n\
             pkill -KILL -f 'containerd-shim.*{sock}' 2>/dev/null\n\
             awk '$2 ~ \"^{root}/\" {{print $2}}' /proc/mounts | sort -r | while read -r m; do umount -l \"$m\" 2>/dev/null; done\n\
             ip netns del '{netns}' 2>/dev/null\n\
             find /var/log/containers -maxdepth 1 -lname '{root}/*' -delete 2>/dev/null\n\
             {restore}",
            netns = self.netns,
        )
    }
}

/// Starts the node and waits until it is Ready. `relay` is the `testbed` binary (it serves
/// `testbed relay`); `api_port` and `pg_port` are the host's loopback ports to relay.
pub fn start(
    plan: &Plan,
    ca: &Ca,
    kube: &KubeInfo,
    pg_port: u16,
    relay: &Path,
) -> anyhow::Result<NodeInfo> {
    let root = &plan.root;
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs)?;

    // The namespace: loopback up, with the node's address on it. One left by a bed of the same
    // folder that was killed (its processes are gone) is replaced.
    let _ = run(Command::new("ip").args(["netns", "del", &plan.netns]));
    run(Command::new("ip").args(["netns", "add", &plan.netns]))?;
    run(Command::new("ip").args(["-n", &plan.netns, "link", "set", "lo", "up"]))?;
    run(Command::new("ip").args([
        "-n",
        &plan.netns,
        "addr",
        "add",
        &format!("{NODE_IP}/32"),
        "dev",
        "lo",
    ]))?;
    // The pods' bridge exists before the first pod (CNI's bridge plugin adopts it), so the
    // Service range has a route: a connection from the namespace itself (the relay's, for
    // the apiserver's webhook calls) is routed first, then rewritten by kube-proxy.
    let gateway = format!("{}/16", POD_GATEWAY);
    for args in [
        &["link", "add", POD_BRIDGE, "type", "bridge"][..],
        &["addr", "add", &gateway, "dev", POD_BRIDGE],
        &["link", "set", POD_BRIDGE, "up"],
        &["route", "add", SERVICE_SUBNET, "dev", POD_BRIDGE],
    ] {
        run(Command::new("ip").args(["-n", &plan.netns]).args(args))?;
    }
    run(Command::new("ip").args([
        "netns",
        "exec",
        &plan.netns,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
    ]))?;

    spawn(
        plan,
        "relay",
        Command::new(relay)
            .arg("relay")
            .arg("--netns")
            .arg(plan.netns_path())
            .arg("--forward")
            .arg(format!(
                "{NODE_IP}:{p}=127.0.0.1:{p}",
                p = kube.apiserver_port
            ))
            .arg("--forward")
            .arg(format!("{NODE_IP}:{pg_port}=127.0.0.1:{pg_port}"))
            .arg("--egress")
            .arg(&plan.egress_socket),
    )?;

    start_containerd(plan)?;
    run(Command::new(repo().join("scripts/bed-images.sh"))
        .arg("import")
        .arg(&plan.containerd_socket))
    .context("building and importing the node's images")?;

    // The controller manager and scheduler talk to the apiserver on the host's loopback.
    let sa_key = kube.kubeconfig.with_file_name("sa.key");
    spawn(
        plan,
        "kube-controller-manager",
        Command::new(binary("kube-controller-manager")?)
            .arg(format!("--kubeconfig={}", kube.kubeconfig.display()))
            .arg(format!("--root-ca-file={}", ca.cert_path().display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                sa_key.display()
            ))
            .args([
                "--leader-elect=false",
                "--secure-port=0",
                "--controllers=*,-bootstrapsigner,-tokencleaner",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ]),
    )?;
    spawn(
        plan,
        "kube-scheduler",
        Command::new(binary("kube-scheduler")?)
            .arg(format!("--kubeconfig={}", kube.kubeconfig.display()))
            .args(["--leader-elect=false", "--secure-port=0", "--v=1"]),
    )?;

    // The kubelet and kube-proxy reach the apiserver at the node's address (relayed).
    let node_kubeconfig = root.join("kubeconfig");
    let host_kubeconfig = std::fs::read_to_string(&kube.kubeconfig)?;
    std::fs::write(
        &node_kubeconfig,
        host_kubeconfig.replace(
            &format!("https://127.0.0.1:{}", kube.apiserver_port),
            &format!("https://{NODE_IP}:{}", kube.apiserver_port),
        ),
    )?;
    let kubelet_config = root.join("kubelet.yaml");
    std::fs::write(
        &kubelet_config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             address: {NODE_IP}\nport: 10250\nreadOnlyPort: 0\nhealthzBindAddress: 127.0.0.1\n\
             cgroupDriver: cgroupfs\ncgroupsPerQOS: false\nenforceNodeAllocatable: []\nfailCgroupV1: false\nfailSwapOn: false\n\
             containerRuntimeEndpoint: unix://{sock}\npodLogsDir: {root}/pod-logs\nresolvConf: \"\"\n\
             authentication:\n  anonymous:\n    enabled: false\n  webhook:\n    enabled: true\n  x509:\n    clientCAFile: {ca}\n\
             authorization:\n  mode: Webhook\n\
             evictionHard:\n  memory.available: 100Mi\n  nodefs.available: 1%\n  imagefs.available: 1%\n  nodefs.inodesFree: 1%\n\
             imageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\nserializeImagePulls: false\n\
             syncFrequency: 10s\nfileCheckFrequency: 10s\nnodeStatusUpdateFrequency: 5s\n",
            sock = plan.containerd_socket.display(),
            root = root.display(),
            ca = ca.cert_path().display(),
        ),
    )?;
    spawn(
        plan,
        "kubelet",
        in_netns(plan, binary("kubelet")?)
            .arg(format!("--config={}", kubelet_config.display()))
            .arg(format!("--kubeconfig={}", node_kubeconfig.display()))
            .arg(format!("--root-dir={}", root.join("kubelet").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={NODE_IP}"))
            .arg("--v=1"),
    )?;
    let proxy_config = root.join("kube-proxy.yaml");
    std::fs::write(
        &proxy_config,
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             clientConnection:\n  kubeconfig: {kubeconfig}\nmode: iptables\nhostnameOverride: {NODE_NAME}\n\
             clusterCIDR: {POD_SUBNET}\nbindAddress: {NODE_IP}\nhealthzBindAddress: 127.0.0.1:10256\nmetricsBindAddress: 127.0.0.1:10249\n\
             conntrack:\n  maxPerCore: 0\n  min: 0\n  tcpEstablishedTimeout: 0s\n  tcpCloseWaitTimeout: 0s\n",
            kubeconfig = node_kubeconfig.display(),
        ),
    )?;
    spawn(
        plan,
        "kube-proxy",
        in_netns(plan, binary("kube-proxy")?).arg(format!("--config={}", proxy_config.display())),
    )?;

    let info = NodeInfo {
        name: NODE_NAME.into(),
        ip: NODE_IP.into(),
        netns: plan.netns.clone(),
        containerd_socket: plan.containerd_socket.clone(),
        log_dir: logs,
    };
    wait_ready(kube, &info, Duration::from_secs(120))?;
    Ok(info)
}

fn start_containerd(plan: &Plan) -> anyhow::Result<()> {
    let root = &plan.root;
    let cni = root.join("cni");
    std::fs::create_dir_all(&cni)?;
    std::fs::write(
        cni.join("10-dbconn.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"dbconn-bed","plugins":[{{"type":"bridge","bridge":"{POD_BRIDGE}","isGateway":true,"ipMasq":false,"hairpinMode":true,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{POD_SUBNET}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}}}]}}"#,
            root.join("cni-ipam").display()
        ),
    )?;
    let config = root.join("containerd.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 2
root = "{root}/containerd/root"
state = "{root}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{root}/containerd-ttrpc.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
            root = root.display(),
            sock = plan.containerd_socket.display(),
            cni = cni.display(),
        ),
    )?;
    spawn(
        plan,
        "containerd",
        in_netns(plan, PathBuf::from("containerd")).arg(format!("--config={}", config.display())),
    )?;
    let started = Instant::now();
    while Command::new("ctr")
        .arg("--address")
        .arg(&plan.containerd_socket)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "containerd did not answer in 30 s; see {}",
                plan.root.join("logs/containerd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// `nsenter --net`: only the network namespace changes, so the kubelet's mounts (Secret
/// volumes) are the ones containerd and the host see.
fn in_netns(plan: &Plan, program: PathBuf) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", plan.netns_path().display()))
        .arg("--")
        .arg(program);
    cmd
}

/// Starts a long-running part of the node in its own session, logging to logs/NAME.log, and
/// records its pid in NAME.pid for `down.sh`.
fn spawn(plan: &Plan, name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(plan.root.join(format!("logs/{name}.log")))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    std::fs::write(
        plan.root.join(format!("{name}.pid")),
        format!("{}\n", child.id()),
    )?;
    Ok(())
}

fn wait_ready(kube: &KubeInfo, node: &NodeInfo, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let out = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", kube.kubeconfig.display()))
            .args(["get", "node", &node.name, "--request-timeout=5s", "-o"])
            .arg(r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#)
            .output()?;
        if out.stdout == b"True" {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!(
                "node {} not Ready after {limit:?}; see {}",
                node.name,
                node.log_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The repository this testbed was built from (scripts/bed-images.sh lives there).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
