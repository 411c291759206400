"""The GPU path, measured: one prepared check of Jasper's size on one GPU (docs/gpu.md).

    python benchmarks/gpu_check.py OUT_DIR                 # on a CUDA GPU: bf16, DeepSpeed ZeRO-2, <= 8 minutes
    python benchmarks/gpu_check.py OUT_DIR --cpu-smoke     # the same phases on a tiny Qwen2, fp32, CPU, ~1 minute

Phases, each with its own time budget; every result is appended to OUT_DIR/records.jsonl as it is measured and
OUT_DIR/gpu_check.json + gpu_check.md are rewritten after each, so a run stopped anywhere still leaves a table:

1. ``peak``: a bf16 matrix product's rate on this GPU (the MFU denominator; fp32 on the CPU smoke).
2. ``data``: synthetic texts (longer than max length) and 4096 + 8192 = 12288-d synthetic teacher vectors written
   in the TeacherCache format by ``TeacherCache.build`` (two teachers, like NV-Embed-v2 + stella).
3. ``steps``: stage-2 and stage-3 steps of ``model=qwen2_1_5b_random`` at max length 512, ``trainer=deepspeed_zero2``
   on 1 GPU, with and without gradient checkpointing: the batch grows 4x until one does not fit, then the midpoint
   (or until the phase's time is up); per batch the step time, tokens/s, peak GPU memory and MFU. Each of the four
   searches runs in its own process.
4. ``checkpoint``: a short stage-3 run (the 1.5B shape cut to 2 layers, to keep the files small) writes a
   DeepSpeed checkpoint, a second run resumes from it with ``ckpt_path=last`` (found as train.py finds it; global
   step, weights and the loss on a fixed batch continue),
   ``export.py`` exports it, sentence-transformers reloads the folder and its vectors are compared with the trained
   module's and with the consolidated fp32 weights'.
5. ``resim``: the relative-similarity loss at B = 1024, 4096, 16384 (time, memory, forward + backward), and
   exactness against the O(B^4) reference at a small B.
6. ``loader``: the teacher-cache read rate and the whole loader's (read + tokenise + collate) texts/s, against the
   GPU's texts/s at the largest stage-3 batch: is the loader ever the bottleneck?
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runs from a checkout where jasper is not installed (the GPU machine)
    sys.path.insert(0, str(REPO))

TEACHER_DIMS = (4096, 8192)  # NV-Embed-v2 + stella_en_1.5B_v5's 8192-d head: 12288
RECORDS = "records.jsonl"

# What differs between the GPU check and its CPU smoke; everything else is the same code.
GPU = {
    "max_length": 512,
    "texts": 4096 + 16,  # stage 2 (25 frozen layers keep no activations) may fit batches in the thousands
    "words": 640,  # > 512 tokens: every text is cut to max length
    "trainer": ["trainer=deepspeed_zero2", "trainer.devices=1"],
    "model": [],
    "checkpoint_model": ["model.num_layers=2", "model.encoder_config.vocab_size=30522"],  # small files
    "first_batch": {False: 8, True: 32},
    "max_batch": 4096,
    "timed_steps": 1,  # after one warm-up step; big batches take seconds a step, and the search has a minute
    "resim_sizes": [1024, 4096, 16384],
    "resim_reference": 48,
    "budgets": {"peak": 10, "data": 30, "steps": 62, "checkpoint": 120, "resim": 25, "loader": 12},
    "total": 450,  # seconds, imports and child processes included: with the wheels' install, within 8 minutes
}
SMOKE = {
    "max_length": 64,
    "texts": 160,
    "words": 80,
    "trainer": ["trainer=cpu"],
    "model": [
        "model.encoder_config.vocab_size=30522",
        "model.encoder_config.hidden_size=32",
        "model.encoder_config.intermediate_size=64",
        "model.encoder_config.num_hidden_layers=4",
        "model.encoder_config.num_attention_heads=4",
        "model.encoder_config.num_key_value_heads=2",
        "model.mrl_dims=[32,16]",
    ],
    "checkpoint_model": [],
    "first_batch": {False: 4, True: 4},
    "max_batch": 8,
    "timed_steps": 1,
    "resim_sizes": [64, 128, 256],
    "resim_reference": 24,
    "budgets": {"peak": 1, "data": 15, "steps": 5, "checkpoint": 40, "resim": 10, "loader": 1},
    "total": 120,
}


# Records and the table.
def record(out: Path, phase: str, **fields) -> dict:
    """Append one measurement to records.jsonl and rewrite the JSON and markdown summaries."""
    row = {"phase": phase, "time": time.strftime("%H:%M:%S"), **fields}
    with open(out / RECORDS, "a") as file:
        file.write(json.dumps(row) + "\n")
    render(out)
    return row


def read_records(out: Path) -> list[dict]:
    path = out / RECORDS
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return " ".join(str(value).split()).replace("|", "/")


def render(out: Path) -> None:
    """gpu_check.json (every record, grouped by phase) and gpu_check.md (one table per phase)."""
    rows = read_records(out)
    phases: dict[str, list[dict]] = {}
    for row in rows:
        phases.setdefault(row["phase"], []).append(row)
    (out / "gpu_check.json").write_text(json.dumps(phases, indent=1) + "\n")
    lines = ["# GPU check", ""]
    env = (phases.get("env") or [{}])[0]
    if env:
        lines += [
            f"Device: {env.get('device')}; torch {env.get('torch')}, lightning {env.get('lightning')}, "
            f"transformers {env.get('transformers')}, deepspeed {env.get('deepspeed')}; mode: {env.get('mode')}.",
            "",
        ]
    columns = {
        "peak": ["dtype", "size", "tflops"],
        "data": ["texts", "teacher_dim", "write_s", "cache_mb"],
        "steps": [
            "stage",
            "checkpointing",
            "batch",
            "fits",
            "step_s",
            "wall_step_s",
            "tokens_per_s",
            "peak_mem_gib",
            "mfu",
            "mfu_6pt",
            "note",
        ],
        "largest": ["stage", "checkpointing", "largest_batch", "first_failing", "stopped_by", "message"],
        "checkpoint": ["check", "value", "ok"],
        "resim": ["batch", "forward_backward_s", "peak_mem_gib", "max_rel_error_vs_reference", "note"],
        "loader": [
            "what",
            "batch",
            "per_s",
            "gpu_steps_per_s",
            "texts_per_s",
            "gpu_texts_per_s",
            "bottleneck",
        ],
        "error": ["where", "error"],
        "total": ["seconds", "errors", "failed_checks"],
    }
    for phase, names in columns.items():
        if phase not in phases:
            continue
        lines += [f"## {phase}", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        lines += ["| " + " | ".join(_fmt(r.get(n)) for n in names) + " |" for r in phases[phase]]
        lines.append("")
    (out / "gpu_check.md").write_text("\n".join(lines))


# Pieces of the run, built from the repo's own configs.
class SyntheticTeacher:
    """A teacher whose vector of a text is a fixed pseudo-random unit vector (seeded by the text): the cache and
    the loader see exactly what a real teacher's cache gives them, without a 7B model."""

    def __init__(self, name: str, dim: int) -> None:
        self.name = name
        self.dim = dim
        self.prompt = ""
        self.pooling = "synthetic"

    def encode(self, texts, batch_size: int = 32):
        import numpy as np
        import torch
        import torch.nn.functional as F

        rows = []
        for text in texts:
            seed = int.from_bytes(
                hashlib.blake2b(f"{self.name}|{text}".encode(), digest_size=8).digest(), "little"
            )
            rows.append(np.random.default_rng(seed).standard_normal(self.dim, dtype=np.float32))
        return F.normalize(torch.from_numpy(np.stack(rows)), dim=-1)


