#!/usr/bin/env bash
# Install shmwal into a fresh virtual environment and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SHMWAL_VENV:-$(mktemp -d /tmp/shmwal-venv.XXXXXX)}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[test,bench]"
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
# pytest exits 5 when it collected no test: that is a failure here, not a pass.
if [ "$status" -eq 5 ]; then
  echo "no tests ran" >&2
  exit 1
fi
exit "$status"
