#!/usr/bin/env bash
# What topic history costs and what it gives, with one build: e2e throughput with history on (the default,
# --history-size 100) and off (--history-size 0), interleaved, each run on a freshly started stack; then the
# reconnect storm: CLIENTS clients drop, MISSED messages per topic are published, all resume at once.
# Prints one line per run: "<label> <json>".
#
# Usage: bench/scripts/history.sh BIN_DIR [ROUNDS] [CLIENTS]   (BIN_DIR holds wsmq and wsmq-bench)
# e.g.   bench/scripts/history.sh target/release 2 10000
# Ports 18080-18082 and 19080 on 127.0.0.1 must be free.
set -euo pipefail
dir=$1 rounds=${2:-2} clients=${3:-10000}
data=$(mktemp -d /tmp/wsmq-history.XXXXXX)
trap 'kill "${stack_pid:-}" 2> /dev/null || true; rm -rf "$data"' EXIT
source "$(dirname "$0")/stack.sh"

start() { # history size
    rm -rf "$data/queue"
    WSMQ_HISTORY_SIZE=$1 stack_start "$dir/wsmq" "$data" || exit 1
}
urls=(--publisher-url wss://localhost:18081 --subscriber-url wss://localhost:18082 --data-dir "$data" --json)

for round in $(seq "$rounds"); do
    for size in 100 0; do
        label=$([ "$size" = 0 ] && echo off || echo on)
        start "$size"
        echo "e2e-1to1-history-$label $("$dir/wsmq-bench" e2e "${urls[@]}" -n 1000000)"
        stack_stop
        start "$size"
        echo "e2e-4p16s4t-history-$label $("$dir/wsmq-bench" e2e "${urls[@]}" -n 1000000 -p 4 -s 16 -t 4)"
        stack_stop
    done
done
start 100
echo "resume-$clients $("$dir/wsmq-bench" "${urls[@]}" resume -c "$clients" -t 100 -m 100)"
stack_stop