def synthetic_texts(count: int, words: int, tokenizer_path: str, seed: int = 0) -> list[str]:
    """``count`` distinct texts of ``words`` whole-word tokens drawn from the tokenizer's own vocabulary."""
    import random

    vocab = [
        w for w in (Path(tokenizer_path) / "vocab.txt").read_text().split("\n") if w.isalpha() and w.islower()
    ]
    rng = random.Random(seed)
    return [f"text {i}: " + " ".join(rng.choices(vocab, k=words)) for i in range(count)]


def compose(settings: dict, tokenizer: str, work: Path, run: str, overrides: list[str]):
    """train.yaml with the check's settings; the run writes to ``work/run``, every run reads ``work/cache``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import jasper.training.resolvers  # noqa: F401  (resolvers)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(
            "train",
            overrides=[
                "model=qwen2_1_5b_random",
                f"model.tokenizer={tokenizer}",
                f"model.max_length={settings['max_length']}",
                *settings["model"],
                *settings["trainer"],
                f"paths.output_dir={work / run}",
                f"paths.cache_dir={work / 'cache'}",
                "data.val_texts=16",
                "data.max_texts=null",
                "data.length_buckets=false",
                "data.augment.chunk_share=0",
                "data.augment.shuffle_share=0",
                *overrides,
            ],
        )


def build_run(cfg, texts: list[str], cuda: bool):
    """Student, stage module and data module as jasper.training.run.build makes them, with synthetic teachers."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from jasper.models.ensemble import TeacherEnsemble
    from jasper.training.preflight import check_accelerator

    check_accelerator(cfg)
    torch.manual_seed(cfg.seed)
    teachers = TeacherEnsemble([SyntheticTeacher(f"synthetic-{d}", d) for d in TEACHER_DIMS], batch_size=256)
    # On the GPU the random 1.5B weights are drawn there directly (seconds, not a minute of CPU).
    with torch.device("cuda") if cuda else contextlib.nullcontext():
        student = instantiate(cfg.model, fc1_dim=teachers.dim)
    datamodule = text_datamodule(cfg, texts, teachers, student.tokenize)
    module = instantiate(cfg.stage_settings.module, student=student, loss=instantiate(cfg.loss))
    model = OmegaConf.to_container(cfg.model, resolve=True)
    module.save_hyperparameters({"config": {"model": model, "stage": cfg.stage}}, logger=False)
    return student, module, datamodule


