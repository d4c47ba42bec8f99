#!/usr/bin/env bash
# The headline comparison: Pagoda, through its cache and mapped into the
# process, against Linux swap (with and without zswap) and all-local memory,
# at 100 %, 50 %, 25 % and 12.5 % local memory.
#
#   sudo bash bench/compare.sh [--dataset 4GiB] [--quick] [--duration S]
#        [--warmup S] [--fractions "1 0.5 0.25 0.125"] [--workloads LIST]
#        [--out DIR] [--plots DIR] [--no-build] [--hog]
#
# As root it creates a swap file on the local disk and one memory cgroup per
# run (cgroup v1 memory controller or cgroup v2), runs the workload program
# (crates/bench/src/bin/workload.rs) once per backend and local fraction, and
# removes the swap file and the cgroups and restores zswap on every exit,
# failed runs and Ctrl-C included. The results (one JSON object per workload
# and run) go to DIR/results.jsonl; compare_plot checks that every run read the
# same checksum per workload, prints the table and writes the plots.
#
# The limited process is the application: the workload with the swap backend
# (its records in a plain mapping), the pagoda backend (its records in a region
# whose local cache is the same fraction of the dataset; pagoda-colocated: the
# same, its misses copied from the node's shared memory, its cache smaller by
# the page tables of that mapping, dataset / 512) or the mapped backend
# (the same region mapped into the process with that local budget less the
# page tables of its view, dataset / 512, reached by the local backend's very
# loop over a plain slice; mapped-colocated: the same, its misses copied from
# the node's shared memory, less a second view's page tables). The cgroup limit is
# fraction x dataset plus a fixed allowance (ALLOWANCE_MIB) for the program, its
# heap and Pagoda's page table. The memory node runs outside the cgroup: it is
# the remote memory, one fresh node per Pagoda run.
#
# --hog runs the whole matrix on a busy machine: one CPU-bound process per
# core (a shell busy loop, outside every cgroup, bounded by HOG_TIMEOUT_S and
# killed on exit) from before the first run to after the last, for every
# backend alike.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATASET=4GiB
DURATION=10
WARMUP=5
CHECK_OPS=20000
FRACTIONS="1 0.5 0.25 0.125"
WORKLOADS=kv90,kv50,uniform90,scan,chase,indirect
OUT=""
PLOTS="$ROOT/docs/plots"
BUILD=1
QUICK=0
HOG=0
# The most seconds the --hog processes live (they are killed on exit anyway).
HOG_TIMEOUT_S=${HOG_TIMEOUT_S:-21600}
# Fixed memory the cgroup allows on top of fraction x dataset, in MiB.
ALLOWANCE_MIB=${ALLOWANCE_MIB:-64}
SWAPPINESS=${SWAPPINESS:-60}
SWAPFILE=${SWAPFILE:-/var/tmp/pagoda-compare.swap}
PORT=${PORT:-17170}
# The most seconds one run of the workload may take before it is killed.
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-1800}
ARGS_GIVEN="$*"

usage() { sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dataset) DATASET=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --check-ops) CHECK_OPS=$2; shift 2 ;;
        --fractions) FRACTIONS=$2; shift 2 ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --plots) PLOTS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --hog) HOG=1; shift ;;
        -h|--help) usage ;;
        *) echo "compare: unknown argument $1" >&2; usage ;;
    esac
done
if [ "$QUICK" = 1 ]; then
    case " $ARGS_GIVEN " in *" --dataset "*) ;; *) DATASET=1GiB ;; esac
    case " $ARGS_GIVEN " in *" --duration "*) ;; *) DURATION=3 ;; esac
    case " $ARGS_GIVEN " in *" --warmup "*) ;; *) WARMUP=2 ;; esac
fi

say() { echo "compare: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

# Sizes: 4096, 64MiB, 4GiB (whole numbers).
bytes_of() {
    local text=$1 number unit
    number=${text%%[!0-9]*}
    unit=${text#"$number"}
    [ -n "$number" ] || die "$text is not a size"
    case "$unit" in
        ""|B) echo "$number" ;;
        K|KiB) echo $((number << 10)) ;;
        M|MiB) echo $((number << 20)) ;;
        G|GiB) echo $((number << 30)) ;;
        *) die "$text: unknown unit $unit" ;;
    esac
}

