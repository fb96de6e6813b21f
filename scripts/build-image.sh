#!/usr/bin/env bash
# Builds the Flotilla container image (Containerfile) with podman and runs it:
#   1. `flotilla` and `flotilla-agent` in release mode, statically linked (glibc, crt-static),
#      in their own target dir (target/image), checked to need no shared library;
#   2. the build context: a root filesystem made here (no base image is pulled): the two
#      binaries, CA certificates, passwd/group with the non-root user 65532, /tmp, the
#      example migrations;
#   3. `podman build` FROM scratch, tagged with the Helm chart's default image
#      (values.yaml image.repository : Chart.yaml appVersion), e.g. flotilla/flotilla:0.1.0;
#   4. checks: runs as 65532, has no shell, `flotilla demo --tenants 20` succeeds (also with a
#      read-only root and a tmpfs /tmp, as the chart runs it), hostnames resolve; prints the
#      image size.
# Needs podman and runc (Debian: apt-get install podman runc; scripts/install-deps.sh --test
# installs them) and ca-certificates. Missing tools are an error, never a skip.
#
# Env: FLOTILLA_IMAGE (default: the chart's image), FLOTILLA_OCI_RUNTIME (default runc:
# crun refuses hybrid cgroup v1/v2 hosts such as CI's), FLOTILLA_IMAGE_SKIP_BUILD=1 to reuse
# the binaries of a previous run.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "build-image: $*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

have podman || die "podman is missing: apt-get install -y podman runc (or scripts/install-deps.sh --test)"
RUNTIME=${FLOTILLA_OCI_RUNTIME:-runc}
have "$RUNTIME" || die "the OCI runtime $RUNTIME is missing: apt-get install -y $RUNTIME (or set FLOTILLA_OCI_RUNTIME)"
CA=/etc/ssl/certs/ca-certificates.crt
[[ -s $CA ]] || die "$CA is missing: apt-get install -y ca-certificates"

# The chart's default image name.
repository=$(sed -n 's/^  repository: *//p' helm/flotilla/values.yaml | head -1)
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' helm/flotilla/Chart.yaml)
[[ -n $repository && -n $app_version ]] || die "cannot read image.repository / appVersion from helm/flotilla"
IMAGE=${FLOTILLA_IMAGE:-$repository:$app_version}

# --- 1. static binaries ---------------------------------------------------------------------
host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=$PWD/target/image
bin_dir=$CARGO_TARGET_DIR/$host/release
if [[ ${FLOTILLA_IMAGE_SKIP_BUILD:-0} != 1 ]]; then
    echo "build-image: cargo build --release (static, $host) into target/image" >&2
    # --target: RUSTFLAGS then apply to the binaries only, not to build scripts/proc macros.
    RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols \
        cargo build --release --locked --target "$host" \
        -p flotilla-cli -p flotilla-agent --bin flotilla --bin flotilla-agent
fi
for b in flotilla flotilla-agent; do
    [[ -x $bin_dir/$b ]] || die "$bin_dir/$b was not built"
    # A static executable has no program interpreter (ldd: "statically linked" or "not a
    # dynamic executable").
    out=$(ldd "$bin_dir/$b" 2>&1 || true)
    grep -qE 'statically linked|not a dynamic executable' <<<"$out" ||
        die "$b is not statically linked:\n$out"
done

# --- 2. the build context ---------------------------------------------------------------------
ctx=$CARGO_TARGET_DIR/context
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/tmp" \
    "$ctx/rootfs/migrations" "$ctx/home/flotilla"
cp "$bin_dir/flotilla" "$bin_dir/flotilla-agent" "$ctx/rootfs/usr/local/bin/"
cp -L "$CA" "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
cp migrations/*.sql "$ctx/rootfs/migrations/"
chmod 1777 "$ctx/rootfs/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nflotilla:x:65532:65532:flotilla:/home/flotilla:/sbin/nologin\n' \
    >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nflotilla:x:65532:\n' >"$ctx/rootfs/etc/group"
# glibc's resolver, linked in: /etc/hosts first, then DNS (resolv.conf comes from the runtime).
printf 'hosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$ctx/rootfs/etc/hosts"

# --- 3. podman build --------------------------------------------------------------------------
echo "build-image: podman build -t $IMAGE" >&2
podman build --quiet --file Containerfile --tag "$IMAGE" \
    --label "org.opencontainers.image.version=$app_version" "$ctx" >/dev/null ||
    die "podman build failed"

# --- 4. run it --------------------------------------------------------------------------------
# Root without CAP_SYS_RESOURCE (CI's sandbox) cannot raise the limits podman sets by default
# (nofile 1048576): ask for what this shell already has.
nofile=$(ulimit -Hn)
[[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
run=(podman run --rm --runtime "$RUNTIME" --network none
    --ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)

user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[[ $user == 65532:65532 ]] || die "the image runs as '$user', not 65532:65532"
if "${run[@]}" "$IMAGE" sh -c true >/dev/null 2>&1; then
    die "the image has a shell; it should hold the two binaries only"
fi
"${run[@]}" "$IMAGE" flotilla-agent --version >/dev/null || die "flotilla-agent does not run in the image"

log=$ctx/demo.log
out=$("${run[@]}" "$IMAGE" flotilla demo --tenants 20 --output json 2>"$log") ||
    die "podman run $IMAGE flotilla demo --tenants 20 failed: $(tail -20 "$log")"
python3 - "$out" <<'EOF' || die "flotilla demo in the image did not roll out every tenant: $out"
import json, sys
doc = json.loads(sys.argv[1])
assert doc["targets"] == 20 and doc["at_head"] == 20, "not every tenant is at the head"
assert doc["rollout"]["state"] == "succeeded", f"rollout {doc['rollout']['state']}"
EOF
# As the chart runs it: read-only root, /tmp a volume.
"${run[@]}" --read-only --tmpfs /tmp:rw,mode=1777 -e FLOTILLA_DEMO_DIR=/tmp/demo "$IMAGE" \
    flotilla demo --tenants 20 >/dev/null 2>"$log" ||
    die "flotilla demo failed on a read-only root with /tmp writable: $(tail -20 "$log")"
# Hostnames resolve (tonic dials names): localhost from /etc/hosts, answered by nothing.
err=$("${run[@]}" "$IMAGE" flotilla status --coordinator http://localhost:1 2>&1 || true)
grep -qiE 'refused|connect' <<<"$err" && ! grep -qiE 'dns|resolve|lookup' <<<"$err" ||
    die "resolving localhost in the image failed: $err"

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "ok: image $IMAGE ($((size / 1024 / 1024)) MiB): static binaries, user 65532, no shell, flotilla demo --tenants 20 succeeded"