def text_datamodule(cfg, texts: list[str], teachers, tokenize):
    """``data=`` as configured, reading ``texts`` instead of its source."""
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from jasper.training.preflight import stage_settings

    data = cfg.data.copy()
    with open_dict(data):
        data.pop("source")
    batch_size = stage_settings(cfg).batch_size  # as jasper.training.assembly.assemble gives it
    return instantiate(data, _partial_=True, teachers=teachers, tokenize=tokenize, batch_size=batch_size)(
        source=texts
    )


def make_trainer(cfg, callbacks: list, **overrides):
    from hydra.utils import instantiate

    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        **overrides,
    )


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def step_timer(cuda: bool):
    import lightning as L

    class StepTimer(L.Callback):
        """Per step: compute time (batch on the device -> optimiser step done), wall time between steps (data
        loading included), tokens, loss."""

        def __init__(self) -> None:
            self.compute, self.wall, self.tokens, self.losses = [], [], [], []
            self.start_step = None
            self._start = self._last = None

        def on_train_start(self, trainer, module) -> None:
            self.start_step = trainer.global_step

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            _sync(cuda)
            self._start = time.perf_counter()
            self.tokens.append(int(batch["attention_mask"].sum()))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            _sync(cuda)
            end = time.perf_counter()
            self.compute.append(end - self._start)
            if self._last is not None:
                self.wall.append(end - self._last)
            self._last = end
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss))

    return StepTimer()


def is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_memory(cuda: bool) -> None:
    """The last trial's GPU memory back to the allocator before the next (the CPU smoke skips it: a second)."""
    if cuda:
        import torch

        gc.collect()
        torch.cuda.empty_cache()


def model_flops(student, stage: int, tokens: int) -> tuple[float, float]:
    """(model FLOPs of one step, 6 x parameters x tokens). Parameters exclude the embedding table (a lookup).
    Stage 3 trains everything: 6PT. Stage 2's backward runs only through the trained top layers and FC1:
    2PT forward + 4 P_trained T."""
    embedding = student.encoder.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in student.parameters()) - embedding
    trained = sum(p.numel() for p in student.parameters() if p.requires_grad)
    if stage == 3:
        trained -= embedding
    flops = 6 * params * tokens if stage == 3 else 2 * params * tokens + 4 * trained * tokens
    return float(flops), float(6 * params * tokens)


# Phases.
def phase_env(out: Path, cuda: bool, smoke: bool) -> None:
    from importlib.metadata import PackageNotFoundError, version

    import lightning
    import torch
    import transformers

    try:  # the version only: importing DeepSpeed takes seconds, and the CPU smoke does not use it
        ds = version("deepspeed")
    except PackageNotFoundError:
        ds = "not installed"
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)"
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None
    record(
        out,
        "env",
        device=device,
        memory_gib=memory,
        torch=torch.__version__,
        lightning=lightning.__version__,
        transformers=transformers.__version__,
        deepspeed=ds,
        python=sys.version.split()[0],
        mode="cpu-smoke" if smoke else "gpu",
    )


def phase_peak(out: Path, cuda: bool, budget: float) -> float:
    """Matrix-product rate (TFLOP/s) of this device: bf16 8192^3 on the GPU, fp32 512^3 on the CPU smoke."""
    import torch

    size, dtype = (8192, torch.bfloat16) if cuda else (512, torch.float32)
    device = "cuda" if cuda else "cpu"
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(10):  # clocks up, kernels chosen
        a @ b
    _sync(cuda)
    repeats, start = 0, time.perf_counter()
    while repeats < 50 and time.perf_counter() - start < budget / 2:
        a @ b
        repeats += 1
        if repeats % 5 == 0:
            _sync(cuda)
    _sync(cuda)
    seconds = time.perf_counter() - start
    tflops = 2 * size**3 * repeats / seconds / 1e12
    record(out, "peak", dtype=str(dtype).removeprefix("torch."), size=size, tflops=tflops, repeats=repeats)
    del a, b
    free_memory(cuda)  # the step searches run in other processes: leave them the memory
    return tflops


