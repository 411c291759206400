"""Training-loop overhead: jasper's stage-2 step under Lightning vs a bare PyTorch loop vs sentence-transformers.

    python benchmarks/train_step_bench.py                          # B = 32, 32 tokens, 20 timed steps, 3 repeats
    python benchmarks/train_step_bench.py --fixed-cost --repeats 5  # where Lightning's own time goes

Every loop trains the same student (the embedded default: the first 3 layers of the packaged all-MiniLM-L6-v2,
mean pooling, FC1 384 -> 768; stage 2 trains FC1 and the 3 layers, not the embeddings) from the same weights, on
the same batches: fixed English sentences cut to exactly ``--tokens`` tokens (no padding), with random
L2-normalised 768-d teacher vectors. Optimiser (AdamW), cosine schedule with warm-up and gradient clipping at 1.0
come from the composed stage-2 config (``conf/``), the same for every loop.

- ``bare``: plain PyTorch: forward, loss, backward, clip, AdamW step, zero_grad, scheduler step.
- ``jasper``: ``jasper.training.stages.stage2.Stage2`` fitted by the ``lightning.Trainer`` of ``conf/trainer/cpu.yaml`` with the
  run's CSV logger and ``LearningRateMonitor`` (as ``python train.py stage=2``), checkpointing off, no validation,
  fed by a ``DataLoader`` over the pre-built batches.
- ``sentence-transformers``: ``SentenceTransformerTrainer`` + ``losses.MSELoss`` on a ``datasets.Dataset`` of the
  same texts with the teacher vectors as labels (it tokenises each batch in its collator: part of its loop), the same
  trainable parameters, no saving, no evaluation, ``report_to=[]``.

Losses: ``jasper`` (conf/loss/jasper.yaml: cos + sim + resim), ``mse_only`` (conf/loss/mse_only.yaml: sim only)
and ``vector MSE`` (sentence-transformers' MSELoss: mean squared error of FC1's raw output against the teacher
vector; its bare-PyTorch twin is the reference of the sentence-transformers row).

Step time: perf_counter (wall) and process_time (this process's CPU) at the end of every step (Lightning
``on_train_batch_end``, transformers ``on_step_end``, after the scheduler step in the bare loop); the first
``--warmup`` steps are dropped and the rest averaged (a mean, not a median, so that a cost paid every
``log_every_n_steps`` counts). Loops run interleaved (A, B, C, A, B, C ...) so that load from other processes
falls on all of them; each row is the median of ``--repeats`` runs, and its ratio the median of each run's ratio to
the bare-PyTorch run of the same repeat and loss. CPU time is the steadier of the two on a shared machine.

``--fixed-cost`` measures instead the loop's own cost a step, where it is not lost in the model's: a trivial model
(an 8 x 8 linear layer) that logs what Stage 2 logs, under the same trainer, then without its progress bar, its
logger (CSV + ``LearningRateMonitor``), its four ``self.log`` calls, all three; and in a bare loop.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from sentence_transformers import (  # noqa: E402
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.sentence_transformer import losses  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import jasper.training.resolvers  # noqa: E402  (registers the config resolvers)
from jasper.models.student import FC1, Student  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
LOSSES = {"jasper": "jasper", "mse_only": "mse_only", "vector MSE": None}  # row label -> conf/loss/ choice

SENTENCES = """The committee will meet again on Thursday to discuss the budget for next year.
She walked along the river until the lights of the town appeared behind the hills.
Most of the apples in the orchard were picked before the first frost arrived.
The museum opens at nine in the morning and closes early on public holidays.
He found an old map of the city in a box of letters his grandfather had kept.
Heavy rain delayed the train, so the passengers waited in the small station cafe.
Children learn new words quickly when they hear them used in everyday conversation.
The bridge was repaired last summer after engineers found cracks in its supports.
A good night of sleep improves memory, mood and the ability to concentrate.
The recipe calls for two cups of flour, a pinch of salt and some warm water.
Farmers in the valley grow wheat, barley and potatoes on small family plots.
The library added a reading room where students can study quietly in the evening.
Scientists measured the temperature of the lake every week for ten years.
Our neighbours painted their house blue and planted roses along the fence.
The new policy allows employees to work from home two days a week.
Tourists gathered in the square to watch the musicians play under the old clock tower.""".split("\n")


def fixed_length_texts(tokenizer, count: int, tokens: int) -> list[str]:
    """``count`` different texts of exactly ``tokens`` tokens each (with [CLS] and [SEP]): the sentences above,
    rotated, word by word until the budget is full (a word that would overflow it is skipped). WordPiece never
    joins words, so a text's token count is the sum of its words'."""
    words = " ".join(SENTENCES).split()
    cost = {w: len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in set(words)}
    texts = []
    for row in range(count):
        budget, kept = tokens - 2, []
        for i in range(len(words) * (tokens // len(words) + 2)):
            word = words[(7 * row + i) % len(words)]
            if cost[word] <= budget:
                kept.append(word)
                budget -= cost[word]
            if budget == 0:
                break
        texts.append(" ".join(kept))
    lengths = {len(ids) for ids in tokenizer(texts)["input_ids"]}
    if lengths != {tokens}:
        raise RuntimeError(f"texts of {sorted(lengths)} tokens, wanted exactly {tokens}")
    return texts


def compose_stage2(loss: str, steps: int, batch: int, out: str):
    """``python train.py stage=2 loss=<loss>``'s config, sized to ``steps`` and ``batch``, writing under ``out``."""
    overrides = [
        "stage=2",
        f"loss={loss}",
        f"stages.stage2.steps={steps}",
        f"stages.stage2.batch_size={batch}",
        f"stages.stage2.val_every={steps}",  # no validation inside the run: nothing to validate on
        "stages.stage2.init_from=null",
        f"paths.output_dir={out}",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


class Batches(torch.utils.data.Dataset):
    """``length`` steps cycling over the pre-built batches (one epoch covers the whole run)."""

    def __init__(self, batches: list[dict[str, Tensor]], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.batches[index % len(self.batches)]


class LightningTimer(L.Callback):
    def __init__(self) -> None:
        self.ends: list[tuple[float, float]] = []

    def on_train_batch_end(self, *args) -> None:
        self.ends.append(clock())


class TransformersTimer(TrainerCallback):
    def __init__(self) -> None:
        self.ends: list[tuple[float, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(clock())


def clock() -> tuple[float, float]:
    """(wall, this process's CPU) seconds. CPU time counts only the work this process did, every thread of it
    (a progress bar's refresh thread too), so it moves less than wall time when other jobs share the cores."""
    return time.perf_counter(), time.process_time()


def steady_ms(ends: list[tuple[float, float]], warmup: int) -> tuple[float, float]:
    """Mean (wall, CPU) ms per step after the first ``warmup`` steps, from the step-end clocks."""
    if len(ends) <= warmup:
        raise RuntimeError(f"only {len(ends)} steps ran; need more than --warmup={warmup}")
    steps = len(ends) - warmup
    return tuple(
        1000 * (last - first) / steps for first, last in zip(ends[warmup - 1], ends[-1], strict=True)
    )


def vector_mse(student: Student, batch: dict[str, Tensor]) -> Tensor:
    """sentence-transformers' MSELoss on this student: FC1's raw (unnormalised) output vs the teacher vector."""
    pooled = student.pooled(batch["input_ids"], batch["attention_mask"])
    return F.mse_loss(student.fc1(pooled), batch["teacher"])


class Trivial(L.LightningModule):
    """A model that costs nothing, logging what Stage 2 logs (three terms and the total, the total to the progress
    bar): what is left of a step is the loop's own cost (``--fixed-cost``)."""

    def __init__(self, optimizer, scheduler, log: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.optimizer_factory, self.scheduler_factory, self.do_log = optimizer, scheduler, log

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self.linear(batch).pow(2).mean()
        if self.do_log:
            terms = {f"train/fc1/loss_{k}": loss.detach() for k in ("cos", "sim", "resim")}
            self.log_dict(terms, batch_size=len(batch))
            self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch))
        return loss

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def stage2_trainable(student: Student) -> list[nn.Parameter]:
    return list(student.fc1.parameters()) + list(student.layers.parameters())


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.total = args.warmup + args.steps
        self.out = tempfile.mkdtemp(prefix="train_step_bench_")
        torch.manual_seed(0)
        self.student = Student(
            jasper.training.resolvers.packaged_minilm(),
            fc1_dim=768,
            mrl_dims=[256, 128, 64],
            num_layers=3,
            max_length=max(128, args.tokens),
        )
        self.texts = fixed_length_texts(self.student.tokenizer, 4 * args.batch, args.tokens)
        g = torch.Generator().manual_seed(0)
        self.teacher = F.normalize(torch.randn(len(self.texts), 768, generator=g), dim=-1)
        self.batches = []
        for start in range(0, len(self.texts), args.batch):
            batch = dict(self.student.tokenize(self.texts[start : start + args.batch]))
            batch["teacher"] = self.teacher[start : start + args.batch]
            self.batches.append(batch)
        self.cfg = {
            name: compose_stage2(choice or "jasper", self.total, args.batch, f"{self.out}/{name}")
            for name, choice in LOSSES.items()
        }

    def fresh_student(self) -> Student:
        torch.manual_seed(0)  # the same dropout masks in every loop
        return copy.deepcopy(self.student)

    def bare(self, loss_name: str) -> tuple[float, float]:
        cfg = self.cfg[loss_name].stage_settings.module
        clip = self.cfg[loss_name].trainer.gradient_clip_val
        student = self.fresh_student().train()
        student.requires_grad_(False)
        params = stage2_trainable(student)
        for p in params:
            p.requires_grad_(True)
        if LOSSES[loss_name] is None:
            loss_fn = vector_mse
        else:
            distill = instantiate(self.cfg[loss_name].loss)

            def loss_fn(student, batch):
                return distill(
                    student(batch["input_ids"], batch["attention_mask"], heads=[FC1])[FC1], batch["teacher"]
                )["total"]

        optimizer = instantiate(cfg.optimizer)([{"params": params}])
        scheduler = instantiate(cfg.scheduler)(optimizer)
        ends = []
        for step in range(self.total):
            batch = self.batches[step % len(self.batches)]
            loss = loss_fn(student, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            ends.append(clock())
        return steady_ms(ends, self.args.warmup)

    def jasper(self, loss_name: str) -> tuple[float, float]:
        cfg = self.cfg[loss_name]
        module = instantiate(
            cfg.stage_settings.module, student=self.fresh_student(), loss=instantiate(cfg.loss)
        )
        timer = LightningTimer()
        trainer = self.trainer(cfg, timer, progress_bar=True, logger=True)
        loader = torch.utils.data.DataLoader(Batches(self.batches, self.total), batch_size=None)
        trainer.fit(module, train_dataloaders=loader)
        return steady_ms(timer.ends, self.args.warmup)

    def trainer(self, cfg, timer: LightningTimer, progress_bar: bool, logger: bool, **kwargs) -> L.Trainer:
        """The run's trainer (``cfg.trainer``) with its logger and ``LearningRateMonitor``, checkpointing off."""
        callbacks = [timer]
        if logger:  # the run's other per-step callback; it needs a logger
            callbacks.append(instantiate(cfg.callbacks.lr_monitor))
        return instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=instantiate(cfg.logger) if logger else False,
            enable_checkpointing=False,
            enable_progress_bar=progress_bar,
            enable_model_summary=False,
            **kwargs,
        )

    def fixed_cost(
        self, bare: bool = False, progress_bar: bool = True, logger: bool = True, self_log: bool = True
    ) -> tuple[float, float]:
        """(wall, CPU) ms a step of the trivial model, in a bare loop or under the run's trainer."""
        cfg, steps = self.cfg["jasper"], 5 * self.total
        module = cfg.stage_settings.module
        model = Trivial(instantiate(module.optimizer), instantiate(module.scheduler), log=self_log)
        data = [torch.randn(self.args.batch, 8) for _ in range(steps)]
        if not bare:
            timer = LightningTimer()
            trainer = self.trainer(cfg, timer, progress_bar, logger, max_steps=steps)
            trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
            return steady_ms(timer.ends, 2 * self.args.warmup)
        optimizers = model.configure_optimizers()
        optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
        ends = []
        for batch in data:
            model.linear(batch).pow(2).mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            ends.append(clock())
        return steady_ms(ends, 2 * self.args.warmup)

    def sentence_transformers(self, loss_name: str) -> tuple[float, float]:
        args = self.args
        source = self.fresh_student()
        transformer = Transformer(
            source.model_name_or_path, config_kwargs={"num_hidden_layers": 3}, max_seq_length=args.tokens
        )
        transformer.auto_model.load_state_dict(source.encoder.state_dict())
        dense = Dense(384, 768, activation_function=nn.Identity())
        dense.linear.load_state_dict(source.fc1.state_dict())
        model = SentenceTransformer(
            modules=[transformer, Pooling(384, pooling_mode="mean"), dense], device="cpu"
        )
        model.requires_grad_(False)  # train what stage 2 trains: the 3 layers and FC1, not the embeddings
        transformer.auto_model.encoder.layer.requires_grad_(True)
        dense.requires_grad_(True)
        rows = [i % len(self.texts) for i in range(self.total * args.batch)]
        data = datasets.Dataset.from_dict(
            {"text": [self.texts[i] for i in rows], "label": self.teacher[rows].tolist()}
        )
        module = self.cfg[loss_name].stage_settings.module
        training = SentenceTransformerTrainingArguments(
            output_dir=f"{self.out}/st",
            per_device_train_batch_size=args.batch,
            max_steps=self.total,
            learning_rate=module.optimizer.lr,
            weight_decay=module.optimizer.weight_decay,
            warmup_steps=module.scheduler.num_warmup_steps,
            lr_scheduler_type="cosine",
            max_grad_norm=self.cfg[loss_name].trainer.gradient_clip_val,
            optim="adamw_torch",
            logging_steps=self.cfg[loss_name].trainer.log_every_n_steps,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            dataloader_drop_last=True,
        )
        timer = TransformersTimer()
        trainer = SentenceTransformerTrainer(
            model=model,
            args=training,
            train_dataset=data,
            loss=losses.MSELoss(model),
            callbacks=[timer],
        )
        trainer.train()
        return steady_ms(timer.ends, args.warmup)


LOOPS = [  # (row label, Bench method, loss), in the order they interleave
    ("bare PyTorch", "bare", "jasper"),
    ("jasper (Lightning)", "jasper", "jasper"),
    ("bare PyTorch", "bare", "mse_only"),
    ("jasper (Lightning)", "jasper", "mse_only"),
    ("bare PyTorch", "bare", "vector MSE"),
    ("sentence-transformers", "sentence_transformers", "vector MSE"),
]
FIXED_COST = [  # (row label, keyword arguments of Bench.fixed_cost)
    ("bare PyTorch", {"bare": True}),
    ("Lightning, as jasper runs it", {}),
    ("  without the progress bar", {"progress_bar": False}),
    ("  without the logger (CSV, LearningRateMonitor)", {"logger": False}),
    ("  without the four self.log calls", {"self_log": False}),
    ("  without all three", {"progress_bar": False, "logger": False, "self_log": False}),
]


def fixed_cost_table(bench: Bench, repeats: int) -> None:
    times: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in FIXED_COST}
    for _ in range(repeats):
        for label, kwargs in FIXED_COST:
            times[label].append(bench.fixed_cost(**kwargs))
    bare = [statistics.median(t[i] for t in times["bare PyTorch"]) for i in (0, 1)]
    print(
        f"\nThe loop's own cost: a trivial model (8 x 8 linear), {5 * bench.total - 2 * bench.args.warmup} timed steps, median of {repeats}\n"
    )
    print("| loop | ms/step | CPU ms/step | CPU ms over bare |")
    print("|---|---:|---:|---:|")
    for label, _ in FIXED_COST:
        wall, cpu = (statistics.median(t[i] for t in times[label]) for i in (0, 1))
        print(f"| {label} | {wall:.2f} | {cpu:.2f} | {cpu - bare[1]:+.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32, help="tokens a text, [CLS] and [SEP] included")
    parser.add_argument("--steps", type=int, default=20, help="timed steps a run")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped before timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--fixed-cost",
        action="store_true",
        help="only the loop's own cost a step: a trivial model under Lightning, without its parts, and bare",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: steadier on a machine shared with other jobs)",
    )
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step's end starts the clock)")
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    datasets.disable_progress_bar()

    bench = Bench(args)
    bench.bare("jasper")  # untimed: the process's first loop pays one-time costs (allocator, kernel setup)
    if args.fixed_cost:
        bench.fixed_cost()  # untimed, as above
        fixed_cost_table(bench, args.repeats)
        return
    times: dict[tuple[str, str], list[tuple[float, float]]] = {(label, loss): [] for label, _, loss in LOOPS}
    for repeat in range(args.repeats):
        for label, method, loss in LOOPS:
            wall, cpu = getattr(bench, method)(loss)
            times[(label, loss)].append((wall, cpu))
            print(
                f"# repeat {repeat + 1}/{args.repeats}: {label} / {loss}: {wall:.1f} ms/step, CPU {cpu:.1f}",
                flush=True,
            )
    print(
        f"\nB={args.batch}, {args.tokens} tokens a text, {args.steps} timed steps after {args.warmup} warm-up, "
        f"median of {args.repeats} interleaved runs, torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print(
        "| loop | loss | steps/s | ms/step | ratio to bare PyTorch | overhead | CPU ms/step | CPU ratio | runs (ms/step) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for label, _, loss in LOOPS:
        runs, bare = times[(label, loss)], times[("bare PyTorch", loss)]
        wall, cpu = (statistics.median(t[i] for t in runs) for i in (0, 1))
        # Paired: each run against the bare run of the same repeat, which shared its load.
        ratio, cpu_ratio = (
            statistics.median(t[i] / b[i] for t, b in zip(runs, bare, strict=True)) for i in (0, 1)
        )
        print(
            f"| {label} | {loss} | {1000 / wall:.2f} | {wall:.1f} | {ratio:.3f} | {100 * (ratio - 1):+.1f}% "
            f"| {cpu:.1f} | {cpu_ratio:.3f} | {', '.join(f'{t[0]:.0f}' for t in runs)} |"
        )


if __name__ == "__main__":
    main()
