#!/usr/bin/env bash
# The whole test suite, on any Debian-like machine with a Rust toolchain:
# installs what the tests need when it is missing (as root: Debian packages,
# the Docker engine and the offline base images, Chromium and its driver,
# schemathesis and torch in venvs, cargo-nextest), then builds the `pesc`
# binary and runs every test. A piece that cannot be had here (not root, no
# network namespaces, an install that failed) does not fail the suite: the
# tests that need it are built as skipped (nextest counts them as skipped,
# never as passed) and the summary at the end names them and says why.
#
#   scripts/test.sh                   provision, build, run every test
#   scripts/test.sh -E 'test(sweep)'  extra arguments go to `cargo nextest run`
#   scripts/test.sh --provision-only  provision and report, run nothing
#   PESC_NO_INSTALL=1 scripts/test.sh install nothing; skip what is missing
#   PESC_REQUIRE_ALL=1 scripts/test.sh a piece that cannot be had fails the run
#                                     instead of skipping (CI sets it)
#
# A PESC_SKIP_* variable already set is kept (README.md lists them). A Docker
# daemon this script starts is stopped at the end, by its PID.
set -uo pipefail
cd "$(dirname "$0")/.."

provision_only=0
if [ "${1:-}" = "--provision-only" ]; then
  provision_only=1
  shift
fi

reasons=()
skip() { # VAR REASON
  export "$1=1"
  reasons+=("$1: $2")
  echo "test.sh: skipping: $2" >&2
}
have() { command -v "$1" >/dev/null 2>&1; }

may_install=1
why_not="its install failed"
if [ "$(id -u)" != 0 ]; then
  may_install=0
  why_not="not root, so nothing can be installed"
elif [ -n "${PESC_NO_INSTALL:-}" ]; then
  may_install=0
  why_not="PESC_NO_INSTALL is set"
elif ! have apt-get; then
  may_install=0
  why_not="no apt-get on this machine"
fi

# Debian packages: python3 for the examples, iproute2 for the LAN tests'
# network namespaces, the Docker engine and debootstrap (offline images),
# Chromium and chromedriver, python3-venv for the venvs.
need=()
have python3 || need+=(python3)
have ip || need+=(iproute2)
if [ -z "${PESC_SKIP_DOCKER:-}" ]; then
  have dockerd || need+=(docker.io)
  have debootstrap || need+=(debootstrap)
fi
if [ -z "${PESC_SKIP_BROWSER:-}" ]; then
  have chromium || need+=(chromium)
  have chromedriver || need+=(chromium-driver)
fi
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ $may_install = 1 ]; then
    echo "test.sh: installing ${need[*]}" >&2
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"; } \
      || echo "test.sh: apt-get could not install everything; what is missing is skipped" >&2
  else
    echo "test.sh: missing ${need[*]} ($why_not)" >&2
  fi
fi

# Docker: the engine, a running daemon, and the offline base images.
started_dockerd=""
stop_dockerd() {
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2>/dev/null
    wait "$started_dockerd" 2>/dev/null
  fi
}
trap stop_dockerd EXIT
if [ -z "${PESC_SKIP_DOCKER:-}" ]; then
  if ! have docker || ! have dockerd; then
    skip PESC_SKIP_DOCKER "the Docker executor's tests: no Docker engine ($why_not)"
  elif ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      dockerd >/tmp/pesc-test-dockerd.log 2>&1 &
      started_dockerd=$!
      for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    fi
    if ! docker info >/dev/null 2>&1; then
      if [ "$(id -u)" = 0 ]; then
        skip PESC_SKIP_DOCKER "the Docker executor's tests: the Docker daemon does not start here (see /tmp/pesc-test-dockerd.log)"
      else
        skip PESC_SKIP_DOCKER "the Docker executor's tests: no Docker daemon this user may use (not root, not in the docker group)"
      fi
    fi
  fi
  if [ -z "${PESC_SKIP_DOCKER:-}" ] && ! scripts/offline-images.sh; then
    skip PESC_SKIP_DOCKER "the Docker executor's tests: the offline base images could not be made"
  fi
