# One entry point per thing a person does. `make test` is what CI runs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install replay test unit lint typecheck validate stack pr clean test-ray-oldest

$(STAMP): requirements.txt functions/requirements.txt ray_hooks/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## Replay a spot warning against an embedded local Ray cluster (no AWS account needed).
replay: $(STAMP)
	$(BIN)/spot-responder replay events/spot-interruption-terminate.json

## The whole test suite (what CI runs), but the autoscaler v1 cases of two scenarios.
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25 -m "not autoscaler_v1"

## The autoscaler v1 cases left out of `make test` (interruptions, beside Ray Data): ~5 min.
.PHONY: test-autoscaler-v1
test-autoscaler-v1: $(STAMP)
	$(BIN)/python -m pytest -q -s -m autoscaler_v1

## Only the replacement beside Ray Data's own requester (also in `make test`).
.PHONY: test-coexistence
test-coexistence: $(STAMP)
	$(BIN)/python -m pytest -q -s -m coexistence

## The Ray-side integration tests again on the oldest Ray ray_hooks supports
## (ray_hooks/compat.py MIN_RAY), in a virtualenv of their own; `make test` covers the newest.
RAY_OLDEST ?= 2.50.0
OLDEST_VENV = $(VENV)-ray-$(RAY_OLDEST)
RAY_SIDE_TESTS = tests/unit/test_ray_compat.py tests/integration/test_ray_hooks_respond.py \
	tests/integration/test_verdict_outcomes.py tests/integration/test_preemption_signal.py \
	tests/integration/test_impact_verdicts.py
test-ray-oldest:
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install --quiet "ray[default]==$(RAY_OLDEST)" PyYAML \
		-r functions/requirements.txt pytest==9.2.0 pytest-timeout==2.4.0 hypothesis==6.155.2
	PYTHONPATH=functions:. $(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider $(RAY_SIDE_TESTS)

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/contract

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

validate: $(STAMP)
	SAM_CLI_TELEMETRY=0 $(BIN)/sam validate --lint
	$(BIN)/cfn-lint template.yaml

## checkov on the template and `sam build` (Python 3.12), in their own venv.
stack: $(STAMP)
	./.ci/stack-checks

pr: lint typecheck validate stack test

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache

## Benchmark: how long `ray_hooks respond` takes, drain issued vs analysis done, for 1, 100, 2,000 running tasks.
.PHONY: bench-respond
bench-respond: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench_respond

## Benchmark: handler overhead per notice and batch, `ray_hooks respond` on a real cluster,
## cold-start import and package size (not part of `make test`; results in tests/benchmarks/results/).
.PHONY: bench-speed
bench-speed: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench_speed

## Benchmark: 128 spot warnings for three real local Ray clusters within one second: commands
## sent, time until every existing node drains, every notice in the ledger (not part of `make test`).
.PHONY: bench-load
bench-load: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench_load

## Benchmark: one spot interruption of a busy worker on a real local autoscaling cluster, Ray
## alone vs with the responder: work killed, retries, makespan, replacement time, max_retries=0
## failures, and a plot of running tasks per node (not part of `make test`; ~6 min).
.PHONY: bench-work-saved
bench-work-saved: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench_work_saved

## Benchmark: drain accepted -> deadline seen inside a running actor (p50/p99 over 200 drains),
## GCS calls per node per second with 0 / 40 / 2,000 watching tasks, and the checkpoint example
## with the responder and under Ray alone (not part of `make test`; ~15 min).
.PHONY: bench-deadline
bench-deadline: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench_deadline

## Benchmark: >= 200 randomized jobs on spot workers that are warned and killed: the responder's
## verdict per job (will-recover / at-risk / lost) against what Ray then really did; seeded
## (`make bench-verdicts ARGS="--seed 7 --count 300"`; not part of `make test`; ~20-30 min).
.PHONY: bench-verdicts
bench-verdicts: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench_verdicts $(ARGS)

## Benchmark: the seed's job (120 s one-CPU tasks, scaled by a time factor) through a seeded
## trace of spot interruptions in bursts, some pools out of capacity, on a real autoscaling
## cluster (v2, fake provider): Ray alone, Ray + `ray drain-node`, with the responder, and the
## uninterrupted run; work killed, retries, makespan, lead, deficit, cost and a timeline plot
## (`make bench-goodput ARGS="--seed 2"`; not part of `make test`; ~20 min).
.PHONY: bench-goodput
bench-goodput: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench_goodput $(ARGS)
