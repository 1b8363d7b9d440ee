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
# Two workers (pytest-xdist): most tests wait on other processes, so both cores stay busy.
workers=(-n "${SHMWAL_TEST_WORKERS:-2}" --dist worksteal)
"$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=10 "${workers[@]}" "$@"
status=$?
if [ "$status" -eq 0 ] && [ "$#" -eq 0 ]; then
  # The whole suite again, drills included, on the pure-Python hot path: it must
  # behave as hot.c does (tests/test_differential.py compares the two directly).
  # Left out, as they never reach the hot path: the nats:// backend's own tests and its
  # half of test_backends.py (NATS JetStream moves its entries), the docs' text, the
  # io_uring ring against plain files, the pure reclamation policy; test_differential.py
  # skips itself (it runs both paths).
  echo "--- the whole suite again with SHMWAL_PURE_PYTHON=1"
  SHMWAL_PURE_PYTHON=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=10 "${workers[@]}" \
    --ignore=tests/test_nats.py --ignore=tests/test_docs.py --ignore=tests/test_uring_ring.py \
    --ignore=tests/test_reclaim_policy.py
  status=$?
fi
set -e
# pytest exits 5 when it collected no test: that is a failure here, not a pass.
if [ "$status" -eq 5 ]; then
  echo "no tests ran" >&2
  exit 1
fi
exit "$status"
