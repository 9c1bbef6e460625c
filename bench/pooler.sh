#!/usr/bin/env bash
# make bench-pooler: dbconn pooler vs PgBouncer vs direct PostgreSQL, side by side in one run
# on a fresh test bed (run through scripts/with-bed.sh, which exports DATABASE_URL,
# PGSSLROOTCERT and DBCONN_BED). Same pool size and transaction mode for both poolers; pgbench
# select-only (-S, scale 10, -j 2) with -M simple, -M extended and -M prepared (named
# statements, which each transaction may run on a different server connection) at 10 and 100
# clients, and -C (a new connection per transaction); once with a plain upstream and once
# with verify-full TLS upstream. Each cell is the median of BENCH_RUNS (3) runs of
# BENCH_SECONDS (5) s, interleaved (direct, PgBouncer, dbconn, direct, …) so drift on this
# shared machine falls on all three alike. Then each pooler runs every row again under
# callgrind for BENCH_CALLGRIND_TX transactions: instructions per transaction, a figure that
# does not move with the machine's load. Prints tps, ratios, instructions, pooler CPU µs per
# transaction (from /proc) and dbconn's latency. Nothing here is asserted.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_ROW="${BENCH_SECONDS:-5}"
RUNS="${BENCH_RUNS:-3}"
CALLGRIND_TX="${BENCH_CALLGRIND_TX:-3000}"
POOL_SIZE="${BENCH_POOL_SIZE:-5}"
work="$DBCONN_BED/bench-pooler"
mkdir -p "$work"
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
port=$(sed -E 's|.*:([0-9]+)/.*|\1|' <<<"${DATABASE_URL%%\?*}")
superuser_url="${DATABASE_URL}"
clk_tck=$(getconf CLK_TCK)

cargo build -q --release --locked --bin dbconn --bin dbconn-pooler
# The sidecar as the webhook injects it: the pooler-only binary.
pooler=target/release/dbconn-pooler

password="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
psql -X -q "$superuser_url" -c "DROP DATABASE IF EXISTS bench" -c "DROP ROLE IF EXISTS bench" \
  -c "CREATE ROLE bench LOGIN PASSWORD '$password'" -c "CREATE DATABASE bench OWNER bench"
PGPASSWORD="$password" "$pgbin/pgbench" -q -i -s 10 -h 127.0.0.1 -p "$port" -U bench bench >/dev/null 2>&1
# PgBouncer's auth_file holds the server's SCRAM verifier, not the password: a client's
# login then costs it HMACs, not 4096 PBKDF2 iterations, as the sidecar's does, and it logs
# in to the server with the keys the client's proof gives it (SCRAM pass-through).
verifier=$(psql -X -At "$superuser_url" -c "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = 'bench'")
case "$verifier" in SCRAM-SHA-256*) ;; *) echo "the bench role has no SCRAM verifier" >&2; exit 1 ;; esac

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# $1 = plain|tls; sets PORT and PID of a new dbconn pooler.
start_dbconn() {
  local dir="$work/dbconn-$1" p h
  mkdir -p "$dir"
  printf %s bench >"$dir/dbname"; printf %s bench >"$dir/username"; printf %s "$password" >"$dir/password"
  printf %s "$port" >"$dir/port"
  if [ "$1" = tls ]; then
    printf localhost >"$dir/host"; printf verify-full >"$dir/sslmode"; cp "$PGSSLROOTCERT" "$dir/ca.crt"
  else
    printf 127.0.0.1 >"$dir/host"; printf disable >"$dir/sslmode"; rm -f "$dir/ca.crt"
  fi
  p=$(free_port); h=$(free_port)
  RUST_LOG=warn ${WRAP:-} "$pooler" --secret-dir "$dir" --listen "127.0.0.1:$p" --http-addr "127.0.0.1:$h" \
    --pool-size "$POOL_SIZE" --min-idle "$POOL_SIZE" --max-clients 1000 --client-scram-iterations 16 >"$work/dbconn-$1.log" 2>&1 &
  pids+=($!)
  PID=$!; PORT=$p; HTTP=$h
  for _ in $(seq 600); do curl -fs "http://127.0.0.1:$h/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
}