[ "$(id -u)" = 0 ] || die "run as root: it creates a swap file and memory cgroups"
DATASET_BYTES=$(bytes_of "$DATASET")
[ "$DATASET_BYTES" -ge $((16 << 20)) ] || die "the dataset must be at least 16MiB"
[ -n "$OUT" ] || OUT="$ROOT/bench/results/compare-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT/logs"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$BUILD" = 1 ]; then
    say "building (release)"
    (cd "$ROOT" && cargo build --release -q -p pagoda-bench --bin workload --bin compare_plot \
        && cargo build --release -q -p pagoda-cli)
fi
WORKLOAD_BIN="$TARGET/release/workload"
PLOT_BIN="$TARGET/release/compare_plot"
PAGODA_BIN="$TARGET/release/pagoda"
for bin in "$WORKLOAD_BIN" "$PLOT_BIN" "$PAGODA_BIN"; do
    [ -x "$bin" ] || die "$bin is missing (build it, or drop --no-build)"
done

# ------------------------------------------------------------------ cleanup
SWAP_ON=0
ZSWAP_PARAM=/sys/module/zswap/parameters/enabled
ZSWAP_ORIGINAL=""
NODE_PID=""
NODE_DIR=""
RUN_PID=""
HOG_PIDS=()
CGROUPS=()
FAILURES=()

