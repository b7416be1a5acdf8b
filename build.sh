#!/usr/bin/env bash
# build.sh: builds the container image (static release binaries + Dockerfile) and is the
# project's one test command (`./build.sh test`). It owns the build and test orchestration only:
# it must not edit sources, Cargo.toml or the lockfile, and must not push anywhere unless --push
# is given. tests/image.sh sources this file for the engine helpers (see the guard at the end).
set -euo pipefail

BIN=mqtt-broker
STATIC_TARGET_DIR=target/static        # own target dir: the static build never fights the debug one
STAGE_DIR=$STATIC_TARGET_DIR/image     # build context part the Dockerfile COPYs from (see .dockerignore)
DEFAULT_TAG=mqtt-broker:latest

usage() {
  cat <<'EOF'
Usage: ./build.sh [SUBCOMMAND] [OPTIONS]

Subcommands:
  image      (default) build the static release binaries, then the container image
  binary     build only the static release binaries (target/static/image/linux-ARCH/mqtt-broker)
  test       install missing test tools (apt-get, as root), then cargo fmt --check, cargo clippy,
             cargo test, and tests/image.sh (builds, runs and stops the real image). This is the
             project's test command; CI runs it through .ci/run.
  bench      the benchmark: our broker, mosquitto and rumqttd side by side on loopback
             (benches/compare.sh; its options follow, e.g. ./build.sh bench --quick)
  help       this text

Options (image and binary; --engine also for test):
  -t, --tag TAG             image tag (default: mqtt-broker:latest)
  -p, --platforms LIST      comma-separated, e.g. linux/amd64,linux/arm64. Default: every platform
                            whose Rust target and linker are installed with docker buildx; the
                            local platform with plain docker build / podman build.
  -e, --engine ENGINE       docker or podman (default: $CONTAINER_ENGINE, else docker if its engine
                            answers, else podman)
      --push                docker buildx only: push the (multi-platform) image to its registry
  -h, --help                this text

Environment:
  CONTAINER_ENGINE          docker or podman, as --engine
  PODMAN_GLOBAL_FLAGS       flags put before every podman subcommand. Default, as root with runc
                            installed: "--runtime runc --cgroup-manager=cgroupfs" (what works in
                            sandboxes that refuse crun's cgroup handling); set it empty for none.
  CONTAINER_RUN_FLAGS       extra flags for `run` in tests/image.sh. Default:
                            "--ulimit nofile=20000:20000 --ulimit nproc=1000:1000".
  RUSTFLAGS                 appended to: -C target-feature=+crt-static -C strip=symbols

Platforms map to Rust targets: linux/amd64 = x86_64-unknown-linux-gnu (linker cc or
x86_64-linux-gnu-gcc), linux/arm64 = aarch64-unknown-linux-gnu (linker aarch64-linux-gnu-gcc).
EOF
}

die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '==> %s\n' "$*" >&2; }

# --- platforms ------------------------------------------------------------------------------

rust_target_of() {
  case "$1" in
    linux/amd64) echo x86_64-unknown-linux-gnu ;;
    linux/arm64) echo aarch64-unknown-linux-gnu ;;
    *) die "unsupported platform '$1' (supported: linux/amd64, linux/arm64)" ;;
  esac
}

local_platform() {
  case "$(uname -m)" in
    x86_64 | amd64) echo linux/amd64 ;;
    aarch64 | arm64) echo linux/arm64 ;;
    *) die "unsupported host architecture $(uname -m)" ;;
  esac
}

# Prints the cross linker for a Rust target (nothing for the local target: cargo's default), or
# fails if the target's standard library or a linker for it is not installed.
linker_for() {
  local target=$1 sysroot cand
  sysroot=$(rustc --print sysroot)
  [[ -d "$sysroot/lib/rustlib/$target/lib" ]] || return 1
  [[ "$(rust_target_of "$(local_platform)")" == "$target" ]] && return 0
  case "$target" in
    x86_64-unknown-linux-gnu) cand=x86_64-linux-gnu-gcc ;;
    aarch64-unknown-linux-gnu) cand=aarch64-linux-gnu-gcc ;;
    *) return 1 ;;
  esac
  command -v "$cand" >/dev/null 2>&1 || return 1
  echo "$cand"
}

