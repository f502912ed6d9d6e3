#!/usr/bin/env bash
# One idempotent set-up step for otel-kernelnet (both README commands run it first).
#   - installs the Debian packages of scripts/apt-packages.txt (only when one is missing)
#   - creates .venv at the repo root with the project installed editable (+ analysis, test),
#     which compiles the C OTLP encoder (setup.py; gcc and python3-dev from step 1)
#   - makes Debian's python3-bpfcc module importable from the venv (and nothing else of dist-packages)
#   - mounts tracefs at /sys/kernel/tracing
# A second run with nothing changed is a quick no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# 1. Debian packages ------------------------------------------------------------
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e "s/ARCH/$arch/" -e 's/[[:space:]]//g' scripts/apt-packages.txt)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  is_root || die "missing Debian packages (${missing[*]}); run this as root or: apt-get install ${missing[*]}"
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. the venv -------------------------------------------------------------------
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PY is older than 3.11"
stamp=.venv/.kernelnet-setup
# setup.py and the C encoder's source too: a changed one is rebuilt (pip install -e compiles it)
want=$(cat pyproject.toml setup.py otel_kernelnet/export/_otlp_native.c scripts/setup.sh scripts/constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  [ -x .venv/bin/python ] || { log "creating .venv"; "$PY" -m venv .venv; }
  log "installing otel-kernelnet (editable) and its dependencies into .venv"
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt -e ".[analysis,test]" >.venv/pip-install.log 2>&1; then
    tail -20 .venv/pip-install.log >&2; die "pip install failed (full log: .venv/pip-install.log)"
  fi
  # Debian's bcc, and only it, on the venv's path (appended after site-packages).
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p .venv/debian-bcc
  ln -sfn /usr/lib/python3/dist-packages/bcc .venv/debian-bcc/bcc
  echo "$ROOT/.venv/debian-bcc" > "$site/zz_debian_bcc.pth"
  echo "$want" > "$stamp"
fi
.venv/bin/python -c 'import bcc' 2>/dev/null || die "bcc does not import in .venv (is python3-bpfcc installed?)"

# 3. tracefs ----------------------------------------------------------------------
if ! mountpoint -q /sys/kernel/tracing 2>/dev/null; then
  if is_root; then
    mount -t tracefs nodev /sys/kernel/tracing || log "warning: could not mount tracefs at /sys/kernel/tracing"
  else
    log "warning: tracefs is not mounted and we are not root: 'otel-kernelnet check' will say how to fix it"
  fi
fi
exit 0
