#!/usr/bin/env bash
# benches/compare.sh: our broker against mosquitto and rumqttd, scenario by scenario.
#
# Owns: building our broker and the load generator (release), finding or installing the two
# peers, starting each broker on a loopback port of its own (restarted for every scenario, so
# the peak RSS read from /proc/PID/status VmHWM belongs to that scenario alone), running
# mqtt-bench against each in turn (the order rotates per scenario so that noise from the
# shared machine falls on all of them alike), and printing the table.
# Must not: bind anything but 127.0.0.1, leave a broker running when it exits (trap), or wait
# without a bound (every step has a timeout).
#
# usage: benches/compare.sh [--quick] [--out FILE] [--brokers "ours mosquitto rumqttd"]
#                           [--duration SECS] [--clients N] [SCENARIO...]
#   --quick       short runs (1 s, 100,000 messages for qos1-1m, 500 idle clients): a smoke test
#   --out FILE    also write the table (markdown) to FILE
#   --tls         every client speaks TLS: ours and mosquitto with the same certificate (made
#                 here with openssl, valid two days); default scenarios one2one-q0/q1 and
#                 fanout-q0/q1. Ours takes the listener from `-c FILE` (mosquitto.conf syntax)
#   --brokers     any of ours, mosquitto, rumqttd, and ours-quic: our broker with mqtt-bench
#                 connecting over QUIC (a `protocol quic` listener, a throwaway certificate
#                 made with openssl); not in the default list
#   --persistent  every client connects with a persistent session (clean session 0); with the
#                 brokers ours-persist (PERSISTENCE_DIR, fsync per commit), ours-persist-nosync
#                 (PERSISTENCE_SYNC=false) and mosquitto-persist (persistence true, which
#                 writes its file only at autosave or shutdown: it never syncs before acking)
#   SCENARIO      names or groups as mqtt-bench takes them (default: all)
# environment:
#   BENCH_PORT_BASE   first of four loopback ports used (default: a free base from 20000-29990)
#   OURS_ENV          extra environment for our broker, e.g. "MAX_QUEUED_MESSAGES=100000000"
#                     (default: none, the broker as it ships)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="$ROOT/.bench-cache"
RUMQTTD_VERSION=0.20.0
RUMQTTD="$CACHE/rumqttd/bin/rumqttd"
MOSQUITTO=/usr/sbin/mosquitto
BENCH="$ROOT/target/release/mqtt-bench"
OURS="$ROOT/target/release/mqtt-broker"

QUICK=()
PERSISTENT=()
OUT=""
TLS=""
BROKERS=(ours mosquitto rumqttd)
BROKERS_GIVEN=""
SCENARIOS=()
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=(--quick) ;;
        --tls) TLS=1 ;;
        --persistent) PERSISTENT=(--persistent) ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
        --brokers) read -r -a BROKERS <<<"${2:?--brokers needs a list}"; BROKERS_GIVEN=1; shift ;;
        --duration) EXTRA+=(--duration "${2:?}"); shift ;;
        --clients) EXTRA+=(--clients "${2:?}"); shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
        *) SCENARIOS+=("$1") ;;
    esac
    shift
done

OURS_ENV=${OURS_ENV:-}