# A counter of the dbconn pooler on HTTP port $1.
counter() { curl -fs "http://127.0.0.1:$1/metrics" | awk -v n="dbconn_pooler_$2" '$1 == n { print $2 }'; }

# $1 = plain|tls; sets PORT and PID of a new PgBouncer.
start_pgbouncer() {
  local dir="$work/pgbouncer-$1" p
  mkdir -p "$dir"
  p=$(free_port)
  printf '"bench" "%s"\n' "$verifier" >"$dir/userlist.txt"
  local host=127.0.0.1 tls=""
  if [ "$1" = tls ]; then
    host=localhost
    tls="server_tls_sslmode = verify-full
server_tls_ca_file = $PGSSLROOTCERT"
  fi
  cat >"$dir/pgbouncer.ini" <<EOF
[databases]
bench = host=$host port=$port dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $p
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
min_pool_size = $POOL_SIZE
max_client_conn = 1000
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
$tls
EOF
  # PgBouncer refuses to run as root; use the postgres user when we are root.
  rm -f "$dir/pgbouncer.pid"
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$dir"
    runuser -u postgres -- ${WRAP:-} pgbouncer "$dir/pgbouncer.ini" >/dev/null 2>&1 &
  else
    ${WRAP:-} pgbouncer "$dir/pgbouncer.ini" >/dev/null 2>&1 &
  fi
  for _ in $(seq 600); do [ -s "$dir/pgbouncer.pid" ] && break; sleep 0.1; done
  sleep 0.3
  PID=$(cat "$dir/pgbouncer.pid"); PORT=$p
  pids+=("$PID")
}