# Platforms whose static binary can be built here (the local one always).
buildable_platforms() {
  local p out
  out=$(local_platform)
  for p in linux/amd64 linux/arm64; do
    [[ "$p" == "$(local_platform)" ]] && continue
    linker_for "$(rust_target_of "$p")" >/dev/null && out+=",$p"
  done
  echo "$out"
}

# --- static binaries ------------------------------------------------------------------------

# build_binaries PLATFORM...: one cargo invocation for all targets, then stage each binary at
# $STAGE_DIR/linux-ARCH/mqtt-broker, where the Dockerfile expects it.
build_binaries() {
  local p target linker args=() envs=()
  for p in "$@"; do
    target=$(rust_target_of "$p")
    linker=$(linker_for "$target") ||
      die "cannot build $p: Rust target $target or its linker is not installed"
    args+=(--target "$target")
    if [[ -n "$linker" ]]; then
      envs+=("CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$target")_LINKER=$linker")
    fi
  done
  say "building static release binaries for $* in $STATIC_TARGET_DIR"
  env "${envs[@]}" \
    RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols${RUSTFLAGS:+ $RUSTFLAGS}" \
    cargo build --release --bin "$BIN" --target-dir "$STATIC_TARGET_DIR" "${args[@]}"
  for p in "$@"; do
    target=$(rust_target_of "$p")
    mkdir -p "$STAGE_DIR/linux-${p#linux/}" "$STAGE_DIR/data"
    install -m 0755 "$STATIC_TARGET_DIR/$target/release/$BIN" "$STAGE_DIR/linux-${p#linux/}/$BIN"
    say "staged $STAGE_DIR/linux-${p#linux/}/$BIN ($(du -h "$STAGE_DIR/linux-${p#linux/}/$BIN" | cut -f1))"
  done
}

# --- container engine -----------------------------------------------------------------------

ENGINE=()   # the engine command with its global flags, set by pick_engine

docker_engine_up() { command -v docker >/dev/null 2>&1 && timeout 15 docker info >/dev/null 2>&1; }

# pick_engine: sets ENGINE from $CONTAINER_ENGINE or what answers; fails with a clear message
# when no engine can be used.
pick_engine() {
  local name=${CONTAINER_ENGINE:-}
  if [[ -z "$name" ]]; then
    if docker_engine_up; then
      name=docker
    elif command -v podman >/dev/null 2>&1; then
      name=podman
    else
      die "no container engine: no Docker engine answers and podman is not installed (apt-get install -y podman runc)"
    fi
  fi
  case "$name" in
    docker)
      docker_engine_up || die "docker was chosen but no Docker engine answers (docker info fails)"
      ENGINE=(docker)
      ;;
    podman)
      command -v podman >/dev/null 2>&1 || die "podman was chosen but is not installed (apt-get install -y podman runc)"
      local flags
      if [[ -n "${PODMAN_GLOBAL_FLAGS+set}" ]]; then
        flags=$PODMAN_GLOBAL_FLAGS
      elif [[ $(id -u) -eq 0 ]] && command -v runc >/dev/null 2>&1; then
        flags="--runtime runc --cgroup-manager=cgroupfs"
      else
        flags=""
      fi
      # shellcheck disable=SC2206 # word splitting of the flags is intended
      ENGINE=(podman $flags)
      timeout 60 "${ENGINE[@]}" info >/dev/null 2>&1 ||
        die "podman does not work here ('${ENGINE[*]} info' fails; PODMAN_GLOBAL_FLAGS sets the flags)"
      ;;
    *) die "unknown engine '$name' (docker or podman)" ;;
  esac
}

# --- image ----------------------------------------------------------------------------------

