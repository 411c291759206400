"""Shared fixtures: the packaged MiniLM, tiny random encoders built from configs, a small real text corpus."""

from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path

import pytest

# Tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEV_DATA = REPO.parent / "shared" / "data" / "dev"

# The longest tests (each half a minute or more on one of `make test`'s workers), started first and dealt to every
# worker: `--dist worksteal` gives each worker one contiguous share of this order, so each share opens with its own
# long tests. A worker that finishes its share early steals what another has not begun, and the run no longer ends
# on one long test with a core idle.
LONGEST_FIRST = (
    "tests/test_pipeline.py::test_each_stage_brings_the_student_closer_than_the_one_before",
    "tests/test_readme.py::test_every_readme_command_runs[default]",
    "tests/test_readme.py::test_every_readme_command_runs[mine]",
    "tests/test_paper_replica.py::test_jasper_paper_runs_unchanged_on_the_replicas",
    "tests/test_sweeps.py::test_local_launcher_runs_each_stage_as_its_own_process_after_the_one_before",
    "tests/test_pipeline.py::test_ddp_two_cpu_processes_gather_across_ranks",
    "tests/test_stage4.py::test_one_multirun_chains_text_stages_and_stage4_on_images",
    "tests/test_precompute.py::test_two_torchrun_processes_write_the_single_process_cache_byte_for_byte",
    "tests/test_export.py::test_export_py_refuses_a_run_and_replaces_a_folder_only_when_told",
    "tests/test_gpu_check.py::test_cpu_smoke_runs_every_phase",
    "tests/test_serving.py::test_evaluate_py_scores_precisions_asymmetric_search_and_onnx",
)


def pytest_collection_modifyitems(config, items) -> None:
    workers = getattr(config, "workerinput", {}).get("workercount", 1)  # set on xdist's workers
    rank = {nodeid: i for i, nodeid in enumerate(LONGEST_FIRST)}
    longest = sorted((item for item in items if item.nodeid in rank), key=lambda item: rank[item.nodeid])
    rest = [item for item in items if item.nodeid not in rank]  # in their own order
    ordered = []
    # Each worker's share as worksteal deals them: what is left, divided by the workers left.
    for worker in range(workers):
        heads = longest[worker::workers]
        share = (len(items) - len(ordered)) // (workers - worker)
        take = max(share - len(heads), 0)
        ordered += heads + rest[:take]
        rest = rest[take:]
    items[:] = ordered + rest


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from jasper.models.packaged import packaged_minilm

    return packaged_minilm()


def _save_tiny(model_config, folder: Path, minilm: str) -> str:
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_config.vocab_size = 30522
    torch.manual_seed(0)  # the same tiny model in every session: tests that train it are deterministic
    AutoModel.from_config(model_config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)  # a real tokenizer; the weights are random
    return str(folder)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path) -> str:
    from transformers import BertConfig

    config = BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
    return _save_tiny(config, tmp_path_factory.mktemp("tiny_bert"), minilm_path)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory, minilm_path) -> str:
    from transformers import Qwen2Config

    config = Qwen2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    return _save_tiny(config, tmp_path_factory.mktemp("tiny_qwen2"), minilm_path)


@pytest.fixture(scope="session")
def docstrings() -> list[str]:
    """A few hundred real English texts from the standard library's `email` and `logging` packages."""
    from jasper.data.datamodule import clean_rows
    from jasper.data.sources import PythonDocstrings

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, _ = clean_rows(
        [t for sub in ("email", "logging") for t in PythonDocstrings(root=str(stdlib / sub))]
    )
    return texts


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, docstrings) -> str:
    path = tmp_path_factory.mktemp("corpus") / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docstrings))
    return str(path)


@pytest.fixture(scope="session")
def teacher_replicas(tmp_path_factory) -> Path:
    """A Hugging Face cache holding everything experiment=jasper_paper reads from the hub as tiny stand-ins
    (jasper.data.replicas): the teachers under their hub ids at the commits conf/teachers/nvembed_stella.yaml pins,
    the SigLIP tower, fineweb-edu, embedding-training-data and Infinity-MM. Built once (~6 s)."""
    from jasper.data.replicas import build_paper_replicas

    cache = tmp_path_factory.mktemp("hub")
    build_paper_replicas(cache)
    return cache


@pytest.fixture
def on_teacher_replicas(teacher_replicas, monkeypatch) -> Path:
    """This test's hub is the replicas' cache (offline, as every test): huggingface_hub reads its cache folder at
    call time, transformers its remote-code folder (``replica_env``'s HF_MODULES_CACHE, never the user's) too;
    subprocesses get the same through the environment."""
    import huggingface_hub.constants
    import transformers.dynamic_module_utils

    from jasper.models.replicas import replica_env

    env = replica_env(teacher_replicas)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", env["HF_MODULES_CACHE"])
    return teacher_replicas


@pytest.fixture
def outcome(request):
    """For a test of a training outcome (marker ``outcome``): ``outcome.seed`` is the seed to train with
    (``JASPER_OUTCOME_SEED``, default 0), and ``outcome.check(name, value, margin)`` asserts ``value > margin``.
    When ``JASPER_OUTCOME_LOG`` names a file, every checked value is appended there with the CPU kernel it ran under
    and a value below its margin fails the test only at its end, so one miss still records the others.
    experiments/outcome_spread.py runs the outcome tests over seeds and ``ATEN_CPU_CAPABILITY`` settings this way;
    the margins come from its table (experiments/outcome_spread.md)."""
    if request.node.get_closest_marker("outcome") is None:
        raise pytest.UsageError(f"{request.node.name} uses the outcome fixture: mark it @pytest.mark.outcome")
    log = os.environ.get("JASPER_OUTCOME_LOG")
    misses: list[str] = []

    class Outcome:
        seed = int(os.environ.get("JASPER_OUTCOME_SEED", "0"))

        @staticmethod
        def check(name: str, value, margin: float, detail: object = "") -> None:
            value = float(value.detach()) if hasattr(value, "detach") else float(value)
            message = f"{name}: {value:+.4f}, margin {margin} {detail}"
            if not log:
                assert value > margin, message
                return
            row = {
                "test": request.node.name,
                "name": name,
                "value": value,
                "margin": margin,
                "seed": Outcome.seed,
                "kernel": os.environ.get("ATEN_CPU_CAPABILITY", "native"),
            }
            with open(log, "a", encoding="utf-8") as file:
                file.write(json.dumps(row) + "\n")
            if value <= margin:
                misses.append(message)

    yield Outcome()
    if misses:
        pytest.fail("below the margin: " + "; ".join(misses))
