# Convenience targets; the scripts they call are the source of truth.
PY := .venv/bin/python
RESULTS := benchmarks/results

.PHONY: test bench bench-full setup

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

# The quick benchmark set (< 10 minutes, as root): one BENCH {json} line each,
# collected in $(RESULTS)/quick-<UTC time>.jsonl. See docs/benchmarks.md.
bench: setup
	@mkdir -p $(RESULTS)
	@out=$(RESULTS)/quick-$$(date -u +%Y%m%dT%H%M%SZ).jsonl; \
	set -e; \
	$(PY) benchmarks/bench_pipeline.py --quick | tee -a $$out; \
	$(PY) benchmarks/bench_bpf_cost.py --seconds 5 | tee -a $$out; \
	$(PY) benchmarks/bench_startup.py --runs 4 --idle 5 | tee -a $$out; \
	echo "results: $$out"

# The full set (60 s sustained pipeline run, 10 start-up runs with 60 s idle).
bench-full: setup
	@mkdir -p $(RESULTS)
	@out=$(RESULTS)/full-$$(date -u +%Y%m%dT%H%M%SZ).jsonl; \
	set -e; \
	$(PY) benchmarks/bench_pipeline.py --pairs 20 | tee -a $$out; \
	$(PY) benchmarks/bench_bpf_cost.py --seconds 20 | tee -a $$out; \
	$(PY) benchmarks/bench_startup.py --runs 10 --idle 60 | tee -a $$out; \
	echo "results: $$out"