fi

# The browser test: Debian's Chromium through chromedriver.
if [ -z "${PESC_SKIP_BROWSER:-}" ] && ! { have chromium && have chromedriver; }; then
  skip PESC_SKIP_BROWSER "the web UI's browser test: no chromium and chromedriver"
fi

# A venv for a Python tool: under /opt as root, else under target/.
venv_root=/opt
[ -w /opt ] || venv_root="$PWD/target/test-venvs"

# schemathesis checks the API against its OpenAPI document.
if [ -z "${PESC_SKIP_SCHEMATHESIS:-}" ] && [ -z "${PESC_SCHEMATHESIS:-}" ]; then
  st="$venv_root/pesc-venv/bin/st"
  if [ ! -x "$st" ]; then
    mkdir -p "$venv_root"
    { python3 -m venv "$venv_root/pesc-venv" \
      && "$venv_root/pesc-venv/bin/pip" install -q "schemathesis==4.32.5"; } >&2 \
      || echo "test.sh: cannot install schemathesis" >&2
  fi
  if [ -x "$st" ]; then
    export PESC_SCHEMATHESIS="$st"
  else
    skip PESC_SKIP_SCHEMATHESIS "the API schema test: no schemathesis"
  fi
fi

# The parallel requests' tests run torch.distributed (gloo, RPC) on CPU, from
# a venv of the system's Python in a place runs can read (not a home dir):
# PyPI's standard wheel, about 3 minutes and 5 GB the first time.
if [ -z "${PESC_SKIP_TORCH:-}" ] && [ -z "${PESC_TORCH_PYTHON:-}" ]; then
  py=/opt/pesc-torch/bin/python
  if ! "$py" -c 'import torch.distributed' 2>/dev/null && [ $may_install = 1 ]; then
    rm -rf /opt/pesc-torch
    { /usr/bin/python3 -m venv /opt/pesc-torch \
      && /opt/pesc-torch/bin/pip install -q torch numpy; } >&2 \
      || echo "test.sh: cannot install torch" >&2
  fi
  if "$py" -c 'import torch.distributed' 2>/dev/null; then
    export PESC_TORCH_PYTHON="$py"
  else
    skip PESC_SKIP_TORCH "the parallel requests' torch tests: no torch in /opt/pesc-torch ($why_not, or its install failed)"
  fi
fi

# The LAN tests make network namespaces (root, CAP_NET_ADMIN).
if [ -z "${PESC_SKIP_NETNS:-}" ] && ! { ip netns add pesc-test-probe && ip netns del pesc-test-probe; } 2>/dev/null; then
  skip PESC_SKIP_NETNS "the mDNS and partition tests: network namespaces cannot be made here"
fi
if [ "$(id -u)" != 0 ]; then
  reasons+=("the tests that need a root node: not root")
fi

summary() {
  if [ ${#reasons[@]} -eq 0 ]; then
    echo "test.sh: every piece the suite needs is here; nothing is skipped for lack of one."
  else
    echo "test.sh: SKIPPED on this machine, and why:"
    printf '  - %s\n' "${reasons[@]}"
  fi
}
if [ $provision_only = 1 ]; then
  summary
  exit 0
fi
if [ -n "${PESC_REQUIRE_ALL:-}" ] && [ ${#reasons[@]} -gt 0 ]; then
  summary
  echo "test.sh: PESC_REQUIRE_ALL is set and pieces are missing: not running a partial suite" >&2
  exit 1
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked || { echo "test.sh: cannot install cargo-nextest" >&2; exit 1; }
fi
cargo build -p pesc-node || exit 1
cargo nextest run --workspace "$@"
rc=$?
summary
skipped=$(cargo nextest list --workspace --run-ignored ignored-only --message-format oneline 2>/dev/null || true)
if [ -n "$skipped" ]; then
  echo "test.sh: the skipped tests:"
  echo "$skipped"
fi
exit $rc
