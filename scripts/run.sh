#!/usr/bin/env bash
# Set up (idempotent) and run the collector. With no OTLP endpoint configured it writes
# OTLP JSON Lines under ./kernelnet-data. Arguments go to `otel-kernelnet run`
# (e.g. --duration 30, --otlp-endpoint http://collector:4317). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/otel-kernelnet run "$@"
