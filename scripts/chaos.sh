#!/usr/bin/env bash
# Issue 29's fault-injection suite for long runs: every fault of cli/tests/it/chaos.rs
# (etcd killed and restarted, PostgreSQL crashed and restarted, MariaDB killed and
# restarted, the agent process killed and restarted, the leader frozen past its lease; plus
# leadership after an 8 s etcd outage) for N rounds each, then a table per fault checked from
# the databases themselves: rounds, completed (the rollout ended succeeded by itself), manual
# actions (rounds that would need an operator), double applications (ledger or applied
# history rows beyond one per revision), lost rows (revisions recorded applied, or reported
# succeeded, without their row), dirty history rows, time to recover.
#
#   bash scripts/chaos.sh --rounds 20          # the default is 5
#   bash scripts/chaos.sh --rounds 3 --only postgres
#
# Faults run one after the other (--test-threads=1) so their timings do not disturb each
# other. Exits non-zero when any round broke an invariant or did not complete by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="${2:?--rounds needs a number}"; shift 2 ;;
    --rounds=*) rounds="${1#*=}"; shift ;;
    --only) only="${2:?--only needs a test name filter}"; shift 2 ;;
    --only=*) only="${1#*=}"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "chaos: unknown argument $1: use --rounds N [--only FILTER]" >&2; exit 2 ;;
  esac
done
case "$rounds" in
  ''|*[!0-9]*|0) echo "chaos: --rounds must be a positive number, not '$rounds'" >&2; exit 2 ;;
esac

target="${CARGO_TARGET_DIR:-target}"
# The suite runs the flotilla-agent and flotilla binaries as processes it can kill.
cargo build --locked -p flotilla-agent --bins
bin=$(cargo test --locked -p flotilla-cli --test it --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\/it-[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "chaos: cannot find the cli test binary under $target" >&2; exit 1; }

report=$(mktemp "${TMPDIR:-/tmp}/flotilla-chaos.XXXXXX")
log="$target/chaos.log"
started=$(date +%s)
echo "chaos: $rounds rounds per fault; test output in $log" >&2
status=0
FLOTILLA_CHAOS_ROUNDS="$rounds" FLOTILLA_CHAOS_REPORT="$report" \
  "$bin" "chaos::${only}" --test-threads=1 --nocapture >"$log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - started ))

printf '\nflotilla chaos: %s rounds per fault, %ss in all (bash scripts/chaos.sh --rounds %s)\n\n' \
  "$rounds" "$elapsed" "$rounds"
{
  printf 'fault\trounds\tcompleted\tmanual actions\tdouble applications\tlost rows\tdirty\tdown median ms\trecover median ms\trecover max ms\n'
  cat "$report"
} | awk -F'\t' '
  { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR; nf = NF }
  END {
    for (r = 1; r <= n; r++) {
      line = "|"
      for (i = 1; i <= nf; i++) line = line " " sprintf("%-" w[i] "s", cell[r, i]) " |"
      print line
      if (r == 1) { line = "|"; for (i = 1; i <= nf; i++) { d = ""; for (k = 0; k < w[i] + 2; k++) d = d "-"; line = line d "|" } print line }
    }
  }'
rm -f "$report"
if [ "$status" -ne 0 ]; then
  echo "chaos: some rounds failed (exit $status); see $log" >&2
  grep -E "^test .*FAILED|did not complete|^Error" "$log" >&2 || true
fi
exit "$status"
