#!/usr/bin/env bash
# Measures what subscribers that never read cost healthy ones (issue 15): e2e with 4 healthy subscribers at a fixed
# rate and at max rate, with 0, 1 (same topic / own topic) and 14 (one joining per second) never-reading
# subscribers, and one that reads one message per ms. Prints one JSON line per run, prefixed by its label;
# docs/PERFORMANCE.md ("Slow clients") quotes them.
# Usage: bench/scripts/slow_clients.sh [WSMQ_BINARY] [OUT_FILE]
#   WSMQ_BINARY defaults to target/release/wsmq (build it and wsmq-bench with
#   `cargo build --release --bin wsmq --bin wsmq-bench` first); pass an older build to compare.
# Each run gets a freshly started wsmq with an empty temp --data-dir. Ports 18080-18082 and 19080-19082 on
# 127.0.0.1 must be free.
set -euo pipefail
cd "$(dirname "$0")/../.."
wsmq=${1:-target/release/wsmq}
out=${2:-target/bench-slow-clients.jsonl}
bench=target/release/wsmq-bench
export WSMQ_PASSWORD=test
source bench/scripts/stack.sh

run() { # label, then wsmq-bench e2e flags
    local label=$1; shift
    local data
    data=$(mktemp -d /tmp/wsmq-slow.XXXXXX)
    if ! stack_start "$wsmq" "$data"; then
        kill -INT "$stack_pid" 2> /dev/null || true
        return 1
    fi
    echo "== $label: wsmq-bench e2e $*" >&2
    printf '%s\t%s\n' "$label" "$("$bench" e2e --publisher-url wss://localhost:18081 \
        --subscriber-url wss://localhost:18082 --data-dir "$data" --drain-timeout 60s "$@" --json)" | tee -a "$out"
    stack_stop
    rm -rf "$data"
}

rate=(-p 1 -s 4 -n 300000 --rate 20000)
run rate20k-slow0          "${rate[@]}"
run rate20k-slow1          "${rate[@]}" --slow-subscribers 1
run rate20k-slow1-other    "${rate[@]}" --slow-subscribers 1 --slow-topic other
run rate20k-slow14-join1s  "${rate[@]}" --slow-subscribers 14 --slow-join-every 1s
# A subscriber that reads, but one message per ms: 5% of its topic's rate.
run rate20k-slowread1      "${rate[@]}" --slow-subscribers 1 --slow-read-every 1ms
max=(-p 1 -s 4 -n 1000000)
run max-slow0              "${max[@]}"
run max-slow1              "${max[@]}" --slow-subscribers 1
# Still lossless where the whole path is the bottleneck (README's benchmark table).
run max-1to1               -n 1000000
run max-4p16s4t            -n 1000000 -p 4 -s 16 -t 4