# build_image TAG PLATFORMS(comma list) PUSH(0/1): ENGINE must be set, binaries staged.
build_image() {
  local tag=$1 platforms=$2 push=$3 n
  n=$(tr ',' '\n' <<<"$platforms" | grep -c .)
  if [[ "${ENGINE[0]}" == docker ]] && docker buildx version >/dev/null 2>&1; then
    local out=()
    if [[ $push -eq 1 ]]; then
      out=(--push)
    elif [[ $n -eq 1 ]]; then
      out=(--load)
    else
      say "note: a multi-platform image stays in the buildx cache unless --push is given"
    fi
    say "docker buildx build --platform $platforms -t $tag"
    docker buildx build --platform "$platforms" -t "$tag" "${out[@]}" -f Dockerfile .
  else
    [[ $push -eq 0 ]] || die "--push needs docker buildx"
    [[ $n -eq 1 ]] || die "building for several platforms ($platforms) needs docker buildx; ${ENGINE[0]} builds one platform at a time (use --platforms $(local_platform))"
    say "${ENGINE[*]} build --platform $platforms -t $tag"
    local layers=()
    # podman: no intermediate images (the build is one COPY; caching it gains nothing).
    [[ "${ENGINE[0]}" == podman ]] && layers=(--layers=false)
    "${ENGINE[@]}" build "${layers[@]}" --platform "$platforms" \
      --build-arg "TARGETARCH=${platforms#linux/}" -t "$tag" -f Dockerfile .
  fi
  say "built image $tag for $platforms"
}

# --- test -----------------------------------------------------------------------------------

