# The two commands of the README: `make run` and `make test`. Both set up what they need first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit controlplane ccusage images image-smoke browser prometheus crd cluster-up cluster-down demo-cluster clean

# Cargo's build folder for native/, outside the tree so a fresh clone or a re-run reuses it.
NATIVE_TARGET ?= $(HOME)/.cache/sessionpipe/native-target
NATIVE_SOURCES := native/pyproject.toml native/Cargo.toml native/Cargo.lock native/sessionpipe_native.pyi $(wildcard native/src/*.rs)

# The product (editable, with the dev extra), the test cluster (its own package in kubetest/) and
# the compiled usage parser (native/: Rust, built by maturin from PyPI with cargo; native/README.md).
$(STAMP): pyproject.toml constraints.txt kubetest/pyproject.toml $(NATIVE_SOURCES)
	@command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs) to build native/" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' -e ./kubetest
	CARGO_TARGET_DIR=$(NATIVE_TARGET) $(BIN)/python -m pip install --quiet --force-reinstall --no-deps ./native
	touch $(STAMP)

# Set up, then run the usage processor on the embedded default (your Claude Code transcripts in
# ~/.config/claude/projects and ~/.claude/projects if there are any, else a demo corpus generated
# by sessionpipe, with a note) into ./sessionpipe.duckdb, and report.
run: $(STAMP)
	$(BIN)/sessionpipe quickstart

# Regenerate the CRD (crds/ and the chart's crds/) from the operator's pydantic models.
crd: $(STAMP)
	$(BIN)/python -m sessionpipe_operator.crd

controlplane: $(STAMP)
	$(BIN)/python -m sessionpipe_kubetest build

# The job and operator images, built from the Dockerfiles with buildah (installed when missing) into
# the local store as localhost/sessionpipe-{job,operator}:<version>; unchanged inputs rebuild nothing.
images: $(STAMP)
	scripts/ensure-image-tools.sh
	$(BIN)/python -m sessionpipe_kubetest images

# A usage run in the job image: make image-smoke SESSIONS=~/.claude/projects OUT=/tmp/out
image-smoke: images
	@test -n "$(SESSIONS)" -a -n "$(OUT)" || { echo "usage: make image-smoke SESSIONS=DIR OUT=DIR" >&2; exit 2; }
	$(BIN)/python -m sessionpipe_kubetest image-smoke "$(SESSIONS)" "$(OUT)"

# Headless Chromium (Debian's package, installed when missing) for the dashboard's browser test.
browser:
	scripts/install-missing.sh chromium=chromium

# Prometheus (Debian's package, installed when missing): the monitoring test runs the chart's PromQL
# against a real one.
prometheus:
	scripts/install-missing.sh prometheus=prometheus

ccusage: $(STAMP)
	$(BIN)/python -m tests.ccusage

# Style, and the import rules between the packages ([tool.importlinter] in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The fast tier: no cluster, no helm, no npm, no image replays (docs/testing.md, "Tiers").
unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit kubetest/tests

# Set up everything (the venv, the control plane built from Go modules, ccusage from npm, the images
# built with buildah, Chromium and Prometheus from apt) and run every test, control-plane tests included.
test: $(STAMP) controlplane ccusage images browser prometheus lint typecheck
	$(BIN)/python -m pytest

cluster-up: controlplane
	$(BIN)/python -m sessionpipe_kubetest up

cluster-down:
	$(BIN)/python -m sessionpipe_kubetest down

# The whole flow on the local control plane: up (if not running), the images, a generated demo corpus
# and a database folder as PersistentVolumes (.cluster/demo), the chart, a usage run now, then what to
# type next. Re-running reuses all of it and runs usage once more.
demo-cluster: controlplane images
	$(BIN)/python -m sessionpipe_kubetest demo

clean:
	rm -rf $(VENV) .cluster .pytest_cache .mypy_cache .ruff_cache
