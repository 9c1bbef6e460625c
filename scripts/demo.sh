#!/usr/bin/env bash
# The main job on the local test bed: start it (PostgreSQL with TLS, the control plane and a
# node that runs pods; docs/testbed.md), `helm install` dbconn as a user does (its image built
# from this checkout), apply examples/quickstart.yaml with the Secrets it references, show the
# tenancy policy at work, and end with an app pod that queries PostgreSQL through its injected
# sidecar. The bed keeps running afterwards for exploration; `make bed-down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
BED_DIR="${BED_DIR:-/tmp/dbconn-bed}"
HELM="${DBCONN_CACHE:-$HOME/.cache/dbconn}/bin/helm"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

cargo build -q -p testbed --bin testbed
cargo build -q --release --locked --bin dbconn --bin dbconn-pooler
if [ -f "$BED_DIR/bed.json" ]; then
  step "reusing the running test bed in $BED_DIR"
  env_lines=$(target/debug/testbed --dir "$BED_DIR" env)
else
  step "starting the test bed (PostgreSQL, kube-apiserver + etcd, a node) in $BED_DIR"
  env_lines=$(target/debug/testbed --dir "$BED_DIR" up)
fi
echo "$env_lines"
eval "$(echo "$env_lines" | sed "s/^\([A-Z_]*\)=\(.*\)$/export \1='\2'/")"
[ -n "${DBCONN_NODE_IP:-}" ] || { echo "this bed has no node: make bed-down, then make demo" >&2; exit 1; }
kubectl get nodes -o wide

step "helm install dbconn (CRDs, two operator pods, the webhook) with this checkout's image"
"$HELM" upgrade --install dbconn charts/dbconn -n dbconn-system --create-namespace \
  --set image.repository=dbconn.local/dbconn --set image.tag=dev --set image.pullPolicy=Never \
  --wait --timeout 180s >/dev/null
kubectl -n dbconn-system get pods -o wide
echo "leader: $(kubectl -n dbconn-system get lease dbconn-operator -o jsonpath='{.spec.holderIdentity}')"

step "applying examples/quickstart.yaml and the Secrets it names"
kubectl apply -f examples/quickstart.yaml
# The operator runs in a pod: it reaches PostgreSQL at the node's address (docs/testbed.md).
admin_url="${DATABASE_URL%%\?*}"
pod_admin_url="${admin_url/@localhost:/@$DBCONN_NODE_IP:}"
kubectl -n shop create secret generic orders-db-admin --from-literal=url="$pod_admin_url" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n shop create secret generic orders-db-ca --from-file=ca.crt="$PGSSLROOTCERT" --dry-run=client -o yaml | kubectl apply -f -

step "waiting for DatabaseConnection shop/orders to become Ready"
kubectl -n shop wait --for=condition=Ready dbconn/orders --timeout=120s
kubectl get dbconn -A
kubectl -n shop get dbconn orders -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.message}{"\n"}{end}'

step "the Secret shop/orders-db (keys; values stay in the cluster)"
kubectl -n shop get secret orders-db -o go-template='{{range $k, $v := .data}}{{$k}}{{"\n"}}{{end}}'

step "psql with the Secret's uri, as the application role (from this machine the server is localhost)"
uri=$(kubectl -n shop get secret orders-db -o jsonpath='{.data.uri}' | base64 -d)
uri="${uri/@$DBCONN_NODE_IP:/@localhost:}"
# The uri's sslrootcert is the path the chart mounts in a pod; here the bed's CA stands in.
psql "${uri%%&sslrootcert=*}&sslrootcert=$PGSSLROOTCERT" -c 'SELECT current_user, ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()'
step "dbconn check: log in as the role and list what it can do"
PGPASSWORD=$(kubectl -n shop get secret orders-db -o jsonpath='{.data.password}' | base64 -d) \
  target/release/dbconn check --url "${uri%%\?*}?sslmode=verify-full" --sslrootcert "$PGSSLROOTCERT" --access readWrite

step "one server, two teams: a shared DatabaseServer and its tenancy policy (docs/security.md)"
creds="${admin_url#*://}"; creds="${creds%%@*}"
kubectl -n dbconn-system create secret generic shared-admin --from-literal=username="${creds%%:*}" \
  --from-literal=password="${creds#*:}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n dbconn-system create secret generic shared-ca --from-file=ca.crt="$PGSSLROOTCERT" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
