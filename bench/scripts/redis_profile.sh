#!/usr/bin/env bash
# Where the time goes on the Redis backend: msgqueue alone on a fresh redis-server, one queue run, then the CPU
# seconds each process used (from /proc/<pid>/stat) and Redis's own per-command accounting (INFO commandstats).
#
# Usage: bench/scripts/redis_profile.sh BIN_DIR [always|everysec|none] [MESSAGES]
# e.g.   bench/scripts/redis_profile.sh target/release always 600000
# Ports 16400, 18090 and 19090 on 127.0.0.1 must be free; needs redis-server and redis-cli (Debian redis-server).
set -euo pipefail
bin=$1 fsync=${2:-always} messages=${3:-600000}
data=$(mktemp -d /tmp/wsmq-redis-profile.XXXXXX)
trap 'kill "${queue_pid:-}" "${redis_pid:-}" 2> /dev/null || true; rm -rf "$data"' EXIT
export WSMQ_PASSWORD=test
mkdir -p "$data/redis"
if [ "$fsync" = none ]; then persistence=(--appendonly no); else persistence=(--appendonly yes --appendfsync "$fsync"); fi
redis-server --bind 127.0.0.1 --port 16400 --dir "$data/redis" "${persistence[@]}" --save "" > "$data/redis.log" 2>&1 &
redis_pid=$!
WSMQ_STORAGE=redis WSMQ_REDIS_URL=redis://127.0.0.1:16400 "$bin/wsmq" --services msgqueue \
    --msgqueue-listen 127.0.0.1:18090 --admin-port 19090 --data-dir "$data" > "$data/wsmq.log" 2>&1 &
queue_pid=$!
source "$(dirname "$0")/stack.sh"
await_ready 19090 "$data/wsmq.log"
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
redis0=$(cpu "$redis_pid") queue0=$(cpu "$queue_pid") start=$(date +%s%N)
"$bin/wsmq-bench" queue --queue-url wss://localhost:18090 --data-dir "$data" --json -n "$messages" \
    --window 1024 > "$data/bench.json"
end=$(date +%s%N) redis1=$(cpu "$redis_pid") queue1=$(cpu "$queue_pid")
python3 - "$data/bench.json" "$start" "$end" "$redis0" "$redis1" "$queue0" "$queue1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
start, end, r0, r1, q0, q1, tck = map(float, sys.argv[2:])
n = d["acked"]
print(f"acked pushes/s {d['acked_pushes_per_s']:.0f}  delivered/s {d['delivered_per_s']:.0f}  lost {d['lost']}")
print(f"wall {(end - start) / 1e9:.2f} s  redis CPU {(r1 - r0) / tck:.2f} s ({(r1 - r0) / tck / n * 1e6:.1f} us/msg)"
      f"  msgqueue CPU {(q1 - q0) / tck:.2f} s ({(q1 - q0) / tck / n * 1e6:.1f} us/msg)")
PY
redis-cli -p 16400 info commandstats | grep -E "xadd|xreadgroup|xack|evalsha|xclaim|xpending" | sed 's/,rejected.*//'