# TLS runs compare the two brokers configured here for it, on the scenarios the issue names.
if [ -n "$TLS" ]; then
    [ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(one2one-q0 one2one-q1 fanout-q0 fanout-q1)
    [ -n "$BROKERS_GIVEN" ] || BROKERS=(ours mosquitto)
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mqtt-compare.XXXXXX")
BROKER_PID=""
declare -A UNAVAILABLE=()

log() { printf '%s compare: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stop_broker() {
    local pid=$BROKER_PID
    BROKER_PID=""
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# vm.max_map_count as it was, when this run raised it.
SAVED_MAX_MAP_COUNT=""

cleanup() {
    stop_broker
    if [ -n "$SAVED_MAX_MAP_COUNT" ]; then
        echo "$SAVED_MAX_MAP_COUNT" >/proc/sys/vm/max_map_count 2>/dev/null || true
    fi
    if [ -n "${KEEP_LOGS:-}" ]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Four free loopback ports in a row: BENCH_PORT_BASE, or a base drawn from 20000-29990 so that
# two runs on one machine do not meet on the same ports.
pick_ports() {
    local base
    for _ in $(seq 20); do
        base=${BENCH_PORT_BASE:-$((20000 + (RANDOM % 999) * 10))}
        if ! port_open "$base" && ! port_open $((base + 1)) && ! port_open $((base + 2)) \
            && ! port_open $((base + 3)); then
            echo "$base"
            return 0
        fi
        [ -z "${BENCH_PORT_BASE:-}" ] || break
    done
    return 1
}

# --- build and find the brokers ---------------------------------------------------------------

log "building mqtt-broker and mqtt-bench (release)"
(cd "$ROOT" && timeout 1200 cargo build --release --bin mqtt-broker --bin mqtt-bench) >&2
# Run copies: a build by someone else in the same target directory must not swap the binaries
# halfway through the run.
mkdir -p "$WORK/bin"
cp "$OURS" "$BENCH" "$WORK/bin/"
OURS="$WORK/bin/mqtt-broker"
BENCH="$WORK/bin/mqtt-bench"

if [ ! -x "$MOSQUITTO" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing mosquitto"
    { timeout 300 apt-get update && timeout 300 apt-get install -y mosquitto; } >"$WORK/apt.log" 2>&1 || true
fi
[ -x "$MOSQUITTO" ] || UNAVAILABLE[mosquitto]="not installed ($MOSQUITTO missing)"

# Our broker takes two threads per client and each thread four memory maps: Linux's default
# vm.max_map_count (65530) holds about 7,700 clients, fewer than the connections scenario's
# 10,000 (README, "Many clients"). Raise it for this run when we may, and put it back after.
MAPS=$(cat /proc/sys/vm/max_map_count 2>/dev/null || echo 0)
if [ "$MAPS" -lt 131072 ] && [ -w /proc/sys/vm/max_map_count ]; then
    if echo 262144 >/proc/sys/vm/max_map_count 2>/dev/null; then
        SAVED_MAX_MAP_COUNT=$MAPS
        log "vm.max_map_count raised from $MAPS to 262144 for this run (restored on exit)"
    fi
fi

# Only when it takes part: the install takes minutes.
if [ ! -x "$RUMQTTD" ] && [[ " ${BROKERS[*]} " == *" rumqttd "* ]]; then
    log "installing rumqttd $RUMQTTD_VERSION into $CACHE/rumqttd (several minutes, once)"
    mkdir -p "$CACHE"
    if ! timeout 1800 cargo install rumqttd --version "$RUMQTTD_VERSION" --root "$CACHE/rumqttd" \
        >"$WORK/rumqttd-install.log" 2>&1; then
        tail -5 "$WORK/rumqttd-install.log" >&2 || true
    fi
fi
[ -x "$RUMQTTD" ] || UNAVAILABLE[rumqttd]="could not be installed (cargo install rumqttd $RUMQTTD_VERSION failed)"

# One benchmark at a time on this machine: two would measure each other. Waits at most 20 min.
if command -v flock >/dev/null; then
    mkdir -p "$CACHE"
    exec 9>"$CACHE/compare.lock"
    if ! flock -n 9; then
        log "another compare.sh is running; waiting for it (at most 20 min)"
        flock -w 1200 9 || { echo "compare.sh: gave up waiting for the other run" >&2; exit 1; }
    fi
fi

if ! BASE=$(pick_ports); then
    echo "compare.sh: no four free ports from ${BENCH_PORT_BASE:-a random base}; set BENCH_PORT_BASE" >&2
    exit 1
fi
# ours-quic serves QUIC on UDP port BASE and TCP on BASE (for the readiness check); it never
# runs at the same time as ours.
declare -A PORT=([ours]=$BASE [ours-quic]=$BASE [mosquitto]=$((BASE + 1)) [rumqttd]=$((BASE + 2)))
# The persistence variants run one at a time like the others, on their base broker's port.
PORT[ours-persist]=$BASE
PORT[ours-persist-nosync]=$BASE
PORT[mosquitto-persist]=$((BASE + 1))
RUMQTTD_V5_PORT=$((BASE + 3))

# --- configurations ---------------------------------------------------------------------------

# TLS: one CA and one server certificate for localhost (EC P-256), shared by both brokers.
TLS_CONF=""
if [ -n "$TLS" ]; then
    UNAVAILABLE[rumqttd]="not configured for TLS in this script"
    T="$WORK/tls"
    mkdir -p "$T"
    {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -keyout "$T/ca.key" -out "$T/ca.pem" -subj "/CN=compare.sh CA" \
            -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$T/server.key" -out "$T/server.csr" -subj "/CN=localhost" &&
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$T/ext" &&
        openssl x509 -req -in "$T/server.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" \
            -CAcreateserial -days 2 -extfile "$T/ext" -out "$T/server.pem"
    } >"$WORK/openssl.log" 2>&1 || { echo "compare.sh: openssl could not make certificates" >&2; exit 1; }
    # mosquitto started as root reads its files as the mosquitto user: a throwaway key.
    chmod 755 "$WORK" "$T" && chmod 644 "$T/server.key"
    TLS_CONF="certfile $T/server.pem
keyfile $T/server.key"
    EXTRA+=(--tls-ca "$T/ca.pem")
    printf 'listener %s 127.0.0.1\n%s\n' "${PORT[ours]}" "$TLS_CONF" >"$WORK/ours.conf"
fi

if [[ " ${BROKERS[*]} " == *" ours-quic "* ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$WORK/quic-key.pem" -out "$WORK/quic-cert.pem" -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null ||
        { echo "compare.sh: openssl could not make the QUIC certificate" >&2; exit 1; }
    cat >"$WORK/ours-quic.conf" <<EOF
listener ${PORT[ours]} 127.0.0.1
allow_anonymous true
listener ${PORT[ours]} 127.0.0.1
protocol quic
certfile $WORK/quic-cert.pem
keyfile $WORK/quic-key.pem
allow_anonymous true
EOF
fi

cat >"$WORK/mosquitto.conf" <<EOF
listener ${PORT[mosquitto]} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 0
max_inflight_bytes 0
set_tcp_nodelay true
$TLS_CONF
EOF

# mosquitto with its persistence on: the store is written at autosave (every 1800 s by
# default) and at shutdown, never before a PUBACK.
sed -e 's/^persistence false$/persistence true/' "$WORK/mosquitto.conf" >"$WORK/mosquitto-persist.conf"
echo "persistence_location $WORK/mosquitto-store/" >>"$WORK/mosquitto-persist.conf"

# rumqttd 0.20 (rumqttd.toml): a router, a v4 and a v5 server; no console or metrics listener.
cat >"$WORK/rumqttd.toml" <<EOF
id = 0

[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:${PORT[rumqttd]}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true

[v5.1]
name = "v5-1"
listen = "127.0.0.1:$RUMQTTD_V5_PORT"
next_connection_delay_ms = 0
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
EOF

# Starts one broker in the background and waits (at most 10 s) for its port.
start_broker() {
    local broker=$1 port=${PORT[$1]}
    if port_open "$port"; then
        log "port $port is taken by another process"
        return 1
    fi
    # OURS_ENV is split on purpose: it holds NAME=value words for env.
    # shellcheck disable=SC2086
    case "$broker" in
        ours) if [ -n "$TLS" ]; then
                  env SOCKET_ADDR="127.0.0.1:$RUMQTTD_V5_PORT" RUST_LOG="${OURS_LOG:-info}" $OURS_ENV \
                      "$OURS" -c "$WORK/ours.conf" >>"$WORK/ours.log" 2>&1 &
              else
                  env SOCKET_ADDR="127.0.0.1:$port" RUST_LOG="${OURS_LOG:-info}" $OURS_ENV "$OURS" \
                      >>"$WORK/ours.log" 2>&1 &
              fi ;;
        ours-quic) env RUST_LOG="${OURS_LOG:-info}" $OURS_ENV "$OURS" -c "$WORK/ours-quic.conf" \
                >>"$WORK/ours-quic.log" 2>&1 & ;;
        mosquitto) "$MOSQUITTO" -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 & ;;
        # A fresh store for every scenario.
        ours-persist|ours-persist-nosync)
            rm -rf "$WORK/store"
            local sync=true
            [ "$broker" = ours-persist ] || sync=false
            env SOCKET_ADDR="127.0.0.1:$port" RUST_LOG="${OURS_LOG:-info}" PERSISTENCE_DIR="$WORK/store" \
                PERSISTENCE_SYNC=$sync $OURS_ENV "$OURS" >>"$WORK/ours.log" 2>&1 & ;;
        mosquitto-persist)
            rm -rf "$WORK/mosquitto-store" && mkdir -p "$WORK/mosquitto-store"
            "$MOSQUITTO" -c "$WORK/mosquitto-persist.conf" >>"$WORK/mosquitto.log" 2>&1 & ;;
        rumqttd) "$RUMQTTD" -q -c "$WORK/rumqttd.toml" >>"$WORK/rumqttd.log" 2>&1 & ;;
    esac
    BROKER_PID=$!
    for _ in $(seq 200); do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            BROKER_PID=""
            return 1
        fi
        port_open "$port" && return 0
        sleep 0.05
    done
    stop_broker
    return 1
}

# --- run --------------------------------------------------------------------------------------

if ! NAMES_TEXT=$("$BENCH" --list "${QUICK[@]}" "${SCENARIOS[@]}"); then
    exit 2
fi
mapfile -t NAMES <<<"$NAMES_TEXT"

declare -A R=()
RESULTS="$WORK/results"
: >"$RESULTS"
started=$(date +%s)

# Hard limit of one generator run, on top of its own limits.
limit_for() {
    case "$1" in
        qos1-1m) echo 400 ;;
        connections) echo 300 ;;
        churn) echo 200 ;;
        *) echo 150 ;;
    esac
}

