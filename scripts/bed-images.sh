#!/usr/bin/env bash
# The bed node's images, built locally with buildah from scratch (nothing can be pulled here)
# and imported into the node's containerd:
#   dbconn.local/dbconn:dev   the release binaries, as the Dockerfile ships them (same binary paths,
#                             user and entrypoint, read from the Dockerfile and checked in the
#                             built image), plus the shared libraries a glibc build needs
#   dbconn.local/psql:dev     psql, busybox's sh and /bin/query-loop (testbed/images/): the demo
#                             and end-to-end tests' app
#   dbconn.local/pause:dev    the pod sandbox (busybox sleep; containerd kills it with SIGKILL)
#
#   scripts/bed-images.sh import SOCKET   build what is missing and import into containerd
#   scripts/bed-images.sh build           build what is missing, print the archives
#   scripts/bed-images.sh check           the Dockerfile and the chart agree (chart-check.sh)
#
# psql and pause are cached by the versions of their packages; dbconn by the binary's hash.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${DBCONN_CACHE:-$HOME/.cache/dbconn}"
IMAGES="$CACHE/images"
log() { echo "[images] $*" >&2; }

# What the Dockerfile's final stage says; the local image must say the same.
dockerfile_user=$(awk '/^USER /{u=$2} END{print u}' Dockerfile)
dockerfile_entrypoint=$(sed -n 's/^ENTRYPOINT //p' Dockerfile | tail -1)
# The binaries the final stage copies from the build (/dbconn, /dbconn-pooler).
dockerfile_binaries=$(awk '/^COPY --from=build /{print $NF}' Dockerfile)
# The sidecar's program, as the webhook injects it.
sidecar_command=$(sed -n 's/^pub const SIDECAR_COMMAND: &str = "\(.*\)";$/\1/p' src/inject/mod.rs)

check() {
  local uid=${dockerfile_user%%:*} failed=0
  [ -n "$dockerfile_user" ] && [ -n "$dockerfile_entrypoint" ] && [ -n "$dockerfile_binaries" ] \
    || { log "Dockerfile: no USER, ENTRYPOINT or COPY --from=build in the final stage"; exit 1; }
  [ "$dockerfile_entrypoint" = '["/dbconn"]' ] && grep -qx /dbconn <<<"$dockerfile_binaries" \
    || { log "Dockerfile: ENTRYPOINT $dockerfile_entrypoint is not the copied binary /dbconn"; failed=1; }
  [ -n "$sidecar_command" ] && grep -qx "$sidecar_command" <<<"$dockerfile_binaries" \
    || { log "src/inject/mod.rs: the sidecar's SIDECAR_COMMAND '$sidecar_command' is not a binary the Dockerfile copies ($dockerfile_binaries)"; failed=1; }
  # The chart's runAsUser must be the image's user, or runAsNonRoot checks a different uid.
  for key in podSecurityContext securityContext; do
    local chart_uid
    chart_uid=$(awk -v k="$key:" '$1==k{f=1;next} f&&/^[^ ]/{f=0} f&&$1=="runAsUser:"{print $2}' charts/dbconn/values.yaml)
    [ "$chart_uid" = "$uid" ] || { log "charts/dbconn/values.yaml $key.runAsUser=$chart_uid, Dockerfile USER $uid"; failed=1; }
  done
  # The webhook's sidecar sets its own runAsUser (src/inject/mod.rs): the same uid.
  grep -q "run_as_user: Some($uid)" src/inject/mod.rs \
    || { log "src/inject/mod.rs: the sidecar's run_as_user is not the Dockerfile's USER $uid"; failed=1; }
  return $failed
}

buildah_() { buildah --root "$IMAGES/buildah/root" --runroot "$IMAGES/buildah/run" --storage-driver vfs "$@"; }

