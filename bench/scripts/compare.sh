#!/usr/bin/env bash
# Before/after throughput of two builds in one run, as the issues ask: for each round, each build in turn runs
# e2e 1 -> 1, e2e 4/16/4 and the msgqueue-alone queue scenario (--fsync always), every service freshly started.
# Prints one line per run: "<label> <build> <json>". Medians are for the reader (or jq) to take.
#
# Usage: bench/scripts/compare.sh BEFORE_BIN_DIR AFTER_BIN_DIR [ROUNDS]   (dirs holding wsmq and wsmq-bench)
# e.g.   bench/scripts/compare.sh /tmp/before-bin target/release 3
# Ports 18080-18082 and 19080 on 127.0.0.1 must be free.
set -euo pipefail
before=$1 after=$2 rounds=${3:-2}
data=$(mktemp -d /tmp/wsmq-compare.XXXXXX)
trap 'kill "${stack_pid:-}" 2> /dev/null || true; rm -rf "$data"' EXIT
export WSMQ_PASSWORD=test
source "$(dirname "$0")/stack.sh"

start() { # bin_dir, extra flags
    local dir=$1; shift
    rm -rf "$data/queue"
    stack_start "$dir/wsmq" "$data" "$@" || exit 1
}
stop() { stack_stop; }
urls=(--publisher-url wss://localhost:18081 --subscriber-url wss://localhost:18082 --data-dir "$data" --json)

for round in $(seq "$rounds"); do
    for build in before after; do
        dir=${!build}
        start "$dir"
        echo "e2e-1to1 $build $("$dir/wsmq-bench" e2e "${urls[@]}" -n 1000000)"
        stop
        start "$dir"
        echo "e2e-4p16s4t $build $("$dir/wsmq-bench" e2e "${urls[@]}" -n 1000000 -p 4 -s 16 -t 4)"
        stop
        start "$dir" --services msgqueue
        echo "queue-fsync-always $build $("$dir/wsmq-bench" queue --queue-url wss://localhost:18080 \
            --data-dir "$data" --json -n 1000000 --window 1024)"
        stop
    done
done