index=0
for scenario in "${NAMES[@]}"; do
    order=()
    for ((k = 0; k < ${#BROKERS[@]}; k++)); do
        order+=("${BROKERS[$(((k + index) % ${#BROKERS[@]}))]}")
    done
    index=$((index + 1))
    for broker in "${order[@]}"; do
        [ -z "${UNAVAILABLE[$broker]:-}" ] || continue
        if ! start_broker "$broker"; then
            log "$broker did not start for $scenario"
            R["$broker|$scenario|problems"]="did not start"
            continue
        fi
        log "$scenario on $broker (pid $BROKER_PID)"
        transport=()
        [ "$broker" = ours-quic ] && transport=(--quic)
        line=$(timeout --kill-after=5 "$(limit_for "$scenario")" "$BENCH" --addr "127.0.0.1:${PORT[$broker]}" \
            "${transport[@]}" --pid "$BROKER_PID" --label "$broker" --kv "${QUICK[@]}" "${PERSISTENT[@]}" "${EXTRA[@]}" "$scenario" \
            2>>"$WORK/bench.err" | grep '^RESULT' | tail -1) || true
        hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$BROKER_PID/status" 2>/dev/null || true)
        stop_broker
        if [ -z "$line" ]; then
            R["$broker|$scenario|problems"]="no result (generator failed or timed out)"
            continue
        fi
        echo "$line hwm_script_kb=${hwm:-0}" >>"$RESULTS"
        for pair in $line hwm_script_kb=${hwm:-0}; do
            case "$pair" in
                *=*) R["$broker|$scenario|${pair%%=*}"]=${pair#*=} ;;
            esac
        done
    done
done
elapsed=$(($(date +%s) - started))

# --- table ------------------------------------------------------------------------------------

get() { echo "${R["$1|$2|$3"]:-}"; }
get_or_dash() { echo "${R["$1|$2|$3"]:--}"; }
num() { [ -n "$1" ] && printf "%.${2:-0}f" "$1" || echo "-"; }
mib() { [ -n "$1" ] && [ "$1" != 0 ] && awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }' || echo "-"; }
ratio() { # a / b as "1.23x", or "-"
    if [ -n "$1" ] && [ -n "$2" ] && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'
    else
        echo "-"
    fi
}

# The figures of one broker in one scenario: throughput, p99 (or bytes per connection), peak RSS.
cells() {
    local broker=$1 scenario=$2
    if [ -n "${UNAVAILABLE[$broker]:-}" ]; then
        echo "n/a | n/a | n/a"
        return
    fi
    local ok rate hwm mark=""
    ok=$(get "$broker" "$scenario" ok)
    hwm=$(get "$broker" "$scenario" hwm_script_kb)
    if [ -z "$ok" ]; then
        echo "failed | - | -"
        return
    fi
    [ "$ok" = 1 ] || mark=" (!)"
    case "$scenario" in
        connections)
            rate=$(get "$broker" "$scenario" connect_rate)
            local per
            per=$(get "$broker" "$scenario" bytes_per_client)
            echo "$(num "$rate") conn/s$mark | $( [ -n "$per" ] && awk -v b="$per" 'BEGIN { printf "%.1f KiB/conn", b / 1024 }' || echo -) | $(mib "$hwm")"
            ;;
        churn)
            rate=$(get "$broker" "$scenario" churn_rate)
            echo "$(num "$rate") reconn/s$mark | - | $(mib "$hwm")"
            ;;
        qos1-1m)
            rate=$(get "$broker" "$scenario" rate)
            echo "$(num "$rate") ($(num "$(get "$broker" "$scenario" elapsed_s)" 1) s)$mark | $(num "$(get "$broker" "$scenario" p99_ms)" 2) | $(mib "$hwm")"
            ;;
        *)
            rate=$(get "$broker" "$scenario" rate)
            echo "$(num "$rate")$mark | $(num "$(get "$broker" "$scenario" p99_ms)" 2) | $(mib "$hwm")"
            ;;
    esac
}

