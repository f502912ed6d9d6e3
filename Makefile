# Convenience targets; the scripts they call are the source of truth.
PY := .venv/bin/python
RESULTS := benchmarks/results

.PHONY: test bench bench-full setup peers

# What the benchmarks compare against (bpfcc-tools, bpftrace) and drive (iperf3).
peers:
	DEBIAN_FRONTEND=noninteractive apt-get install -y $$(grep -v '^#' benchmarks/apt-packages.txt)

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

# The quick benchmark set (< 10 minutes, as root): one BENCH {json} line each,
# collected in $(RESULTS)/quick-<UTC time>.jsonl. See docs/benchmarks.md.
bench: setup peers
	@mkdir -p $(RESULTS)
	@out=$(RESULTS)/quick-$$(date -u +%Y%m%dT%H%M%SZ).jsonl; \
	set -e; \
	$(PY) benchmarks/bench_pipeline.py --quick | tee -a $$out; \
	$(PY) benchmarks/bench_mapping.py | tee -a $$out; \
	$(PY) benchmarks/bench_links.py | tee -a $$out; \
	$(PY) benchmarks/bench_join.py | tee -a $$out; \
	$(PY) benchmarks/bench_bpf_cost.py --seconds 5 | tee -a $$out; \
	$(PY) benchmarks/bench_startup.py --runs 4 --idle 5 | tee -a $$out; \
	$(PY) benchmarks/bench_packet.py --rounds 4 --window 2 | tee -a $$out; \
	$(PY) benchmarks/bench_saturation.py --rounds 2 --window 3 | tee -a $$out; \
	$(PY) benchmarks/bench_latency.py --rates 1000,6000,10000 --seconds 10 | tee -a $$out; \
	$(PY) benchmarks/bench_keepalive.py --seconds 10 | tee -a $$out; \
	echo "results: $$out"

# The full set (60 s sustained pipeline run, 10 start-up runs with 60 s idle).
bench-full: setup peers
	@mkdir -p $(RESULTS)
	@out=$(RESULTS)/full-$$(date -u +%Y%m%dT%H%M%SZ).jsonl; \
	set -e; \
	$(PY) benchmarks/bench_pipeline.py --pairs 20 | tee -a $$out; \
	$(PY) benchmarks/bench_mapping.py --rounds 20 | tee -a $$out; \
	$(PY) benchmarks/bench_links.py --rounds 20 | tee -a $$out; \
	$(PY) benchmarks/bench_join.py --seconds 40 | tee -a $$out; \
	$(PY) benchmarks/bench_bpf_cost.py --seconds 20 | tee -a $$out; \
	$(PY) benchmarks/bench_startup.py --runs 10 --idle 60 | tee -a $$out; \
	$(PY) benchmarks/bench_packet.py --rounds 20 --window 3 | tee -a $$out; \
	$(PY) benchmarks/bench_saturation.py --rounds 8 --window 5 | tee -a $$out; \
	$(PY) benchmarks/bench_latency.py --rates 1000,6000,10000,20000 --seconds 30 | tee -a $$out; \
	$(PY) benchmarks/bench_keepalive.py --seconds 60 | tee -a $$out; \
	$(PY) benchmarks/bench_soak.py --seconds 3600 --rate 1000 | tee -a $$out; \
	echo "results: $$out"
