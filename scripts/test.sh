#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: unit, analysis and kernel tiers.
# The kernel tier needs root and the real kernel; where it cannot run it FAILS.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -q`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" -ne 0 ]; then
  echo "test: the kernel tests need root (real tracepoints and network namespaces): run this as root" >&2
  exit 2
fi
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