# stop PID: SIGTERM (PgBouncer: SIGINT, a safe shutdown) and wait for it to go.
stop() {
  kill -INT "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# run TARGET_PORT SSLMODE PID ARGS... → "tps latency_ms cpu_us_per_tx"
run() {
  local p=$1 mode=$2 pid=$3; shift 3
  local before after out tps lat tx
  before=$( [ "$pid" = - ] && echo 0 || cpu_ticks "$pid")
  out=$(PGPASSWORD="$password" PGSSLMODE="$mode" PGSSLROOTCERT="$PGSSLROOTCERT" \
    "$pgbin/pgbench" -n -S -T "$SECONDS_PER_ROW" -j 2 -h "$([ "$mode" = verify-full ] && echo localhost || echo 127.0.0.1)" \
    -p "$p" -U bench "$@" bench 2>&1) || { echo "failed - -"; tail -3 <<<"$out" >&2; return; }
  after=$( [ "$pid" = - ] && echo 0 || cpu_ticks "$pid")
  tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' <<<"$out" | head -1)
  lat=$(sed -nE 's/^latency average = ([0-9.]+) ms/\1/p' <<<"$out")
  tx=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' <<<"$out")
  local cpu=-
  if [ "$pid" != - ] && [ "${tx:-0}" -gt 0 ]; then
    cpu=$(awk -v t="$((after - before))" -v hz="$clk_tck" -v n="$tx" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  fi
  echo "${tps:-0} ${lat:-0} $cpu"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2fx", a / b; else print "-" }'; }
# A pooler that cannot run the workload (PgBouncer before 1.21 with -M prepared) shows "fails".
num() { if [[ $1 =~ ^[0-9.]+$ ]]; then printf '%.0f' "$1"; else echo fails; fi; }
# BENCH_ROWS picks rows, as "simple 10;connect 10".
IFS=';' read -ra rows <<<"${BENCH_ROWS:-simple 10;simple 100;extended 10;extended 100;prepared 10;prepared 100;connect 10}"
args_of() {
  if [ "$1" = connect ]; then ARGS=(-C -c "$2" -M simple); LABEL="-C -c $2"; else ARGS=(-M "$1" -c "$2"); LABEL="-M $1 -c $2"; fi
}

declare -A result
for upstream in plain tls; do
  start_dbconn "$upstream"; dport=$PORT; dpid=$PID; dhttp=$HTTP
  start_pgbouncer "$upstream"; bport=$PORT; bpid=$PID
  direct_mode=disable; [ "$upstream" = tls ] && direct_mode=verify-full
  for row in "${rows[@]}"; do
    args_of $row
    d=(); b=(); c=(); bc=(); cc=(); cl=()
    resets0=$(counter "$dhttp" server_resets_total); tx0=$(counter "$dhttp" transactions_total)
    for _ in $(seq "$RUNS"); do
      read -r t _ _ < <(run "$port" "$direct_mode" - "${ARGS[@]}"); d+=("$t")
      read -r t _ u < <(run "$bport" disable "$bpid" "${ARGS[@]}"); b+=("$t"); bc+=("$u")
      read -r t l u < <(run "$dport" disable "$dpid" "${ARGS[@]}"); c+=("$t"); cc+=("$u"); cl+=("$l")
    done
    resets1=$(counter "$dhttp" server_resets_total); tx1=$(counter "$dhttp" transactions_total)
    per_tx=$(awk -v r="$((${resets1%.*} - ${resets0%.*}))" -v t="$((${tx1%.*} - ${tx0%.*}))" 'BEGIN { if (t > 0) printf "%.2f", r / t; else print "-" }')
    key="$upstream/$LABEL"
    result[$key]="$(printf '%s\n' "${d[@]}" | median) $(printf '%s\n' "${b[@]}" | median) $(printf '%s\n' "${c[@]}" | median) $(printf '%s\n' "${bc[@]}" | median) $(printf '%s\n' "${cc[@]}" | median) $(printf '%s\n' "${cl[@]}" | median) $per_tx"
  done
  stop "$dpid"; stop "$bpid"
done

# Instructions per transaction: each pooler under callgrind, counters zeroed before and
# dumped after pgbench -t (transactions per client), so start-up is not counted.
# callgrind_control as the user the pooler runs as (vgdb finds a process by its user's FIFOs).
ctl() {
  local owner; owner=$(stat -c %U "/proc/$1")
  if [ "$owner" != "$(id -un)" ]; then runuser -u "$owner" -- callgrind_control "$2" "$1"; else callgrind_control "$2" "$1"; fi
}
# Ir of one pgbench run of $1 transactions per client (counters zeroed before, dumped after).
ir_of_run() {
  local pid=$1 p=$2 per_client=$3; shift 3
  local zeroed="" before dumps file
  for _ in $(seq 20); do ctl "$pid" --zero >/dev/null 2>&1 && { zeroed=1; break; }; sleep 0.5; done
  [ -n "$zeroed" ] || return 1
  PGPASSWORD="$password" "$pgbin/pgbench" -n -S -t "$per_client" -j 2 -h 127.0.0.1 -p "$p" -U bench "$@" bench >/dev/null 2>&1 || return 1
  # This process's dumps are callgrind.out.<pid>.<n>; the new one has the next n.
  before=$(ls "$work"/callgrind.out."$pid".* 2>/dev/null | wc -l)
  ctl "$pid" --dump >/dev/null 2>&1 || return 1
  for _ in $(seq 100); do dumps=$(ls "$work"/callgrind.out."$pid".* 2>/dev/null | wc -l); [ "$dumps" -gt "$before" ] && break; sleep 0.1; done
  file=$(ls "$work"/callgrind.out."$pid".* | awk -F. '{ print $NF, $0 }' | sort -n | tail -1 | cut -d' ' -f2-)
  sleep 0.2 # the dump is written whole before the next run starts
  awk '/^(summary|totals):/ { print $2; exit }' "$file"
}
# Instructions per transaction: two runs of a row, a short and a long one; the difference
# over the difference in transactions leaves out what does not grow with them (each client's
# login).
instructions() {
  local pid=$1 p=$2; shift 2
  local clients=1 prev="" short long
  for a in "$@"; do [ "$prev" = -c ] && clients=$a; prev=$a; done
  local n_long=$(( (CALLGRIND_TX + clients - 1) / clients )) n_short
  n_short=$(( n_long / 4 )); [ "$n_short" -ge 1 ] || n_short=1
  # A warm-up run first, not counted: PgBouncer opens its server connections only once a
  # client's SCRAM proof gives it the keys, and those logins (TLS handshakes, with a TLS
  # upstream) must not land in the short run and make the difference too small.
  PGPASSWORD="$password" "$pgbin/pgbench" -n -S -t "$n_short" -j 2 -h 127.0.0.1 -p "$p" -U bench "$@" bench >/dev/null 2>&1 || true
  short=$(ir_of_run "$pid" "$p" "$n_short" "$@") || { echo fails; return; }
  long=$(ir_of_run "$pid" "$p" "$n_long" "$@") || { echo fails; return; }
  awk -v a="$short" -v b="$long" -v n="$(( (n_long - n_short) * clients ))" 'BEGIN { printf "%d", (b - a) / n }'
}
if command -v callgrind_control >/dev/null; then
  for upstream in plain tls; do
    rm -f "$work"/callgrind.out.*
    chmod 777 "$work"
    WRAP="valgrind -q --tool=callgrind --callgrind-out-file=$work/callgrind.out.%p"
    start_dbconn "$upstream"; dport=$PORT; dpid=$PID
    start_pgbouncer "$upstream"; bport=$PORT; bpid=$PID
    # valgrind is the process: its pid is the one to control (PgBouncer's pid file has it too).
    for row in "${rows[@]}"; do
      args_of $row
      key="$upstream/$LABEL"
      result[$key]="${result[$key]} $(instructions "$bpid" "$bport" "${ARGS[@]}") $(instructions "$dpid" "$dport" "${ARGS[@]}")"
    done
    stop "$dpid"; stop "$bpid"
    unset WRAP
  done
fi

printf '\n%-7s %-20s %10s %9s %10s %10s %10s %10s %10s %8s %10s %10s %10s %9s\n' upstream workload direct_tps pgb_tps dbconn_tps dbconn/pgb dbconn/dir pgb_Ir/tx dbc_Ir/tx Ir_ratio pgb_cpu_us dbc_cpu_us dbc_lat_ms resets/tx
printf '%s\n' "$(printf -- '-%.0s' {1..156})"
for upstream in plain tls; do
  for row in "${rows[@]}"; do
    args_of $row
    read -r dt bt ct bcpu ccpu clat per_tx bir cir <<<"${result[$upstream/$LABEL]}"
    printf '%-7s %-20s %10s %9s %10s %10s %10s %10s %10s %8s %10s %10s %10s %9s\n' "$upstream" "$LABEL" "$(num "$dt")" "$(num "$bt")" "$(num "$ct")" \
      "$(ratio "$ct" "$bt")" "$(ratio "$ct" "$dt")" "${bir:--}" "${cir:--}" "$(ratio "${bir:-0}" "${cir:-0}")" "$bcpu" "$ccpu" "$clat" "$per_tx"
  done
done
echo "tps: median of $RUNS interleaved runs of $SECONDS_PER_ROW s; Ir/tx: callgrind instructions per transaction over ${CALLGRIND_TX} transactions (Ir_ratio = PgBouncer ÷ dbconn: above 1 means dbconn runs fewer)"

# Memory and start-up of the sidecar.
start_dbconn plain; mport=$PORT; mpid=$PID
idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$mpid/status")
PGPASSWORD="$password" "$pgbin/pgbench" -n -S -T 3 -c 100 -j 2 -h 127.0.0.1 -p "$mport" -U bench bench >/dev/null 2>&1 || true
busy_rss=$(awk '/VmHWM/ {print $2}' "/proc/$mpid/status")
dir="$work/dbconn-plain"; h=$(free_port); p=$(free_port)
start_ns=$(date +%s%N)
RUST_LOG=warn "$pooler" --secret-dir "$dir" --listen "127.0.0.1:$p" --http-addr "127.0.0.1:$h" >/dev/null 2>&1 &
pids+=($!)
until curl -fs "http://127.0.0.1:$h/readyz" >/dev/null 2>&1; do sleep 0.005; done
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
printf '\ndbconn-pooler (the sidecar): idle RSS %.1f MiB (goal <= 8), peak RSS with 100 clients %.1f MiB (goal <= 32), ready %d ms after start (goal <= 100)\n' \
  "$(awk -v k="$idle_rss" 'BEGIN { print k / 1024 }')" "$(awk -v k="$busy_rss" 'BEGIN { print k / 1024 }')" "$ready_ms"
echo "PgBouncer $(pgbouncer --version | head -1 | awk '{print $2}'); pool size $POOL_SIZE, transaction mode; $SECONDS_PER_ROW s per cell; pgbench -S -j 2, scale 10"