# Ours against a peer; above 1 means ours is better (throughput, connect rate, or for the
# latency scenarios the peer's p99 over ours).
vs() {
    local peer=$1 scenario=$2
    [ -z "${UNAVAILABLE[$peer]:-}" ] || { echo "n/a"; return; }
    case "$scenario" in
        latency-*) ratio "$(get "$peer" "$scenario" p99_ms)" "$(get ours "$scenario" p99_ms)" ;;
        connections) ratio "$(get ours "$scenario" connect_rate)" "$(get "$peer" "$scenario" connect_rate)" ;;
        churn) ratio "$(get ours "$scenario" churn_rate)" "$(get "$peer" "$scenario" churn_rate)" ;;
        *) ratio "$(get ours "$scenario" rate)" "$(get "$peer" "$scenario" rate)" ;;
    esac
}

table() {
    local header="| scenario |" rule="|---|" broker peer
    for broker in "${BROKERS[@]}"; do
        header+=" $broker msg/s | $broker p99 ms | $broker peak RSS |"
        rule+="---:|---:|---:|"
    done
    for peer in "${BROKERS[@]}"; do
        [ "$peer" = ours ] && continue
        header+=" ours ÷ $peer |"
        rule+="---:|"
    done
    echo "$header"
    echo "$rule"
    for scenario in "${NAMES[@]}"; do
        local row="| $scenario |"
        for broker in "${BROKERS[@]}"; do
            row+=" $(cells "$broker" "$scenario") |"
        done
        for peer in "${BROKERS[@]}"; do
            [ "$peer" = ours ] && continue
            row+=" $(vs "$peer" "$scenario") |"
        done
        echo "$row"
    done
    echo
    if [ -n "$TLS" ]; then
        echo "Every client over TLS (mqtt-bench's rustls client), both brokers with the same EC P-256 certificate."
    fi
    echo "msg/s: messages delivered per second, from the first publish to the last delivery."
    echo "p99: 99th percentile latency, from the send timestamp in the payload to its arrival."
    echo "peak RSS: the broker's VmHWM at the end of the scenario (each scenario starts a fresh broker)."
    echo "ours ÷ peer: above 1 means ours is better (throughput; connect rate; for latency-*, the peer's p99 over ours)."
    echo "qos1-1m: delivered msg/s and the time until every message was acknowledged and delivered."
    echo "connections: connect rate, the broker's RSS growth per idle connection, peak RSS."
    echo "churn: 1,000 clients disconnecting and connecting again in a loop: reconnects per second."
    local note=""
    for broker in "${BROKERS[@]}"; do
        if [ -n "${UNAVAILABLE[$broker]:-}" ]; then
            note+="- $broker: ${UNAVAILABLE[$broker]}"$'\n'
            continue
        fi
        for scenario in "${NAMES[@]}"; do
            if [ "$(get "$broker" "$scenario" ok)" != 1 ]; then
                local problems
                problems=$(get "$broker" "$scenario" problems)
                note+="- (!) $broker $scenario: ${problems//_/ }"$'\n'
            fi
        done
    done
    if [ -n "$note" ]; then
        echo
        echo "Checks that failed, and brokers not run:"
        echo
        printf '%s' "$note"
    fi
    local dropped=""
    for scenario in "${NAMES[@]}"; do
        case "$scenario" in *-q0) ;; *) continue ;; esac
        for broker in "${BROKERS[@]}"; do
            local lost expected
            lost=$(get "$broker" "$scenario" lost)
            expected=$(get "$broker" "$scenario" expected)
            if [ -n "$lost" ] && [ "$lost" != 0 ] && [ -n "$expected" ] && [ "$expected" != 0 ]; then
                dropped+="- $broker $scenario: $(awk -v l="$lost" -v e="$expected" 'BEGIN { printf "%.1f%%", 100 * l / e }')"
                dropped+=" of $expected copies ($lost)"$'\n'
            fi
        done
    done
    if [ -n "$dropped" ]; then
        echo
        echo "QoS 0 copies the broker dropped (allowed at QoS 0; not a failed check):"
        echo
        printf '%s' "$dropped"
    fi
    local latency_rows=""
    for scenario in "${NAMES[@]}"; do
        case "$scenario" in latency-*|qos1-1m) ;; *) continue ;; esac
        for broker in "${BROKERS[@]}"; do
            [ -n "$(get "$broker" "$scenario" ok)" ] || continue
            latency_rows+="| $scenario | $broker | $(get "$broker" "$scenario" p50_ms) | $(get "$broker" "$scenario" p99_ms)"
            latency_rows+=" | $(get "$broker" "$scenario" p999_ms) | $(get "$broker" "$scenario" max_ms) |"$'\n'
        done
    done
    if [ -n "$latency_rows" ]; then
        echo
        echo "Latency detail (ms):"
        echo
        echo "| scenario | broker | p50 | p99 | p99.9 | max |"
        echo "|---|---|---:|---:|---:|---:|"
        printf '%s' "$latency_rows"
    fi
    if [ "$(printf '%s\n' "${NAMES[@]}" | grep -c '^connections$')" = 1 ]; then
        echo
        echo "connections detail (RSS and threads before, while holding, after closing):"
        echo
        for broker in "${BROKERS[@]}"; do
            [ -z "${UNAVAILABLE[$broker]:-}" ] || continue
            local s=connections
            echo "- $broker: $(get_or_dash "$broker" $s connected)/$(get_or_dash "$broker" $s clients) connected;" \
                "RSS $(mib "$(get "$broker" $s rss_before_kb)") -> $(mib "$(get "$broker" $s rss_holding_kb)")" \
                "-> $(mib "$(get "$broker" $s rss_closed_kb)"); threads $(get_or_dash "$broker" $s threads_before)" \
                "-> $(get_or_dash "$broker" $s threads_holding) -> $(get_or_dash "$broker" $s threads_closed)"
        done
    fi
}

{
    echo "Machine: $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)," \
        "$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
    echo "Command: benches/compare.sh ${QUICK[*]} ${EXTRA[*]} ${SCENARIOS[*]}"
    if [ -n "$SAVED_MAX_MAP_COUNT" ]; then
        echo "vm.max_map_count raised from $SAVED_MAX_MAP_COUNT to 262144 for the run"
    fi
    echo "Brokers: ours (${OURS_ENV:-default configuration}), $({ "$MOSQUITTO" -h 2>&1 || true; } | awk 'NR == 1')," \
        "rumqttd $RUMQTTD_VERSION; run took ${elapsed} s"
    echo
    table
} | tee "${OUT:-/dev/null}"
