#!/usr/bin/env bash
# Read-ahead, side by side in one run: the workload program against one
# Pagoda node, its region's cache a quarter of the dataset, with read-ahead
# off and on, repeated ROUNDS times in alternation; medians and ratios.
#
#   bash bench/prefetch.sh [--dataset 1GiB] [--fraction 0.25] [--rounds 3]
#        [--duration S] [--out DIR] [--no-build]
#
# Per round, each on a fresh region of the same node (`off` first in odd
# rounds, last in even ones):
#   off   --prefetch off                  scan, chase, kv90, indirect
#   on    --prefetch on --references      scan, chase, kv90, indirect
#   plain --prefetch on                   indirect (no reference extractor)
# and each run first measures one loopback stream (1 MiB writes for 1 s),
# the bandwidth limit the scan is compared with. The figures it prints are
# the ones docs/benchmarks.md records for read-ahead.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATASET=1GiB
FRACTION=0.25
ROUNDS=3
DURATION=5
WARMUP=3
OUT=""
BUILD=1
PORT=${PORT:-17270}

while [ $# -gt 0 ]; do
    case "$1" in
        --dataset) DATASET=$2; shift 2 ;;
        --fraction) FRACTION=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
        *) echo "prefetch: unknown argument $1" >&2; exit 2 ;;
    esac
done

say() { echo "prefetch: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

[ -n "$OUT" ] || OUT=$(mktemp -d /tmp/pagoda-prefetch.XXXXXX)
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo build --release -p pagoda-cli -p pagoda-bench --bin pagoda --bin workload) >&2
fi
PAGODA_BIN="$ROOT/target/release/pagoda"
WORKLOAD_BIN="$ROOT/target/release/workload"

NODE_DIR=$(mktemp -d /tmp/pagoda-prefetch-node.XXXXXX)
NODE_PID=""
cleanup() {
    [ -n "$NODE_PID" ] && kill "$NODE_PID" 2>/dev/null && wait "$NODE_PID" 2>/dev/null
    rm -rf "$NODE_DIR"
}
trap cleanup EXIT

DATASET_MIB=$(python3 -c "
import re,sys
m=re.fullmatch(r'(\d+)\s*([KMGT]?)i?B?', '$DATASET', re.I)
if not m: sys.exit('prefetch: bad --dataset $DATASET')
print(int(m.group(1)) * {'':1/1048576,'K':1/1024,'M':1,'G':1024,'T':1048576}[m.group(2).upper()])")
CACHE=$(python3 -c "print(int($DATASET_MIB * $FRACTION * 1048576) // 4096 * 4096)")
"$PAGODA_BIN" node --listen "127.0.0.1:$PORT" --capacity "$(( ${DATASET_MIB%.*} + 1024 ))MiB" \
    --data-dir "$NODE_DIR" > "$OUT/node.log" 2>&1 &
NODE_PID=$!
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$NODE_PID" 2>/dev/null || die "the node exited; see $OUT/node.log"
    sleep 0.1
done

run() {
    local label=$1
    shift
    say "round $round: $label"
    timeout -k 10 1800 "$WORKLOAD_BIN" --backend pagoda --node "127.0.0.1:$PORT" \
        --dataset "$DATASET" --cache "$CACHE" --fraction "$FRACTION" --duration "$DURATION" \
        --warmup "$WARMUP" --check-ops 5000 --loopback --json --label "$label" "$@" \
        >> "$RESULTS" 2>> "$OUT/workload.log" || die "run $label failed; see $OUT/workload.log"
}

# Odd rounds run `off` first, even rounds last, so that neither side always
# runs on a node (and machine) the other has just warmed.
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then run off --prefetch off --workloads scan,chase,kv90,indirect; fi
    run on --prefetch on --references --workloads scan,chase,kv90,indirect
    run plain --prefetch on --workloads indirect
    if [ $((round % 2)) = 0 ]; then run off --prefetch off --workloads scan,chase,kv90,indirect; fi
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def med(label, workload, key="ops_per_sec"):
    values = [r[key] for r in rows if r["backend"] == label and r["workload"] == workload]
    return statistics.median(values) if values else float("nan")
checks = {}
for r in rows:
    checks.setdefault(r["workload"], set()).add(r["checksum"])
bad = [w for w, c in checks.items() if len(c) != 1]
if bad:
    sys.exit(f"prefetch: checksums differ between runs for {bad}")
loop = statistics.median(r["loopback_bytes_per_s"] for r in rows)
print(f"loopback stream (median of {len(rows)} runs): {loop / 1e9:.2f} GB/s")
print("| workload | off ops/s | on ops/s | on / off | hit ratio off / on | read ahead: used / late / wasted (on) |")
print("| --- | --- | --- | --- | --- | --- |")
for w in ["scan", "chase", "kv90", "indirect"]:
    off, on = med("off", w), med("on", w)
    on_rows = [r for r in rows if r["backend"] == "on" and r["workload"] == w]
    c = on_rows[-1]["cache"]
    hit = lambda label: statistics.median(r["cache"].get("hit_ratio", 0) for r in rows if r["backend"] == label and r["workload"] == w)
    print(f"| {w} | {off:.0f} | {on:.0f} | {on / off:.2f}× | {hit('off'):.3f} / {hit('on'):.3f} | "
          f"{c.get('prefetch_used')} / {c.get('prefetch_late')} / {c.get('prefetch_wasted')} |")
scan_on = med("on", "scan", "bytes_per_s")
print(f"scan with read-ahead: {scan_on / 1e6:.0f} MB/s = {scan_on / loop:.2f}× the loopback stream")
plain = med("plain", "indirect")
print(f"indirect: extractor {med('on', 'indirect'):.0f} ops/s, streams only {plain:.0f}, "
      f"off {med('off', 'indirect'):.0f}: extractor / without = {med('on', 'indirect') / plain:.2f}×")
EOF
say "results in $RESULTS"
