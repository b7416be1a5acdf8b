#!/usr/bin/env bash
# benches/bridge.sh: bridge throughput, QoS 1, one direction: ours-to-ours beside
# mosquitto-to-mosquitto, with the same two mosquitto.conf files for both.
#
# Owns: starting two brokers of a kind on loopback ports (the local one with a `connection`
# block pointed at the remote one), timing N QoS 1 messages published on the local broker
# (mosquitto_pub -l) until mosquitto_sub on the remote has received them all, and printing
# messages per second. Must not: bind anything but 127.0.0.1, leave a broker running (trap),
# or wait without a bound (every wait has a timeout).
#
# usage: benches/bridge.sh [MESSAGES [ROUNDS]]     (default 50000 messages, 3 rounds)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${1:-50000}
ROUNDS=${2:-3}
OURS="$ROOT/target/release/mqtt-broker"
MOSQUITTO=/usr/sbin/mosquitto
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mqtt-bridge-bench.XXXXXX")
chmod 777 "$WORK"
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 100); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bridge.sh: nothing listens on $1" >&2
    exit 1
}

# run KIND: prints the messages per second of one round.
run() {
    local kind=$1 remote_port local_port program
    remote_port=$(free_port)
    local_port=$(free_port)
    program=$OURS
    [ "$kind" = mosquitto ] && program=$MOSQUITTO
    cat >"$WORK/remote.conf" <<EOF
listener $remote_port 127.0.0.1
allow_anonymous true
max_queued_messages 1000000
EOF
    cat >"$WORK/local.conf" <<EOF
listener $local_port 127.0.0.1
allow_anonymous true
max_queued_messages 1000000
connection bench
address 127.0.0.1:$remote_port
remote_clientid bench-bridge
topic bench/# out 1
EOF
    "$program" -c "$WORK/remote.conf" >/dev/null 2>&1 &
    PIDS+=($!)
    local remote_pid=$!
    "$program" -c "$WORK/local.conf" >/dev/null 2>&1 &
    PIDS+=($!)
    local local_pid=$!
    wait_port "$remote_port"
    wait_port "$local_port"
    # The bridge is up once its retained state says 1.
    timeout 10 mosquitto_sub -p "$local_port" -t '$SYS/broker/connection/bench-bridge/state' \
        -C 1 -W 10 | grep -q 1
    timeout 120 mosquitto_sub -p "$remote_port" -t 'bench/#' -q 1 -C "$N" >/dev/null &
    local sub=$!
    sleep 0.5
    local start end
    start=$(date +%s.%N)
    seq "$N" | timeout 120 mosquitto_pub -p "$local_port" -t bench/x -q 1 -l
    wait "$sub"
    end=$(date +%s.%N)
    kill "$local_pid" "$remote_pid" 2>/dev/null || true
    wait "$local_pid" "$remote_pid" 2>/dev/null || true
    python3 -c "print(f'{$N / ($end - $start):.0f}')"
}

cargo build --release --bin mqtt-broker --manifest-path "$ROOT/Cargo.toml" >/dev/null 2>&1
echo "| round | ours → ours (msg/s) | mosquitto → mosquitto (msg/s) |"
echo "|---|---|---|"
for round in $(seq "$ROUNDS"); do
    # Alternate the order so that noise falls on both alike.
    if [ $((round % 2)) = 1 ]; then
        a=$(run ours); b=$(run mosquitto)
    else
        b=$(run mosquitto); a=$(run ours)
    fi
    echo "| $round | $a | $b |"
done