psql "$DATABASE_URL" -Atc "SELECT 1 FROM pg_database WHERE datname = 'team-a'" | grep -q 1 \
  || psql "$DATABASE_URL" -qc 'CREATE DATABASE "team-a"'
pg_port="${admin_url##*:}"; pg_port="${pg_port%%/*}"
kubectl apply -f - <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: team-a, labels: {dbconn.io/tenant: "true"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-b, labels: {dbconn.io/tenant: "true"}}
---
# No spec.tenants: each allowed namespace may use the database named after it and roles
# prefixed "<namespace>_", and may adopt nothing.
apiVersion: dbconn.io/v1alpha1
kind: DatabaseServer
metadata: {name: shared}
spec:
  host: ${DBCONN_NODE_IP}
  port: ${pg_port}
  tls: {sslmode: verify-full, caSecretRef: {name: shared-ca}}
  adminSecretRef: {name: shared-admin}
  allowedNamespaces: {matchLabels: {dbconn.io/tenant: "true"}}
---
apiVersion: dbconn.io/v1alpha1
kind: DatabaseConnection
metadata: {name: app, namespace: team-a}
spec: {serverRef: shared, database: team-a, role: {name: team-a_app}, access: readWrite}
---
apiVersion: dbconn.io/v1alpha1
kind: DatabaseConnection
metadata: {name: steal, namespace: team-b}
spec: {serverRef: shared, database: team-a, role: {name: team-b_app}, access: readWrite}
YAML
kubectl -n team-a wait --for=condition=Ready dbconn/app --timeout=120s
for _ in $(seq 60); do
  reason=$(kubectl -n team-b get dbconn steal -o jsonpath='{.status.conditions[?(@.type=="Authorized")].reason}')
  [ "$reason" = DatabaseNotAllowed ] && break
  sleep 1
done
echo "team-a/app:   $(kubectl -n team-a get dbconn app -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}')"
echo "team-b/steal: $(kubectl -n team-b get dbconn steal -o jsonpath='{.status.conditions[?(@.type=="Authorized")].message}')"

step "a connection for pods, with the pooler sidecar (spec.pooler.enabled)"
kubectl apply -f - <<YAML
apiVersion: dbconn.io/v1alpha1
kind: DatabaseConnection
metadata: {name: orders-pooled, namespace: shop}
spec:
  server:
    urlSecretRef: {name: orders-db-admin, key: url}
    tls: {sslmode: verify-full, caSecretRef: {name: orders-db-ca, key: ca.crt}}
  database: postgres
  role: {name: shop_orders_pooled}
  access: readOnly
  pooler: {enabled: true}
YAML
kubectl -n shop wait --for=condition=Ready dbconn/orders-pooled --timeout=120s

step "an app Deployment (label dbconn.io/inject=true, annotation dbconn.io/connections) running psql on DATABASE_URL"
kubectl apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web, dbconn.io/inject: "true"}
      annotations: {dbconn.io/connections: orders-pooled}
    spec:
      containers:
        - name: web
          image: dbconn.local/psql:dev
          imagePullPolicy: Never
          # psql on DATABASE_URL every 5 s (testbed/images/query-loop.sh)
          command: [query-loop]
          env: [{name: QUERY_INTERVAL, value: "5"}]
YAML
kubectl -n shop rollout status deployment/web --timeout=120s
web=$(kubectl -n shop get pods -l app=web --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}')
echo "--- the pod: the webhook added the sidecar as a native sidecar, started first"
kubectl -n shop get pod "$web" -o jsonpath='{range .spec.initContainers[*]}init {.name}  restartPolicy={.restartPolicy}  image={.image}{"\n"}{end}{range .spec.containers[*]}app  {.name}  image={.image}{"\n"}{end}'
echo "--- the sidecar's log"
kubectl -n shop logs "$web" -c dbconn-orders-pooled | head -3
echo "--- the app's log"
line=
for _ in $(seq 60); do
  line=$(kubectl -n shop logs "$web" -c web 2>/dev/null | grep -m1 '^query ran as' || true)
  [ -n "$line" ] && break
  sleep 1
done
echo "$web: ${line:?the app logged no query}"

step "done: the bed, the operator and the app keep running; 'make bed-down' stops them"