remove_cgroup() {
    local dir=$1 pid
    [ -d "$dir" ] || return 0
    # Anything still inside (a killed run's leftovers) is killed first.
    for pid in $(cat "$dir/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        rmdir "$dir" 2>/dev/null && return 0
        sleep 0.1
    done
    say "could not remove cgroup $dir"
}

stop_node() {
    if [ -n "$NODE_PID" ]; then
        kill -TERM "$NODE_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$NODE_PID" 2>/dev/null || true
        wait "$NODE_PID" 2>/dev/null || true
        NODE_PID=""
    fi
    if [ -n "$NODE_DIR" ]; then rm -rf "$NODE_DIR"; NODE_DIR=""; fi
}

cleanup() {
    set +e
    for pid in "${HOG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    if [ -n "$RUN_PID" ]; then
        kill -TERM "$RUN_PID" 2>/dev/null
        wait "$RUN_PID" 2>/dev/null
    fi
    stop_node
    for dir in "${CGROUPS[@]}"; do remove_cgroup "$dir"; done
    if [ "$SWAP_ON" = 1 ]; then
        swapoff "$SWAPFILE" && say "swap file removed from use"
    fi
    rm -f "$SWAPFILE"
    if [ -n "$ZSWAP_ORIGINAL" ] && [ -w "$ZSWAP_PARAM" ]; then
        echo "$ZSWAP_ORIGINAL" > "$ZSWAP_PARAM"
    fi
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------------- cgroups
# Where the per-run cgroups are made: under this shell's own memory cgroup, so
# that whatever accounts for this shell still accounts for the runs.
if [ -d /sys/fs/cgroup/memory ] && [ -f /sys/fs/cgroup/memory/cgroup.procs ]; then
    CGROUP_VERSION=1
    own=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
    CGROUP_PARENT="/sys/fs/cgroup/memory${own%/}"
elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CGROUP_VERSION=2
    # In v2 a cgroup with processes cannot have controlled children, so the
    # runs go under the root, which always delegates memory.
    CGROUP_PARENT=/sys/fs/cgroup
    grep -qw memory /sys/fs/cgroup/cgroup.subtree_control \
        || echo +memory > /sys/fs/cgroup/cgroup.subtree_control
else
    die "no memory cgroup controller found (v1 /sys/fs/cgroup/memory or v2)"
fi
say "cgroup v$CGROUP_VERSION under $CGROUP_PARENT"

RUN_SERIAL=0
CG=""
# Makes a fresh cgroup limited to $1 bytes and leaves its path in CG (not a
# command substitution: the list of cgroups to remove must survive).
make_cgroup() {
    local limit=$1 dir
    RUN_SERIAL=$((RUN_SERIAL + 1))
    dir="$CGROUP_PARENT/pagoda-compare-$$-$RUN_SERIAL"
    mkdir "$dir"
    CGROUPS+=("$dir")
    CG=$dir
    if [ "$CGROUP_VERSION" = 1 ]; then
        echo "$limit" > "$dir/memory.limit_in_bytes"
        echo "$SWAPPINESS" > "$dir/memory.swappiness"
        # memory.memsw.limit_in_bytes stays unlimited: swap is not capped.
    else
        echo "$limit" > "$dir/memory.max"
        if [ -f "$dir/memory.swap.max" ]; then echo max > "$dir/memory.swap.max"; fi
        if [ -f "$dir/memory.zswap.max" ]; then echo max > "$dir/memory.zswap.max"; fi
    fi
}

# ---------------------------------------------------------------------- swap
swapon --show=NAME --noheadings | grep -q . && say "note: other swap is active: $(swapon --show=NAME --noheadings | tr '\n' ' ')"
SWAP_BYTES=$((DATASET_BYTES + (1 << 30)))
avail=$(df --output=avail -B1 "$(dirname "$SWAPFILE")" | tail -1)
[ "$avail" -gt $((SWAP_BYTES + (4 << 30))) ] || die "not enough disk for a $((SWAP_BYTES >> 20)) MiB swap file"
say "swap file $SWAPFILE, $((SWAP_BYTES >> 20)) MiB"
rm -f "$SWAPFILE"
fallocate -l "$SWAP_BYTES" "$SWAPFILE"
chmod 600 "$SWAPFILE"
mkswap -q "$SWAPFILE" > /dev/null
swapon "$SWAPFILE"
SWAP_ON=1

if [ -f "$ZSWAP_PARAM" ]; then
    ZSWAP_ORIGINAL=$(cat "$ZSWAP_PARAM")
fi
set_zswap() {
    [ -w "$ZSWAP_PARAM" ] || die "zswap is not available ($ZSWAP_PARAM)"
    echo "$1" > "$ZSWAP_PARAM"
}

# ---------------------------------------------------------------------- node
start_node() {
    NODE_DIR=$(mktemp -d /tmp/pagoda-compare-node.XXXXXX)
    local capacity=$(( (DATASET_BYTES >> 20) + 1024 ))MiB
    "$PAGODA_BIN" node --listen "127.0.0.1:$PORT" --capacity "$capacity" --data-dir "$NODE_DIR" \
        > "$OUT/logs/node-$1.log" 2>&1 &
    NODE_PID=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        kill -0 "$NODE_PID" 2>/dev/null || die "the node exited; see $OUT/logs/node-$1.log"
        sleep 0.1
    done
    die "the node did not listen on 127.0.0.1:$PORT within 10 s"
}

# ---------------------------------------------------------------------- runs
COMMON=(--dataset "$DATASET" --workloads "$WORKLOADS" --duration "$DURATION"
        --warmup "$WARMUP" --check-ops "$CHECK_OPS" --json)

# run LABEL FRACTION CGROUP_DIR_OR_EMPTY WORKLOAD_ARGS...
run() {
    local label=$1 fraction=$2 cgroup=$3 log status=0
    shift 3
    log="$OUT/logs/$label-$fraction.log"
    say "run $label at fraction $fraction${cgroup:+ (limit $(cat "$cgroup"/memory.limit_in_bytes "$cgroup"/memory.max 2>/dev/null | head -1) bytes)}"
    # In the background and waited for, so that a signal to this script runs
    # the cleanup at once rather than after the run.
    if [ -n "$cgroup" ]; then
        timeout -k 10 "$RUN_TIMEOUT_S" bash -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' \
            _ "$cgroup" "$WORKLOAD_BIN" "$@" "${COMMON[@]}" --label "$label" --fraction "$fraction" \
            >> "$RESULTS" 2> "$log" &
    else
        timeout -k 10 "$RUN_TIMEOUT_S" "$WORKLOAD_BIN" "$@" "${COMMON[@]}" --label "$label" \
            --fraction "$fraction" >> "$RESULTS" 2> "$log" &
    fi
    RUN_PID=$!
    wait "$RUN_PID" || status=$?
    RUN_PID=""
    if [ "$status" != 0 ]; then
        say "run $label at $fraction FAILED (exit $status); last lines of $log:"
        tail -5 "$log" >&2
        FAILURES+=("$label@$fraction")
    fi
    if [ -n "$cgroup" ]; then
        # What the cgroup saw, then the cgroup itself, before the next run.
        { echo "--- cgroup $cgroup"; cat "$cgroup/memory.stat"; } >> "$log" 2>/dev/null || true
        remove_cgroup "$cgroup"
    fi
}

limit_for() {
    # fraction x dataset + allowance, in bytes, whole pages (awk for the
    # fractional product; %.0f, not %d, which some awks cap at 2^31).
    awk -v f="$1" -v d="$DATASET_BYTES" -v a="$ALLOWANCE_MIB" \
        'BEGIN { printf "%.0f\n", int((f * d + a * 1048576) / 4096) * 4096 }'
}
cache_for() {
    awk -v f="$1" -v d="$DATASET_BYTES" 'BEGIN { printf "%.0f\n", int(f * d / 4096) * 4096 }'
}
# Page tables charged to the application's cgroup beyond its cache, 8 bytes
# per 4 KiB page of the dataset for each view of the whole region:
# pagoda-colocated maps the node's memory (one view), mapped its local tier
# (one view), mapped-colocated both (two views). Their cache is smaller by
# that much, so that the same limit holds. With the whole dataset local
# (fraction 1) the budget stays whole, or a mapping would evict at 100 %: the
# fixed allowance holds the tables then.
cache_less_views() {
    awk -v c="$(cache_for "$1")" -v d="$DATASET_BYTES" -v v="$2" -v f="$1" \
        'BEGIN { if (f >= 1) v = 0; printf "%.0f\n", (c - v * int(d / 512 / 4096 + 1) * 4096) }'
}

cat > "$OUT/meta.json" <<EOF
{"dataset": "$DATASET", "dataset_bytes": $DATASET_BYTES, "duration_s": $DURATION,
 "warmup_s": $WARMUP, "check_ops": $CHECK_OPS, "fractions": "$FRACTIONS",
 "allowance_mib": $ALLOWANCE_MIB, "swappiness": $SWAPPINESS, "cgroup_version": $CGROUP_VERSION,
 "kernel": "$(uname -r)", "cpus": $(nproc), "mem_total_kib": $(awk '/MemTotal/ {print $2}' /proc/meminfo),
 "cpu_model": "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)",
 "zswap_compressor": "$(cat /sys/module/zswap/parameters/compressor 2>/dev/null)",
 "thp": "$(sed -n "s/.*\[\(.*\)\].*/\1/p" /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)",
 "hog_processes": $([ "$HOG" = 1 ] && nproc || echo 0),
 "command": "bash bench/compare.sh $ARGS_GIVEN", "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
EOF

say "dataset $DATASET, $DURATION s per workload, fractions $FRACTIONS, results in $OUT"
if [ "$HOG" = 1 ]; then
    for _ in $(seq 1 "$(nproc)"); do
        timeout "$HOG_TIMEOUT_S" bash -c 'while :; do :; done' &
        HOG_PIDS+=($!)
    done
    say "hog: $(nproc) busy processes, one per core"
fi
set_zswap N
run local 1 "" --backend local

for fraction in $FRACTIONS; do
    limit=$(limit_for "$fraction")
    cache=$(cache_for "$fraction")

    # The same region, through its cache and mapped, each on a fresh node.
    # Through its cache the region reads ahead (streams by default, and an
    # index page's records in `indirect`, whose layout the application
    # tells it with --references); a mapping reads nothing ahead yet.
    # pagoda-colocated and mapped-colocated read their misses from the
    # node's shared memory (the node runs on this host; co-located access).
    for backend in pagoda pagoda-colocated mapped mapped-colocated; do
        start_node "$backend-$fraction"
        make_cgroup "$limit"
        extra=()
        case $backend in mapped*) ;; *) extra=(--references) ;; esac
        case $backend in
            pagoda-colocated | mapped) backend_cache=$(cache_less_views "$fraction" 1) ;;
            mapped-colocated) backend_cache=$(cache_less_views "$fraction" 2) ;;
            *) backend_cache=$cache ;;
        esac
        run "$backend" "$fraction" "$CG" --backend "$backend" \
            --node "127.0.0.1:$PORT" --cache "$backend_cache" "${extra[@]}"
        stop_node
    done

    set_zswap N
    make_cgroup "$limit"
    run swap "$fraction" "$CG" --backend swap

    # With the whole dataset local nothing is swapped, so zswap changes nothing.
    if [ "$(awk -v f="$fraction" 'BEGIN { print (f < 1) }')" = 1 ]; then
        set_zswap Y
        make_cgroup "$limit"
        run zswap "$fraction" "$CG" --backend swap
        set_zswap N
    fi
done

say "runs done; checking checksums and writing the table and plots"
mkdir -p "$PLOTS"
"$PLOT_BIN" --results "$RESULTS" --meta "$OUT/meta.json" --plots "$PLOTS" \
    --table "$OUT/table.md" || die "the results do not agree (see above)"
cat "$OUT/table.md"
if [ "${#FAILURES[@]}" -gt 0 ]; then
    die "runs failed: ${FAILURES[*]}"
fi
say "done: $OUT/table.md, plots in $PLOTS"