def phase_data(out: Path, work: Path, settings: dict, tokenizer: str) -> list[str]:
    from jasper.storage.cache import TeacherCache

    texts = synthetic_texts(settings["texts"], settings["words"], tokenizer)
    (work / "texts.json").write_text(json.dumps(texts))
    start = time.perf_counter()
    # The data module caches train + held-out texts in its own order; writing them here by the public API first
    # and letting the module find the finished cache is the same files as a precompute.py run.
    from jasper.data.datamodule import split_held_out

    train, held_out = split_held_out(texts, 16)
    cache = TeacherCache.for_texts(work / "cache", train + held_out)
    teachers = [SyntheticTeacher(f"synthetic-{d}", d) for d in TEACHER_DIMS]
    cache.build(train + held_out, teachers, batch_size=256, show_progress=False)
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in cache.root.rglob("*") if f.is_file()) / 2**20
    problems = cache.verify()
    record(
        out,
        "data",
        texts=len(texts),
        teacher_dim=sum(TEACHER_DIMS),
        write_s=seconds,
        cache_mb=size,
        verified=not problems,
        cache=str(cache.root),
    )
    if problems:
        raise RuntimeError(f"the synthetic teacher cache does not verify: {problems[:3]}")
    return texts


def phase_steps(
    out: Path,
    work: Path,
    settings: dict,
    tokenizer: str,
    cuda: bool,
    stage: int,
    checkpointing: bool,
    deadline: float,
    peak: float,
) -> None:
    """Double the batch until it does not fit (or the time to ``deadline``, a ``time.time()``, is spent); time each
    batch that fits."""
    import torch

    texts = json.loads((work / "texts.json").read_text())
    cap = min(settings["max_batch"], len(texts) - 16)
    batch, largest, failing, stopped = settings["first_batch"][checkpointing], None, None, "max_batch"
    steps = 1 + settings["timed_steps"]  # the first step warms up (allocations, kernels) and is not timed
    last_trial, growth = 0.0, GROWTH
    while batch is not None:
        # The first trial always runs; a later one only if it can end in time (its steps grow with the batch).
        if last_trial and deadline - time.time() < last_trial * (1 + growth) / 2:
            stopped = "time budget"
            break
        trial = time.perf_counter()
        cfg = compose(
            settings,
            tokenizer,
            work,
            f"steps{stage}",
            [
                f"stage={stage}",
                f"model.gradient_checkpointing={checkpointing}",
                f"stages.stage{stage}.batch_size={batch}",
                f"stages.stage{stage}.steps={steps}",
            ],
        )
        timer = step_timer(cuda)
        fits, note = True, ""
        student = module = datamodule = trainer = None
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            student, module, datamodule = build_run(cfg, texts, cuda)
            trainer = make_trainer(cfg, [timer], max_steps=steps, enable_checkpointing=False)
            trainer.fit(module, datamodule=datamodule)
        except Exception as error:  # noqa: BLE001  (an OOM is the expected end of the search)
            if not is_oom(error):
                raise
            fits, note = False, "out of memory"
        timed = timer.compute[1:]
        row = {"stage": stage, "checkpointing": checkpointing, "batch": batch, "fits": fits, "note": note}
        if fits and timed:
            step_s = sum(timed) / len(timed)
            tokens = sum(timer.tokens[1:]) / len(timed)
            flops, flops_6pt = model_flops(student, stage, tokens)
            row.update(
                step_s=step_s,
                wall_step_s=sum(timer.wall) / len(timer.wall) if timer.wall else None,
                tokens_per_s=tokens / step_s,
                texts_per_s=batch / step_s,
                peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                mfu=flops / step_s / (peak * 1e12),
                mfu_6pt=flops_6pt / step_s / (peak * 1e12),
                losses=timer.losses,
            )
        record(out, "steps", **row)
        del student, module, datamodule, trainer, timer
        free_memory(cuda)
        last_trial = time.perf_counter() - trial
        if fits:
            largest = batch
        else:
            failing, stopped = batch, "out of memory"
        batch, growth = next_batch(largest, failing, cap)
    message = oom_advice(stage, checkpointing, largest, failing)
    record(
        out,
        "largest",
        stage=stage,
        checkpointing=checkpointing,
        largest_batch=largest,
        first_failing=failing,
        stopped_by=stopped,
        message=message,
    )


GROWTH = 4  # the batch grows 4x until one does not fit, then the midpoint (2x the largest that fit) is tried


def next_batch(largest: int | None, failing: int | None, cap: int) -> tuple[int | None, int]:
    """The next batch of the search and how much larger it is than the last that fit; ``None`` when done.

    Fourfold while everything fits (few trials to reach the limit), then once the midpoint between the largest
    that fit and the smallest that did not, so the answer is within a factor of 2.
    """
    if failing is None:
        if largest is None or largest >= cap:
            return None, 1
        return min(largest * GROWTH, cap), GROWTH
    if largest is not None and largest * 2 < failing:
        return largest * 2, 2
    return None, 1


