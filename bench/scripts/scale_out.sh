#!/usr/bin/env bash
# Scale-out on one machine: msgqueue, publisher and INSTANCES subscriber processes (separate processes, as an
# operator runs them), PER_INSTANCE subscriber connections on each (one wsmq-bench worker process per instance:
# 20,000 open files per process here), all on one topic; MESSAGES messages published once every connection has
# subscribed must reach every connection. Prints wsmq-bench's JSON report (deliveries/s, latency, lost, RSS of
# every service process when idle and with all connections open).
#
# Usage: bench/scripts/scale_out.sh            (5 instances x 19,000 connections, 10 messages, release build)
#        INSTANCES=2 PER_INSTANCE=100 PROFILE=debug bench/scripts/scale_out.sh
# Ports 28080-28081, 28082.. and 29080.. on 127.0.0.1 must be free. Everything is bounded by --duration-limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
instances=${INSTANCES:-5}
per_instance=${PER_INSTANCE:-19000}
messages=${MESSAGES:-10}
case ${PROFILE:-release} in
    debug | dev) profile=dev dir=target/debug ;;
    *) profile=${PROFILE:-release} dir=target/${PROFILE:-release} ;;
esac
data=$(mktemp -d /tmp/wsmq-scaleout.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -INT "$pid" 2> /dev/null || true; done
    wait 2> /dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT

cargo build --quiet --profile "$profile" --bin msgqueue --bin publisher --bin subscriber --bin wsmq-bench
export WSMQ_USERS=hello:test WSMQ_DATA_DIR="$data"
link=(--queue-url wss://127.0.0.1:28080 --queue-user hello --queue-password test)

# start NAME ADMIN_PORT COMMAND...: runs a service in the background and waits for its /readyz.
rss=()
start() {
    local name=$1 admin=$2; shift 2
    "$@" --admin-listen "127.0.0.1:$admin" > "$data/$name.log" 2>&1 &
    pids+=($!)
    rss+=(--rss "$name=$!")
    for _ in $(seq 300); do
        curl -fs "http://127.0.0.1:$admin/readyz" > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$name did not become ready; its log:" >&2
    cat "$data/$name.log" >&2
    exit 1
}

start msgqueue 29080 "$dir/msgqueue" --listen 127.0.0.1:28080
start publisher 29081 "$dir/publisher" --listen 127.0.0.1:28081 "${link[@]}"
urls=()
for i in $(seq 1 "$instances"); do
    port=$((28081 + i))
    start "subscriber-$i" $((29081 + i)) "$dir/subscriber" --listen "127.0.0.1:$port" "${link[@]}" \
        --max-connections $((per_instance + 500))
    urls+=("wss://127.0.0.1:$port")
done

"$dir/wsmq-bench" scaleout --instances "$(IFS=,; echo "${urls[*]}")" --per-instance "$per_instance" \
    --messages "$messages" --publisher-url wss://127.0.0.1:28081 --data-dir "$data" "${rss[@]}" \
    --duration-limit 600s --json
