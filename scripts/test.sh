#!/usr/bin/env bash
# Install shmwal into a fresh virtual environment and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${SHMWAL_VENV:-}" ]; then
  venv="$SHMWAL_VENV"
else
  venv="$(mktemp -d /tmp/shmwal-venv.XXXXXX)"
  trap 'rm -rf "$venv"' EXIT   # ours alone: 225 MB a run were left in /tmp
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[test,bench]"
# The compiled hot path is optional for users (no compiler: pure Python), never for the tests.
"$venv/bin/python" -c "from shmwal.client.hot import native; assert native, 'shmwal._hot was not built'"
# The nats:// tests need nats-server (Debian packages 2.9). Installed where we may (root with
# apt), quietly and within bounded time; where it cannot be, those tests skip and say why.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ] \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  timeout 180 apt-get install -y -qq nats-server >/dev/null 2>&1 \
    || { timeout 180 apt-get update -qq >/dev/null 2>&1 \
         && timeout 180 apt-get install -y -qq nats-server >/dev/null 2>&1; } \
    || echo "nats-server could not be installed: the nats:// tests will skip" >&2
fi
set +e
# Two passes: the compiled hot path, and the whole suite again, drills included, on the
# pure-Python path, which must behave as hot.c does (tests/test_differential.py compares the
# two directly). Left out of the second pass, as they never reach the hot path: the nats://
# backend's own tests (NATS JetStream moves its entries), the docs' text, the io_uring ring
# against plain files, the pure reclamation policy; test_differential.py skips itself there.
# The passes run side by side: the suite's tests spend most of their time waiting on other
# processes (load stays near 1 on 2 cores), and one after the other they took ~25 minutes.
# Each has its own temporary directory and log; the logs are printed whole, one after the other.
logs="$(mktemp -d /tmp/shmwal-ci-logs.XXXXXX)"
base="$(mktemp -d /tmp/shmwal-ci-tmp.XXXXXX)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider --basetemp="$base/compiled" --durations=10 "$@" \
  >"$logs/compiled" 2>&1 &
compiled_pid=$!
pure_pid=""
if [ "$#" -eq 0 ]; then
  SHMWAL_PURE_PYTHON=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider --basetemp="$base/pure" \
    --durations=10 --ignore=tests/test_nats.py --ignore=tests/test_docs.py \
    --ignore=tests/test_uring_ring.py --ignore=tests/test_reclaim_policy.py \
    >"$logs/pure" 2>&1 &
  pure_pid=$!
fi
wait "$compiled_pid"
status=$?
echo "=== compiled hot path"
cat "$logs/compiled"
if [ -n "$pure_pid" ]; then
  wait "$pure_pid"
  pure_status=$?
  echo "=== the whole suite again with SHMWAL_PURE_PYTHON=1"
  cat "$logs/pure"
  if [ "$status" -eq 0 ]; then status=$pure_status; fi
fi
rm -rf "$logs" "$base"
set -e
# pytest exits 5 when it collected no test: that is a failure here, not a pass.
if [ "$status" -eq 5 ]; then
  echo "no tests ran" >&2
  exit 1
fi
exit "$status"