# Installs, with apt-get, the tools the tests need and this machine lacks.
install_test_tools() {
  local missing=() cmd pkg
  for cmd in mosquitto:mosquitto mosquitto_pub:mosquitto-clients mosquitto_sub:mosquitto-clients \
    chromium:chromium certutil:libnss3-tools npm:npm; do
    command -v "${cmd%%:*}" >/dev/null 2>&1 || missing+=("${cmd#*:}")
  done
  # A container engine for tests/image.sh: podman (with runc) unless a Docker engine answers.
  if [[ "${CONTAINER_ENGINE:-}" != docker ]] && ! { [[ -z "${CONTAINER_ENGINE:-}" ]] && docker_engine_up; }; then
    for pkg in podman runc; do
      command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
  fi
  # shellcheck disable=SC2207 # package names have no spaces
  missing=($(printf '%s\n' "${missing[@]}" | awk 'NF && !seen[$0]++'))
  if [[ ${#missing[@]} -eq 0 ]]; then
    say "test tools present (mosquitto, mosquitto-clients, container engine)"
    return 0
  fi
  say "installing missing test tools: ${missing[*]}"
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get here: install them by hand"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q)
  if [[ $(id -u) -ne 0 ]]; then
    sudo -n true 2>/dev/null || die "missing ${missing[*]}: run as root, or: sudo apt-get install -y ${missing[*]}"
    apt=(sudo -n "${apt[@]}")
  fi
  timeout 600 "${apt[@]}" update </dev/null || die "apt-get update failed"
  timeout 900 "${apt[@]}" install -y "${missing[@]}" </dev/null || die "apt-get install ${missing[*]} failed"
}

# MQTT.js for the browser test (tests/it/browser.rs), from npm into the git-ignored cache.
vendor_test_js() {
  local dir=.test-cache/npm
  [[ -f $dir/node_modules/mqtt/dist/mqtt.min.js ]] && return 0
  say "vendoring MQTT.js into $dir (npm)"
  mkdir -p "$dir"
  timeout 300 npm install --prefix "$dir" --no-audit --no-fund --loglevel=error mqtt@5 </dev/null ||
    die "npm install mqtt failed"
}

# Python's prometheus_client, whose parser checks /metrics (tests/it/metrics.rs), into a
# git-ignored cache folder; installed once, with pip.
install_metrics_parser() {
  local dir=.test-cache/python
  if PYTHONPATH=$dir python3 -c 'import prometheus_client' 2>/dev/null; then
    return 0
  fi
  say "installing prometheus_client into $dir (pip)"
  command -v python3 >/dev/null 2>&1 || die "python3 is needed for the metrics test"
  timeout 300 python3 -m pip install -q --target "$dir" prometheus_client </dev/null \
    || die "pip install prometheus_client failed"
}

# MQTT over QUIC clients for tests/it/quic.rs, into the git-ignored cache: aioquic (PyPI) and
# mqttv5-cli (crates.io; a first build takes several minutes, later runs find it cached).
install_quic_clients() {
  local py=.test-cache/python cargo_root=.test-cache/cargo
  if [[ ! -d $py/aioquic ]]; then
    say "installing aioquic into $py (pip)"
    command -v python3 >/dev/null 2>&1 || die "python3 is needed for the QUIC tests"
    timeout 600 python3 -m pip install --quiet --target "$py" aioquic </dev/null ||
      die "pip install aioquic failed"
  fi
  if [[ ! -x $cargo_root/bin/mqttv5 ]] && command -v mqttv5 >/dev/null 2>&1; then
    # Already installed on this machine (cargo install mqttv5-cli): use that build.
    mkdir -p "$cargo_root/bin" && cp "$(command -v mqttv5)" "$cargo_root/bin/mqttv5"
  fi
  if [[ ! -x $cargo_root/bin/mqttv5 ]]; then
    say "installing mqttv5-cli into $cargo_root (cargo install)"
    timeout 1800 cargo install mqttv5-cli --root "$cargo_root" --target-dir .test-cache/cargo-target </dev/null ||
      die "cargo install mqttv5-cli failed"
  fi
}

run_tests() {
  local t0=$SECONDS
  install_test_tools
  vendor_test_js
  install_quic_clients
  # The browser test fails, rather than skips, when its tools are missing.
  export MQTT_BROWSER_TEST=require
  install_metrics_parser
  say "cargo fmt --all -- --check"
  cargo fmt --all -- --check || die "cargo fmt --check failed: run cargo fmt --all"
  say "cargo clippy --all-targets -- -D warnings"
  cargo clippy --all-targets -- -D warnings || die "cargo clippy failed"
  say "cargo test --all-targets"
  cargo test --all-targets || die "cargo test failed"
  say "tests/image.sh"
  bash tests/image.sh || die "tests/image.sh failed"
  say "all tests passed in $((SECONDS - t0))s"
}

# --- main -----------------------------------------------------------------------------------

main() {
  cd "$(dirname "${BASH_SOURCE[0]}")"
  local cmd=image tag=$DEFAULT_TAG platforms="" engine="" push=0
  if [[ $# -gt 0 && "$1" != -* ]]; then
    cmd=$1
    shift
  fi
  # The benchmark takes its own options.
  if [[ "$cmd" == bench ]]; then
    exec bash benches/compare.sh "$@"
  fi
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -t | --tag) [[ $# -ge 2 ]] || die "$1 needs a value"; tag=$2; shift 2 ;;
      -p | --platforms) [[ $# -ge 2 ]] || die "$1 needs a value"; platforms=$2; shift 2 ;;
      -e | --engine) [[ $# -ge 2 ]] || die "$1 needs a value"; engine=$2; shift 2 ;;
      --push) push=1; shift ;;
      -h | --help) usage; return 0 ;;
      *) usage >&2; die "unknown option '$1'" ;;
    esac
  done
  if [[ -n "$engine" ]]; then export CONTAINER_ENGINE=$engine; fi

  case "$cmd" in
    help) usage ;;
    binary | image)
      if [[ "$cmd" == image ]]; then
        pick_engine # before the slow cargo build: fail early when no engine can be used
      fi
      if [[ -z "$platforms" ]]; then
        if [[ "$cmd" == image ]]; then
          if [[ "${ENGINE[0]}" == docker ]] && docker buildx version >/dev/null 2>&1; then
            platforms=$(buildable_platforms)
          else
            platforms=$(local_platform)
          fi
        else
          platforms=$(buildable_platforms)
        fi
      fi
      local list
      IFS=, read -r -a list <<<"$platforms"
      build_binaries "${list[@]}"
      if [[ "$cmd" == image ]]; then
        build_image "$tag" "$platforms" "$push"
      fi
      ;;
    test) run_tests ;;
    *) usage >&2; die "unknown subcommand '$cmd'" ;;
  esac
}

# Run main only when executed, not when sourced (tests/image.sh sources this for pick_engine).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