# stage ROOT FILE...: copy each file and every shared library ldd lists for it into ROOT.
stage() {
  local root=$1; shift
  local f lib
  for f in "$@"; do
    cp --parents -L "$f" "$root"
    for lib in $(ldd "$f" 2>/dev/null | awk '$2=="=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      cp --parents -L -n "$lib" "$root"
    done
  done
}

# The user every image runs as, from the Dockerfile (distroless's nonroot).
stage_users() {
  local root=$1 uid=${dockerfile_user%%:*} gid=${dockerfile_user##*:}
  mkdir -p "$root/etc" "$root/tmp" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' "$uid" "$gid" >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$gid" >"$root/etc/group"
}

# build NAME ARCHIVE ROOT [buildah config args...]: an image of exactly ROOT, as a docker archive.
build() {
  local name=$1 archive=$2 root=$3; shift 3
  local ctr
  ctr=$(buildah_ from scratch)
  buildah_ copy "$ctr" "$root" / >/dev/null
  buildah_ config "$@" "$ctr"
  buildah_ commit -q "$ctr" "$name" >/dev/null
  buildah_ rm "$ctr" >/dev/null
  mkdir -p "$(dirname "$archive")"
  rm -f "$archive.tmp"
  buildah_ push -q "$name" "docker-archive:$archive.tmp:$name"
  mv "$archive.tmp" "$archive"
}

build_all() {
  local busybox_version pg_version binary_hash root pg_bin
  busybox_version=$(dpkg-query -W -f='${Version}' busybox-static | tr ':~+' '___')
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  pg_version=$(dpkg-query -W -f='${Version}' libpq5 | tr ':~+' '___')
  local pause_archive="$IMAGES/pause-$busybox_version.tar"
  local app_hash
  app_hash=$(sha256sum testbed/images/query-loop.sh | cut -c1-12)
  local psql_archive="$IMAGES/psql-$pg_version-$busybox_version-$app_hash.tar"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  if [ ! -f "$pause_archive" ]; then
    log "pause: busybox-static $busybox_version"
    mkdir -p "$root/pause/bin" && cp /bin/busybox "$root/pause/bin/busybox"
    build dbconn.local/pause:dev "$pause_archive" "$root/pause" \
      --entrypoint '["/bin/busybox","sleep","2147483647"]'
  fi
  if [ ! -f "$psql_archive" ]; then
    log "psql: libpq5 $pg_version with busybox sh and query-loop"
    find "$IMAGES" -maxdepth 1 -name 'psql-*.tar' -delete
    stage_users "$root/psql"
    mkdir -p "$root/psql/bin"
    cp /bin/busybox "$root/psql/bin/busybox"
    for applet in sh sleep echo date cat; do ln -s busybox "$root/psql/bin/$applet"; done
    stage "$root/psql" "$pg_bin/psql"
    install -m 0755 testbed/images/query-loop.sh "$root/psql/bin/query-loop"
    ln -s "$pg_bin/psql" "$root/psql/bin/psql"
    build dbconn.local/psql:dev "$psql_archive" "$root/psql" \
      --user "$dockerfile_user" --env PATH=/bin --env HOME=/home/nonroot --entrypoint '["/bin/sh"]'
  fi
  local binary
  for binary in $dockerfile_binaries; do
    [ -x "target/release${binary}" ] || cargo build --release --locked --bin dbconn --bin dbconn-pooler
  done
  binary_hash=$(for binary in $dockerfile_binaries; do cat "target/release${binary}"; done | sha256sum | cut -c1-16)
  dbconn_archive="$IMAGES/dbconn-$binary_hash.tar"
  if [ ! -f "$dbconn_archive" ]; then
    log "dbconn: target/release{$(echo $dockerfile_binaries | tr ' ' ',')} ($binary_hash), user $dockerfile_user"
    find "$IMAGES" -maxdepth 1 -name 'dbconn-*.tar' -delete
    stage_users "$root/dbconn"
    mkdir -p "$root/dbconn/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$root/dbconn/etc/ssl/certs/"
    for binary in $dockerfile_binaries; do
      cp "target/release${binary}" "$root/dbconn$binary"
      for lib in $(ldd "target/release${binary}" | awk '$2=="=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
        cp --parents -L -n "$lib" "$root/dbconn"
      done
    done
    build dbconn.local/dbconn:dev "$dbconn_archive" "$root/dbconn" \
      --user "$dockerfile_user" --entrypoint "$dockerfile_entrypoint"
    local got want
    # Go's rendering of the entrypoint: ["/dbconn"] is [/dbconn].
    want="$dockerfile_user $(echo "$dockerfile_entrypoint" | tr -d '"' | tr ',' ' ')"
    got=$(buildah_ inspect --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}}' dbconn.local/dbconn:dev)
    [ "$got" = "$want" ] \
      || { rm -f "$dbconn_archive"; log "built image says '$got', the Dockerfile '$want'"; exit 1; }
  fi
  # The archives are the cache; buildah's own copies are not needed again.
  buildah_ rmi -a -f >/dev/null 2>&1 || true
  echo "$pause_archive" "$psql_archive" "$dbconn_archive"
}

case "${1:-}" in
  check) check ;;
  build) check && build_all ;;
  import)
    socket=${2:?usage: bed-images.sh import SOCKET}
    check
    for archive in $(build_all); do
      ctr --address "$socket" -n k8s.io images import "$archive" >/dev/null
    done
    ;;
  *) echo "usage: $0 import SOCKET | check" >&2; exit 2 ;;
esac
