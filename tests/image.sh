#!/usr/bin/env bash
# tests/image.sh: end-to-end test of the real container image. It builds the image with
# ./build.sh, runs it with the MQTT port published on 127.0.0.1, passes QoS 1 and retained
# messages through it with mosquitto_pub/mosquitto_sub, then stops it with SIGTERM and checks
# exit status 0 within two seconds. It owns only this test: it must not install anything (that
# is ./build.sh test's job), must not touch images or containers it did not create, and must
# FAIL, never pass, when no container engine can run. Every wait is bounded; a trap removes its
# container and image tag even on failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR/..
source ./build.sh # for pick_engine, ENGINE and local_platform; main does not run when sourced

STOP_LIMIT_MS=2000
id="$$-$RANDOM"
TAG="mqtt-broker-image-test:$id"
NAME="mqtt-broker-image-test-$id"
WORK=$(mktemp -d)
container_started=0

log() { printf '[image.sh] %s\n' "$*" >&2; }
fail() {
  printf '\n[image.sh] FAILED: %s\n\n' "$*" >&2
  exit 1
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done # our mosquitto_sub, if any
  if [[ ${#ENGINE[@]} -gt 0 ]]; then
    if [[ $container_started -eq 1 ]] && timeout 20 "${ENGINE[@]}" container inspect "$NAME" >/dev/null 2>&1; then
      if [[ $rc -ne 0 ]]; then
        log "container logs:"
        timeout 20 "${ENGINE[@]}" logs --tail 40 "$NAME" 2>&1 | sed 's/^/    /' >&2 || true
      fi
      timeout 30 "${ENGINE[@]}" rm -f "$NAME" >/dev/null 2>&1 || log "warning: could not remove container $NAME"
    fi
    if timeout 20 "${ENGINE[@]}" image inspect "$TAG" >/dev/null 2>&1; then
      timeout 30 "${ENGINE[@]}" rmi -f "$TAG" >/dev/null 2>&1 || log "warning: could not remove image $TAG"
    fi
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ms() { date +%s%3N; }

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    return
  fi
  local p i
  for i in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    if ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  fail "found no free TCP port on 127.0.0.1 after $i tries"
}

# --- preconditions: a container engine and the MQTT clients ----------------------------------

for c in mosquitto_pub mosquitto_sub timeout; do
  command -v "$c" >/dev/null 2>&1 ||
    fail "$c is not installed (apt-get install -y mosquitto-clients; ./build.sh test installs it)"
done

# pick_engine dies (exit 1) with its own message when none can be used; make that loud here.
if ! (pick_engine >/dev/null); then
  fail "NO CONTAINER ENGINE CAN RUN HERE: the image was NOT tested. Install podman and runc (apt-get install -y podman runc), or start a Docker engine; ./build.sh test installs podman."
fi
pick_engine
log "engine: ${ENGINE[*]}"

# --- build ------------------------------------------------------------------------------------

PLATFORM=$(local_platform)
log "building $TAG for $PLATFORM"
timeout 900 bash ./build.sh image --tag "$TAG" --platforms "$PLATFORM" --engine "${ENGINE[0]}" ||
  fail "./build.sh image failed (see above)"

size=$(timeout 20 "${ENGINE[@]}" image inspect --format '{{.Size}}' "$TAG") || fail "cannot inspect $TAG"
user=$(timeout 20 "${ENGINE[@]}" image inspect --format '{{.Config.User}}' "$TAG")
log "image size: $size bytes ($((size / 1024)) KiB); user: $user"
[[ "$size" -lt $((20 * 1024 * 1024)) ]] || fail "image is $size bytes: expected a few MB (is the binary stripped?)"
[[ -n "$user" && "${user%%:*}" != 0 && "${user%%:*}" != root ]] || fail "image user is '$user': expected a non-root numeric user"

# --- run --------------------------------------------------------------------------------------

PORT=$(free_port)
# Sandboxes like this one refuse the engines' default rlimits; these work everywhere.
run_flags=${CONTAINER_RUN_FLAGS-"--ulimit nofile=20000:20000 --ulimit nproc=1000:1000"}
# shellcheck disable=SC2206 # word splitting of the flags is intended
RUN_FLAGS=($run_flags)
log "${ENGINE[*]} run -d --name $NAME ${RUN_FLAGS[*]} -e RUST_LOG=info -p 127.0.0.1:$PORT:1883 $TAG"
container_started=1
timeout 60 "${ENGINE[@]}" run -d --name "$NAME" "${RUN_FLAGS[@]}" -e RUST_LOG=info \
  -p "127.0.0.1:$PORT:1883" "$TAG" >/dev/null || fail "$(basename "${ENGINE[0]}") run failed (see above)"

state() { timeout 20 "${ENGINE[@]}" inspect --format "{{.State.$1}}" "$NAME" 2>/dev/null; }

pub() { timeout 10 mosquitto_pub -h 127.0.0.1 -p "$PORT" -V mqttv311 "$@"; }

# Ready when a QoS 1 publish is acknowledged (the published port may accept TCP before the broker).
log "waiting (at most 30 s) for the broker on 127.0.0.1:$PORT"
deadline=$((SECONDS + 30))
until pub -i "img-ready-$id" -q 1 -t "image-test/$id/ready" -m ready 2>/dev/null; do
  [[ "$(state Running)" == true ]] || fail "the container stopped before answering MQTT (exit code $(state ExitCode))"
  [[ $SECONDS -lt $deadline ]] || fail "the broker did not acknowledge a QoS 1 publish on 127.0.0.1:$PORT within 30 s"
  sleep 0.5
done
log "broker answers"

# sub_in_background NAME ARGS...: starts mosquitto_sub (QoS 1, output in $WORK/NAME.out), waits
# (at most 10 s) for its SUBACK and sets SUB_PID (not printed: it must stay this shell's child).
sub_in_background() {
  local name=$1 outfile="$WORK/$1.out" pid deadline=$((SECONDS + 10))
  shift
  # stdbuf: mosquitto_sub's -d lines must reach the file as they are printed.
  timeout 30 stdbuf -oL mosquitto_sub -d -h 127.0.0.1 -p "$PORT" -V mqttv311 -i "img-sub-$name-$id" \
    -q 1 "$@" >"$outfile" 2>&1 &
  pid=$!
  until grep -q 'SUBACK' "$outfile"; do
    kill -0 "$pid" 2>/dev/null || fail "mosquitto_sub ($name) exited before its SUBACK: $(cat "$outfile")"
    [[ $SECONDS -lt $deadline ]] || fail "mosquitto_sub ($name): no SUBACK within 10 s: $(cat "$outfile")"
    sleep 0.2
  done
  SUB_PID=$pid
}

# Each check prints topic|qos|retain|payload for one message and compares it exactly.
FMT='%t|%q|%r|%p'

# 1. retained, QoS 1: published first, delivered to a later subscriber with the retain flag.
RTOPIC="image-test/$id/retained"
RMSG="retained message through the image: $id, äöü ✓"
pub -i "img-pub-r-$id" -q 1 -r -t "$RTOPIC" -m "$RMSG" || fail "mosquitto_pub (QoS 1, retained) failed"
got=$(timeout 15 mosquitto_sub -h 127.0.0.1 -p "$PORT" -V mqttv311 -i "img-sub-r-$id" -q 1 \
  -t "$RTOPIC" -C 1 -W 10 -F "$FMT") || fail "mosquitto_sub got no retained message on $RTOPIC within 10 s"
want="$RTOPIC|1|1|$RMSG"
[[ "$got" == "$want" ]] || fail "retained message: expected '$want', got '$got'"
log "ok: retained QoS 1 message received exactly"

# 2. live, QoS 1: subscriber connected first (waits for its SUBACK), then the publish.
LTOPIC="image-test/$id/live"
LMSG="live QoS 1 message through the image: $id"
sub_in_background live -t "$LTOPIC" -C 1 -W 15 -F "MSG $FMT"
pub -i "img-pub-l-$id" -q 1 -t "$LTOPIC" -m "$LMSG" || fail "mosquitto_pub (QoS 1) failed"
wait "$SUB_PID" || fail "mosquitto_sub got no live message on $LTOPIC: $(cat "$WORK/live.out")"
got=$(sed -n 's/^MSG //p' "$WORK/live.out")
want="$LTOPIC|1|0|$LMSG"
[[ "$got" == "$want" ]] || fail "live message: expected '$want', got '$got' (full output: $(cat "$WORK/live.out"))"
log "ok: live QoS 1 message received exactly"

# --- stop with SIGTERM ------------------------------------------------------------------------

# A client stays connected through the stop, as in real use: it must not delay the exit.
sub_in_background idle -t "image-test/$id/idle"
[[ "$(state Running)" == true ]] || fail "the container is no longer running before the stop"
log "stopping with SIGTERM (${ENGINE[0]} stop -t 5: SIGKILL only after 5 s)"
t0=$(now_ms)
timeout 30 "${ENGINE[@]}" stop -t 5 "$NAME" >/dev/null || fail "${ENGINE[0]} stop failed"
t1=$(now_ms)
elapsed=$((t1 - t0))
code=$(state ExitCode)
log "stopped in ${elapsed} ms (the engine's own overhead included), exit code $code"
[[ "$code" == 0 ]] || fail "the broker exited with status $code on SIGTERM, expected 0 (137 means it was killed after ignoring SIGTERM)"
[[ $elapsed -lt $STOP_LIMIT_MS ]] || fail "stopping took ${elapsed} ms, limit ${STOP_LIMIT_MS} ms"
kill "$SUB_PID" 2>/dev/null || true # normally already gone: the broker closed its connection

echo "image: 1 passed, 0 failed"
