#!/usr/bin/env bash
# The disk and the Redis backend side by side in one run: for each round, each backend in turn runs the
# msgqueue-alone queue scenario (reliable pushes, acked once durable) and e2e 1 -> 1, every service freshly started.
# Redis runs as production should: one redis-server on this machine, appendonly yes, appendfsync always.
# Prints one line per run: "<scenario> <backend> <json>".
#
# Usage: bench/scripts/redis.sh BIN_DIR [ROUNDS] [MESSAGES]   (BIN_DIR holds wsmq and wsmq-bench)
# e.g.   bench/scripts/redis.sh target/release 2 1000000
# Ports 18080-18082, 19080 and 16379 on 127.0.0.1 must be free; needs redis-server (Debian package redis-server).
set -euo pipefail
bin=$1 rounds=${2:-2} messages=${3:-1000000}
data=$(mktemp -d /tmp/wsmq-redis-bench.XXXXXX)
trap 'kill "${stack_pid:-}" "${redis_pid:-}" 2> /dev/null || true; rm -rf "$data"' EXIT
export WSMQ_PASSWORD=test
source "$(dirname "$0")/stack.sh"
redis_pid=

start_redis() {
    kill "${redis_pid:-}" 2> /dev/null && wait "$redis_pid" 2> /dev/null || true
    rm -rf "$data/redis" && mkdir -p "$data/redis"
    redis-server --bind 127.0.0.1 --port 16379 --dir "$data/redis" --appendonly yes --appendfsync always \
        --save "" --daemonize no > "$data/redis.log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 100); do
        grep -q "Ready to accept connections" "$data/redis.log" && return 0
        sleep 0.1
    done
    echo "redis-server did not start; see $data/redis.log" >&2
    exit 1
}
start() { # backend, extra wsmq flags
    local backend=$1; shift
    rm -rf "$data/queue"
    if [ "$backend" = redis ]; then
        start_redis
        export WSMQ_STORAGE=redis WSMQ_REDIS_URL=redis://127.0.0.1:16379
    else
        export WSMQ_STORAGE=disk
        unset WSMQ_REDIS_URL
    fi
    stack_start "$bin/wsmq" "$data" "$@" || exit 1
}
stop() { stack_stop; }
urls=(--publisher-url wss://localhost:18081 --subscriber-url wss://localhost:18082 --data-dir "$data" --json)

for round in $(seq "$rounds"); do
    for backend in disk redis; do
        start "$backend" --services msgqueue
        echo "queue $backend $("$bin/wsmq-bench" queue --queue-url wss://localhost:18080 \
            --data-dir "$data" --json -n "$messages" --window 1024)"
        stop
        start "$backend"
        echo "e2e-1to1 $backend $("$bin/wsmq-bench" e2e "${urls[@]}" -n "$messages")"
        stop
    done
done
