# heteronn — every target runs inside .venv, created by `make install`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_ROOT ?= ./data
# Absolute, so processes started in other working directories (tests, nodes) find it too.
override DATA_ROOT := $(abspath $(DATA_ROOT))
ROUNDS ?= 20
# make demo SEED=n: every party seeds its process from n (reproducible for a seed).
SEED ?= 1
# make demo TRAINING_MODE=pipelined:8 RTT_MS=50: the demo across an emulated 50 ms WAN
# (docs/performance.md); exact mode and no delay by default.
TRAINING_MODE ?= exact
RTT_MS ?= 0
# make demo-serve MODE=secure: serve the secure demo's bundles.
MODE ?= plain
export DATA_ROOT

PROTOS := $(wildcard proto/heteronn/v1/*.proto)
GEN := $(PROTOS:.proto=_pb2.py)

.PHONY: install proto proto-lint test test-all demo demo-secure demo-serve privacy-eval bench lint image compose-demo chart-lint certs deploy-checks clean

# The PSI engine (SecretFlow's spu) in its own venv: spu needs Python 3.10-3.11 and numpy < 2.
PSI_VENV ?= .venv-psi
PSI_PYTHON ?= python3

install: $(VENV)/.installed $(PSI_VENV)/.installed proto

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(PSI_VENV)/.installed: requirements-psi.lock
	test -x $(PSI_VENV)/bin/python || $(PSI_PYTHON) -m venv $(PSI_VENV)
	$(PSI_VENV)/bin/python -c 'import sys; assert sys.version_info[:2] in ((3, 10), (3, 11)), \
		"the PSI engine needs Python 3.10 or 3.11: make install PSI_PYTHON=python3.11"'
	$(PSI_VENV)/bin/python -m pip install -q --no-deps -r requirements-psi.lock
	touch $@

proto: $(VENV)/.installed $(GEN)

proto/heteronn/v1/%_pb2.py: proto/heteronn/v1/%.proto
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto \
		--grpc_python_out=proto $(PROTOS)

test: install
	$(PY) -m pytest -q -m "not slow" tests

test-all: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) -m examples.mnist_halves.demo --mode plain --rounds $(ROUNDS) --data-root $(DATA_ROOT) \
		--seed $(SEED) --training-mode $(TRAINING_MODE) --rtt-ms $(RTT_MS)

demo-secure: install
	$(PY) -m examples.mnist_halves.demo --mode secure --rounds $(ROUNDS) --data-root $(DATA_ROOT) \
		--seed $(SEED) --training-mode $(TRAINING_MODE) --rtt-ms $(RTT_MS)

# Trains the demo (or reuses out/demo-serve-$(MODE)), serves both parties over gRPC and
# compares the served accuracy over the 2,000 test ids with the training run's.
demo-serve: install
	$(PY) -m examples.mnist_halves.serve_demo --mode $(MODE) --rounds $(ROUNDS) \
		--data-root $(DATA_ROOT) --seed $(SEED)

privacy-eval: install
	$(PY) -m examples.mnist_halves.privacy_eval --rounds $(or $(PRIVACY_ROUNDS),5) --seed $(SEED)

bench: install
	$(PY) -m bench.run_all

lint: install
	$(VENV)/bin/ruff check .

# buf lint (STANDARD) and buf format over proto/ (buf from npm, into .venv-tools/)
proto-lint:
	.ci/proto-lint

# ---- deployment (docs/operations.md) ------------------------------------------------------
certs: install
	$(PY) -m wire.dev_certs --out certs --readable --client operator coordinator host collaborator

image:
	.ci/compose-e2e image

compose-demo: certs
	.ci/compose-e2e

chart-lint:
	.ci/deploy-checks chart

deploy-checks:
	.ci/deploy-checks

clean:
	rm -rf out .heteronn proto/heteronn/v1/*_pb2*.py proto/heteronn/v1/*_pb2.pyi