def oom_advice(stage: int, checkpointing: bool, largest: int | None, failing: int | None) -> str:
    """What a run whose batch does not fit should change (printed by the check, repeated in docs/gpu.md)."""
    if failing is None:
        return ""
    fix = [f"stages.stage{stage}.batch_size={largest}" if largest else f"a batch below {failing}"]
    if not checkpointing:
        fix.append("model.gradient_checkpointing=true")
    return f"batch {failing} does not fit; largest found: {largest}. Use " + " or ".join(fix)


def probe_loss(module, batch: dict) -> float:
    import torch

    with torch.no_grad():
        device = module.student.fc1.weight.device
        moved = {k: v.to(device) for k, v in batch.items()}
        return float(module.losses(module(moved), moved["teacher"].float())["total"])


def weights_digest(student) -> str:
    import torch

    digest = hashlib.blake2b(digest_size=8)
    for key, tensor in sorted(student.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def phase_checkpoint(out: Path, work: Path, settings: dict, tokenizer: str, cuda: bool) -> None:
    """Write a (DeepSpeed) checkpoint, resume from it with ``ckpt_path=last`` (resolved as train.py resolves it),
    export it with export.py, reload in sentence-transformers."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from jasper.training.preflight import validate

    texts = json.loads((work / "texts.json").read_text())
    folder = work / "checkpoint"
    k, batch = 3, 8
    overrides = [
        "stage=3",
        *settings["checkpoint_model"],
        f"stages.stage3.batch_size={batch}",
        f"stages.stage3.checkpoint_every={k}",
        "+callbacks.checkpoint.save_top_k=0",  # last.ckpt only: one DeepSpeed directory written per save
    ]
    probe: dict = {}

    class Probe(L.Callback):
        """The loss of one fixed batch (no update) when a run starts and when it ends, and the weights' digest."""

        def __init__(self) -> None:
            self.seen: dict[str, tuple[float, str, int]] = {}

        def _measure(self, name, trainer, module) -> None:
            self.seen[name] = (probe_loss(module, probe), weights_digest(module.student), trainer.global_step)

        def on_train_start(self, trainer, module) -> None:
            self._measure("start", trainer, module)

        def on_train_end(self, trainer, module) -> None:
            self._measure("end", trainer, module)

    runs = {}
    resolved = None
    for name, steps, resume in [("first", k, "null"), ("resumed", 2 * k, "last")]:
        cfg = compose(
            settings,
            tokenizer,
            work,
            "checkpoint",
            [*overrides, f"stages.stage3.steps={2 * k}", f"ckpt_path={resume}"],
        )
        # As train.py resolves it: ckpt_path=last -> the newest checkpoint (on the GPU a DeepSpeed directory).
        resolved = validate(cfg)
        student, module, datamodule = build_run(cfg, texts, cuda)
        if not probe:
            datamodule.setup("fit")
            probe.update(next(iter(datamodule.val_dataloader())))
        callbacks = [instantiate(cfg.callbacks.checkpoint), Probe(), step_timer(cuda)]
        trainer = make_trainer(cfg, callbacks, max_steps=steps)
        last = Path(cfg.callbacks.checkpoint.dirpath) / "last.ckpt"
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=resolved)
        runs[name] = {
            "probe": callbacks[1].seen,
            "losses": callbacks[2].losses,
            "seconds": time.perf_counter() - start,
            "step": trainer.global_step,
        }
        if name == "resumed":
            trained = module
        else:
            del student, module, datamodule, trainer
            free_memory(cuda)
    first, resumed = runs["first"], runs["resumed"]
    size = (
        sum(f.stat().st_size for f in last.rglob("*") if f.is_file())
        if last.is_dir()
        else last.stat().st_size
    )
    record(
        out,
        "checkpoint",
        check="checkpoint written (MB)",
        value=round(size / 2**20, 1),
        ok=last.exists(),
        path=str(last),
        deepspeed=last.is_dir(),
    )
    record(
        out,
        "checkpoint",
        check="ckpt_path=last finds it",
        value=Path(resolved).name if resolved else None,
        ok=resolved == str(last),
    )
    record(
        out,
        "checkpoint",
        check="resume starts at the saved global step",
        value=f"{resumed['probe']['start'][2]} (saved {first['step']})",
        ok=resumed["probe"]["start"][2] == first["step"] == k,
    )
    record(
        out,
        "checkpoint",
        check="resumed weights equal the saved ones",
        value=resumed["probe"]["start"][1] == first["probe"]["end"][1],
        ok=resumed["probe"]["start"][1] == first["probe"]["end"][1],
    )
    loss_end, loss_resume = first["probe"]["end"][0], resumed["probe"]["start"][0]
    record(
        out,
        "checkpoint",
        check="fixed-batch loss: at save -> at resume",
        value=f"{loss_end:.6g} -> {loss_resume:.6g}",
        ok=math.isclose(loss_end, loss_resume, rel_tol=1e-3),
        first_run_start=first["probe"]["start"][0],
    )
    record(
        out,
        "checkpoint",
        check="global step after the resumed run",
        value=resumed["step"],
        ok=resumed["step"] == 2 * k,
        losses_first=first["losses"],
        losses_resumed=resumed["losses"],
    )

    # export.py, the real entry point, from the checkpoint (a DeepSpeed directory on the GPU). The CPU smoke calls
    # the one function export.py calls, in this process: a second Python start would cost half its minute.
    from sentence_transformers import SentenceTransformer

    from jasper.exporting import export_checkpoint
    from jasper.storage.checkpoints import EXPORT_FILE, load_student

    export_dir = folder / "export"
    start = time.perf_counter()
    if cuda:
        env = {
            **os.environ,
            "HYDRA_EXPORT_LOG_DIR": str(folder / "export_logs"),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        command = [sys.executable, str(REPO / "export.py"), f"ckpt={last}", f"out={export_dir}"]
        run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        stderr = run.stderr[-2000:] if run.returncode else ""
        seconds = round(time.perf_counter() - start, 1)
        record(
            out,
            "checkpoint",
            check="export.py from the checkpoint (s)",
            value=seconds,
            ok=not run.returncode,
            stderr=stderr,
        )
        if run.returncode:
            raise RuntimeError(f"export.py failed: {stderr}")
    else:
        export_checkpoint(last, export_dir)
        seconds = round(time.perf_counter() - start, 1)
        record(
            out,
            "checkpoint",
            check="export_checkpoint (what export.py runs) from the checkpoint (s)",
            value=seconds,
            ok=True,
        )

    sample = texts[:8]
    device = "cuda" if cuda else "cpu"
    load_kwargs = json.loads((export_dir / EXPORT_FILE).read_text()).get("load_kwargs", {})
    exported = SentenceTransformer(str(export_dir), device=device, **load_kwargs)
    heads = trained.student.head_names
    vectors = {
        h: exported.encode(
            sample, normalize_embeddings=True, convert_to_tensor=True, **({} if h == "fc1" else {"task": h})
        )
        .float()
        .cpu()
        for h in heads
    }
    consolidated, _ = load_student(last)
    consolidated.to(device)
    worst_fp32 = max(float((consolidated.encode(sample, head=h) - vectors[h]).abs().max()) for h in heads)
    record(
        out,
        "checkpoint",
        check="sentence-transformers vs consolidated checkpoint (fp32), max |diff|",
        value=worst_fp32,
        ok=worst_fp32 < 1e-4,
    )
    trained.student.to(device)  # Lightning moves the module to the CPU when fit ends
    trained_vectors = {h: trained.student.encode(sample, head=h) for h in heads}
    if (
        cuda
    ):  # the trained module computes in bf16 with bf16 copies of the fp32 master weights: same in the export
        exported.to(torch.bfloat16)
        vectors = {
            h: exported.encode(
                sample,
                normalize_embeddings=True,
                convert_to_tensor=True,
                **({} if h == "fc1" else {"task": h}),
            )
            .float()
            .cpu()
            for h in heads
        }
    worst = max(float((trained_vectors[h] - vectors[h]).abs().max()) for h in heads)
    cosine = min(float((trained_vectors[h] * vectors[h]).sum(-1).min()) for h in heads)
    record(
        out,
        "checkpoint",
        check="sentence-transformers vs the trained module, max |diff| (min cosine)",
        value=f"{worst:.3g} ({cosine:.6f})",
        ok=worst < 1e-4 or (cuda and cosine > 0.999),
        heads=heads,
    )


def phase_resim(out: Path, settings: dict, cuda: bool, budget: float) -> None:
    import torch
    import torch.nn.functional as F

    from jasper.core.resim import relative_similarity_loss, relative_similarity_loss_reference

    device = "cuda" if cuda else "cpu"
    generator = torch.Generator().manual_seed(0)
    b = settings["resim_reference"]
    s = F.normalize(torch.randn(b, 64, generator=generator), dim=-1).to(device).requires_grad_(True)
    t = F.normalize(torch.randn(b, 96, generator=generator), dim=-1).to(device)
    fast = relative_similarity_loss(s, t)
    (grad_fast,) = torch.autograd.grad(fast, s)
    reference = relative_similarity_loss_reference(s.double(), t.double())
    (grad_ref,) = torch.autograd.grad(reference, s)
    error = max(
        abs(float(fast) - float(reference)) / max(abs(float(reference)), 1e-12),
        float((grad_fast - grad_ref).abs().max() / grad_ref.abs().max().clamp(min=1e-12)),
    )
    record(
        out,
        "resim",
        batch=b,
        max_rel_error_vs_reference=error,
        note="exactness: value and gradient vs the O(B^4) reference (float64)",
        ok=error < 1e-4,
    )
    started = time.perf_counter()
    for batch in settings["resim_sizes"]:
        if time.perf_counter() - started > budget:
            record(out, "resim", batch=batch, note="skipped: time budget")
            continue
        try:
            s = F.normalize(torch.randn(batch, 1024, device=device), dim=-1).requires_grad_(True)
            t = F.normalize(torch.randn(batch, sum(TEACHER_DIMS), device=device), dim=-1)
            relative_similarity_loss(s[:64], t[:64]).backward()  # warm up the kernels
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            _sync(cuda)
            start = time.perf_counter()
            relative_similarity_loss(s, t).backward()
            _sync(cuda)
            seconds = time.perf_counter() - start
            memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            record(
                out,
                "resim",
                batch=batch,
                forward_backward_s=seconds,
                peak_mem_gib=memory,
                pairs=batch * (batch - 1) // 2,
            )
        except Exception as error:  # noqa: BLE001
            if not is_oom(error):
                raise
            record(out, "resim", batch=batch, note="out of memory")
        free_memory(cuda)


def phase_loader(out: Path, work: Path, settings: dict, tokenizer: str, budget: float) -> None:
    """Cache rows/s alone, and the real train loader's texts/s (read + tokenise + collate, the configured workers),
    against the GPU's texts/s at the largest stage-3 batch measured."""
    import numpy as np
    from transformers import AutoTokenizer

    from jasper.models.ensemble import TeacherEnsemble
    from jasper.storage.cache import TeacherCache

    texts = json.loads((work / "texts.json").read_text())
    fits = [
        r for r in read_records(out) if r["phase"] == "steps" and r.get("stage") == 3 and r.get("texts_per_s")
    ]
    best = max(fits, key=lambda r: r["batch"]) if fits else None
    batch = best["batch"] if best else 64
    batch = min(batch, len(texts) - 16)
    gpu_rate = best["texts_per_s"] if best else None
    data = json.loads((out / "gpu_check.json").read_text()).get("data", [{}])[0]
    teachers = [SyntheticTeacher(f"synthetic-{d}", d) for d in TEACHER_DIMS]
    reader = TeacherCache(data["cache"]).reader(teachers)
    rng = np.random.default_rng(0)
    start, rows = time.perf_counter(), 0
    while time.perf_counter() - start < budget / 2:
        reader[np.sort(rng.choice(len(reader), size=batch, replace=False))]
        rows += batch
    rate = rows / (time.perf_counter() - start)
    record(
        out,
        "loader",
        what="teacher cache read (12288-d rows)",
        batch=batch,
        per_s=rate / batch,
        texts_per_s=rate,
        gpu_texts_per_s=gpu_rate,
        gpu_steps_per_s=gpu_rate / batch if gpu_rate else None,
        bottleneck=bool(gpu_rate and rate < gpu_rate),
    )
    cfg = compose(settings, tokenizer, work, "loader", ["stage=3", f"stages.stage3.batch_size={batch}"])
    tokenizer_model = AutoTokenizer.from_pretrained(tokenizer)

    def tokenize(batch_texts):  # Student.tokenize without a student (no prompt)
        return tokenizer_model(
            list(batch_texts),
            padding=True,
            truncation=True,
            max_length=settings["max_length"],
            return_tensors="pt",
        )

    ensemble = TeacherEnsemble(teachers, batch_size=256)
    datamodule = text_datamodule(cfg, texts, ensemble, tokenize)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    start, count = time.perf_counter(), 0
    for _ in range(3):
        for _batch in loader:
            count += 1
            if time.perf_counter() - start > budget / 2:
                break
        if time.perf_counter() - start > budget / 2:
            break
    per_s = count / (time.perf_counter() - start)
    record(
        out,
        "loader",
        what=f"train loader, num_workers={cfg.data.num_workers}",
        batch=batch,
        per_s=per_s,
        texts_per_s=per_s * batch,
        gpu_texts_per_s=gpu_rate,
        gpu_steps_per_s=gpu_rate / batch if gpu_rate else None,
        bottleneck=bool(gpu_rate and per_s * batch < gpu_rate),
    )


# Orchestration.
def run_phase(out: Path, name: str, function, *args) -> bool:
    """Run one phase in this process; an error is recorded (not raised) so later phases still run."""
    start = time.perf_counter()
    try:
        function(*args)
        return True
    except Exception as error:  # noqa: BLE001  (recorded in the table; the check goes on)
        record(
            out,
            "error",
            where=name,
            error=f"{type(error).__name__}: {str(error)[:500]}",
            seconds=time.perf_counter() - start,
        )
        print(f"[gpu_check] phase {name} failed: {error!r}", file=sys.stderr)
        return False


def run_child(out: Path, args: argparse.Namespace, deadline: float, extra: list[str]) -> None:
    """A phase in its own process (a fresh CUDA context, no memory left over from the last phase), killed 30 s
    after its deadline if it has not stopped by itself."""
    command = [
        sys.executable,
        __file__,
        str(out),
        "--tokenizer",
        args.tokenizer,
        "--deadline",
        str(deadline),
        "--work",
        str(args.work or out / "work"),
        *extra,
    ]
    if args.cpu_smoke:
        command.append("--cpu-smoke")
    where = " ".join(extra)
    try:
        run = subprocess.run(command, timeout=max(deadline - time.time(), 1) + 30)
        if run.returncode:
            record(
                out, "error", where=where, error=f"exit status {run.returncode} (its traceback is in the log)"
            )
    except subprocess.TimeoutExpired:
        record(out, "error", where=where, error="killed: past its time budget")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="folder for records.jsonl, gpu_check.json, gpu_check.md")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny random Qwen2, fp32, CPU, no DeepSpeed")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the packaged MiniLM's)")
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="step searches and the checkpoint phase each in their own process (default: on the GPU only)",
    )
    parser.add_argument(
        "--work", type=Path, help="folder for the texts, cache and checkpoints (default OUT/work)"
    )
    parser.add_argument("--phase", choices=["steps", "checkpoint"], help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--peak", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    import logging
    import warnings

    import torch

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    cuda = not args.cpu_smoke
    if cuda and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU is visible; --cpu-smoke runs the same phases on the CPU", file=sys.stderr
        )
        return 2
    if args.tokenizer is None:
        from jasper.models.packaged import packaged_minilm

        args.tokenizer = packaged_minilm()
    args.tokenizer = str(Path(args.tokenizer).resolve())
    settings = SMOKE if args.cpu_smoke else GPU
    budgets = settings["budgets"]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = (args.work or out / "work").resolve()  # texts, teacher cache, checkpoints: gigabytes on the GPU
    work.mkdir(parents=True, exist_ok=True)
    if args.phase == "steps":  # a child: one step search
        phase_steps(
            out,
            work,
            settings,
            args.tokenizer,
            cuda,
            args.stage,
            bool(args.checkpointing),
            args.deadline,
            args.peak,
        )
        return 0
    if args.phase == "checkpoint":
        phase_checkpoint(out, work, settings, args.tokenizer, cuda)
        return 0

    (out / RECORDS).unlink(missing_ok=True)
    end = time.time() + settings["total"]
    isolate = cuda if args.isolate is None else args.isolate
    run_phase(out, "env", phase_env, out, cuda, args.cpu_smoke)
    peak = 1.0
    try:
        peak = phase_peak(out, cuda, budgets["peak"])
    except Exception as error:  # noqa: BLE001
        record(out, "error", where="peak", error=repr(error)[:500])
    if not run_phase(out, "data", phase_data, out, work, settings, args.tokenizer):
        return 1
    later = budgets["checkpoint"] + budgets["resim"] + budgets["loader"]
    for stage in (2, 3):
        for checkpointing in (False, True):
            deadline = min(time.time() + budgets["steps"], end - later)
            if isolate:
                extra = [
                    "--phase",
                    "steps",
                    "--stage",
                    str(stage),
                    "--checkpointing",
                    str(int(checkpointing)),
                ]
                run_child(out, args, deadline, [*extra, "--peak", str(peak)])
            else:
                run_phase(
                    out,
                    f"steps {stage}/{checkpointing}",
                    phase_steps,
                    out,
                    work,
                    settings,
                    args.tokenizer,
                    cuda,
                    stage,
                    checkpointing,
                    deadline,
                    peak,
                )
    if isolate:
        run_child(
            out,
            args,
            min(time.time() + budgets["checkpoint"], end - budgets["resim"] - budgets["loader"]),
            ["--phase", "checkpoint"],
        )
    else:
        run_phase(out, "checkpoint", phase_checkpoint, out, work, settings, args.tokenizer, cuda)
    run_phase(
        out,
        "resim",
        phase_resim,
        out,
        settings,
        cuda,
        min(budgets["resim"], max(end - time.time() - budgets["loader"], 5)),
    )
    run_phase(out, "loader", phase_loader, out, work, settings, args.tokenizer, budgets["loader"])
    seconds = settings["total"] - (end - time.time())
    errors = [r for r in read_records(out) if r["phase"] == "error"]
    failed = [r for r in read_records(out) if r.get("ok") is False]
    record(out, "total", seconds=seconds, errors=len(errors), failed_checks=len(failed))
    print((out / "gpu_check.md").read_text())
    print(
        f"[gpu_check] {seconds:.0f} s, {len(errors)} error(s), {len(failed)} failed check(s): {out / 'gpu_check.md'}"
    )
    return 1 if errors or failed else 0


if __name__ == "__main__":
    sys.exit(main())
