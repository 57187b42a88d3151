# Sourced by the bench scripts: the all-in-one wsmq on the benchmark ports (msgqueue 18080, publisher 18081,
# subscriber 18082, admin 19080-19082 on 127.0.0.1), started and stopped the same way everywhere.
#
#   stack_start WSMQ_BINARY DATA_DIR [wsmq flags...]   # background; returns once /readyz answers (sets stack_pid)
#   stack_stop                                        # SIGINT (drains), then waits
#   await_ready ADMIN_PORT LOG                        # polls /readyz for up to 20 s; names LOG if it never answers

stack_pid=

await_ready() {
    for _ in $(seq 200); do
        curl -fs "http://127.0.0.1:$1/readyz" > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "nothing ready on admin port $1; see $2" >&2
    return 1
}

stack_start() {
    local wsmq=$1 data=$2
    shift 2
    "$wsmq" --msgqueue-listen 127.0.0.1:18080 --publisher-listen 127.0.0.1:18081 \
        --subscriber-listen 127.0.0.1:18082 --admin-port 19080 --data-dir "$data" "$@" > "$data/wsmq.log" 2>&1 &
    stack_pid=$!
    await_ready 19080 "$data/wsmq.log"
}

stack_stop() {
    kill -INT "$stack_pid" && wait "$stack_pid" || true
}
