#!/usr/bin/env bash
# Runs every wsmq-bench scenario of issue 5 against `cargo run --release --bin wsmq` on loopback and prints one
# JSON line per run (prefixed by its label), which is what README.md's benchmark table and docs/PERFORMANCE.md
# quote. Usage: bench/scripts/suite.sh [OUT_FILE]   (default: target/bench-suite.jsonl)
#
# The services and the load generator share this machine's cores, as in the targets. Ports 18080-18082 and
# 19080-19082 on 127.0.0.1 must be free. Each run is bounded by wsmq-bench's own --duration-limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/bench-suite.jsonl}
data=$(mktemp -d /tmp/wsmq-bench.XXXXXX)
export WSMQ_PASSWORD=test
: > "$out"

cargo build --release --bin wsmq --bin wsmq-bench
bench=target/release/wsmq-bench
urls=(--publisher-url wss://localhost:18081 --subscriber-url wss://localhost:18082 --data-dir "$data")

source bench/scripts/stack.sh
start_wsmq() { # extra flags for wsmq
    stack_start target/release/wsmq "$data" "$@" || exit 1
}
stop_wsmq() {
    stack_stop
    rm -rf "$data/queue"
}
run() { # label, scenario and flags
    local label=$1; shift
    echo "== $label: wsmq-bench $*" >&2
    printf '%s\t%s\n' "$label" "$("$bench" "$@" --json)" | tee -a "$out"
}

start_wsmq
run e2e-1to1-max     e2e "${urls[@]}" -n 1000000
run e2e-4p16s4t      e2e "${urls[@]}" -n 1000000 -p 4 -s 16 -t 4
run e2e-rate-2k      e2e "${urls[@]}" -n 20000 --rate 2000
run e2e-rate-40k     e2e "${urls[@]}" -n 400000 --rate 40000
run fanout-10k       fanout "${urls[@]}" -s 10000 -n 100
run fanout-10k-paced fanout "${urls[@]}" -s 10000 -n 100 --rate 200
run http-16x200      http "${urls[@]}" -c 16 --batch 200 -n 1000000
run http-256x1       http "${urls[@]}" -c 256 --batch 1 -n 200000
stop_wsmq

# A fresh process: memory freed by earlier runs stays resident and would hide the connections' cost.
start_wsmq
run conns-10k        conns "${urls[@]}" -c 10000 --server-pid "$stack_pid"
stop_wsmq

for fsync in always never; do
    WSMQ_FSYNC=$fsync start_wsmq --services msgqueue
    run "queue-fsync-$fsync" queue --queue-url wss://localhost:18080 --data-dir "$data" -n 1000000 --window 1024
    stop_wsmq
done
rm -rf "$data"
