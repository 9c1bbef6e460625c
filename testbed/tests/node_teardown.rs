//! Stopping a bed with a node leaves nothing behind: no container process, no network
//! namespace, no mount, no process of the bed, no folder, and the kubelet's kernel settings as
//! they were. A bed of its own (in a temp folder), beside any other running bed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::Bed;

fn kubectl(bed: &Bed, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg(format!("--kubeconfig={}", bed.kube.kubeconfig.display()))
        .args(args)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sysctls() -> Vec<(String, String)> {
    ["vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic"]
        .iter()
        .map(|k| {
            let v = std::fs::read_to_string(Path::new("/proc/sys").join(k)).unwrap_or_default();
            (k.to_string(), v.trim().to_owned())
        })
        .collect()
}

#[test]
fn stopping_a_bed_with_a_node_removes_its_containers_namespace_and_mounts() {
    let dir = std::env::temp_dir().join(format!("dbconn-bed-teardown-{}", std::process::id()));
    let before = sysctls();
    let bed = Bed::start_with_node(
        &dir,
        Some(std::process::id()),
        Path::new(env!("CARGO_BIN_EXE_testbed")),
    )
    .expect("a bed with a node (run scripts/setup.sh first)");
    let node = bed.node.clone().expect("the node");

    // A pod with a Secret volume (a tmpfs the kubelet mounts below the bed's folder).
    kubectl(
        &bed,
        &["create", "secret", "generic", "s", "--from-literal=k=v"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Command::new("kubectl")
        .arg(format!("--kubeconfig={}", bed.kube.kubeconfig.display()))
        .args(["get", "serviceaccount", "default"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "no default ServiceAccount");
        std::thread::sleep(Duration::from_millis(300));
    }
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"sleeper"}},"spec":{{"containers":[{{"name":"c","image":"{}","imagePullPolicy":"Never","command":["/bin/sleep","600"],"volumeMounts":[{{"name":"s","mountPath":"/s"}}]}}],"volumes":[{{"name":"s","secret":{{"secretName":"s"}}}}]}}}}"#,
        testbed::node::PSQL_IMAGE
    );
    let file = dir.join("pod.json");
    std::fs::write(&file, pod).expect("pod file");
    kubectl(&bed, &["apply", "-f", file.to_str().expect("path")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while kubectl(
        &bed,
        &["get", "pod", "sleeper", "-o", "jsonpath={.status.phase}"],
    ) != "Running"
    {
        assert!(Instant::now() < deadline, "the pod never ran");
        std::thread::sleep(Duration::from_millis(300));
    }
    let tasks = Command::new("ctr")
        .arg("--address")
        .arg(&node.containerd_socket)
        .args(["-n", "k8s.io", "tasks", "ls"])
        .output()
        .expect("ctr");
    let pids: Vec<u32> = String::from_utf8_lossy(&tasks.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert!(
        pids.len() >= 2,
        "the sandbox and the container run: {pids:?}"
    );
    let dir_text = dir.display().to_string();
    let mounts = || {
        std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&dir_text))
            .count()
    };
    assert!(mounts() > 0, "the Secret volume is mounted below the bed");

    bed.stop().expect("stopping the bed");

    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z")),
            "container process {pid} still runs"
        );
    }
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains(&node.netns),
        "the namespace {} is gone",
        node.netns
    );
    assert_eq!(mounts(), 0, "nothing stays mounted below {dir_text}");
    // (The watchdog that would run down.sh if this test died is the only one left.)
    let leftover = Command::new("pgrep")
        .args(["-af", &dir_text])
        .output()
        .expect("pgrep");
    let leftover: Vec<String> = String::from_utf8_lossy(&leftover.stdout)
        .lines()
        .filter(|l| !l.contains("down.sh"))
        .map(str::to_owned)
        .collect();
    assert!(
        leftover.is_empty(),
        "processes of the bed remain: {leftover:?}"
    );
    assert!(!dir.exists(), "the bed's folder is removed");
    assert_eq!(
        sysctls(),
        before,
        "the kubelet's kernel settings are put back"
    );
}
