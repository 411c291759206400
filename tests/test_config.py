"""Every config group and experiment composes; the documented command lines compose and instantiate."""

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import jasper.training.resolvers  # noqa: F401  (resolvers)
from jasper.models.packaged import MPNET, packaged_model
from jasper.training.preflight import stage_settings

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["model", "teachers", "data", "loss", "trainer", "logger", "experiment", "debug", "hparams_search"]


def compose_train(overrides: list[str], tmp_path: Path | None = None):
    output = [f"paths.output_dir={tmp_path}"] if tmp_path else ["paths.output_dir=/nonexistent/stage1"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides + output)


@pytest.mark.parametrize(
    "override",
    [f"{group}={path.stem}" for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))],
)
def test_every_config_composes(override):
    cfg = compose_train([override])
    if override in ("teachers=mpnet_minilm", "experiment=jasper_analogue") and not mpnet_installed():
        with pytest.raises(Exception, match="make install-mpnet"):  # the error names the extra to install
            OmegaConf.to_container(cfg, resolve=True)
        return
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def mpnet_installed() -> bool:
    """The resolver finds all-mpnet-base-v2: reassembled earlier (kept in jasper's cache even if the packages have
    gone since) or reassembled now from the installed packages."""
    try:
        packaged_model(MPNET)
    except ImportError:
        return False
    return True


def test_mpnet_minilm_teachers_instantiate_without_loading_a_model():
    if not mpnet_installed():
        pytest.skip("the mpnet extra is not installed (make install-mpnet)")
    cfg = compose_train(["teachers=mpnet_minilm", "model.num_layers=6", "model.layers=null"])
    teachers = instantiate(cfg.teachers)
    mpnet, init = teachers.teachers
    assert teachers.dim == 768 + 384  # read from the models' config files
    assert (mpnet.name, init.name, init.num_layers, init.max_length) == (
        "all-mpnet-base-v2",
        "all-MiniLM-L6-v2[:6] (student init)",
        6,
        cfg.model.max_length,
    )
    assert init.model_name_or_path == cfg.model.model_name_or_path  # the student's own initialisation
    assert mpnet.weights is not None and not mpnet.loaded and not init.loaded


@pytest.mark.parametrize(
    ("overrides", "name", "recorded"),
    [
        ([], "all-MiniLM-L6-v2[0,1,3,5] (student init)", [0, 1, 3, 5]),  # the embedded default's
        (["model.layers=null"], "all-MiniLM-L6-v2[:4] (student init)", 4),
        (["experiment=mini_jasper"], "all-MiniLM-L6-v2[0,1,3,5] (student init)", [0, 1, 3, 5]),
        # the experiment leaves the model group's choice alone
        (["model=minilm_l3"], "all-MiniLM-L6-v2[0,2,5] (student init)", [0, 2, 5]),
        (["model.layers=[1,3,5]"], "all-MiniLM-L6-v2[1,3,5] (student init)", [1, 3, 5]),
    ],
)
def test_the_student_init_teacher_follows_the_students_layers(overrides, name, recorded):
    """With model.layers the init teacher runs those layers, and its name and cache fingerprint say so."""
    from jasper.storage.cache.format import fingerprint

    cfg = compose_train(["teachers=minilm", *overrides])
    init = instantiate(cfg.teachers).teachers[1]
    assert (init.name, init.num_layers, fingerprint(init)["num_layers"]) == (name, recorded, recorded)
    assert not init.loaded


def test_jasper_analogue_is_the_full_minilm_student_of_mpnet_and_its_init():
    if not mpnet_installed():
        pytest.skip("the mpnet extra is not installed (make install-mpnet)")
    cfg = compose_train(["experiment=jasper_analogue"])
    assert (cfg.model.num_layers, list(cfg.model.mrl_dims), cfg.data.source._target_) == (
        6,
        [384, 256, 128],
        "jasper.data.EnglishProse",
    )
    assert instantiate(cfg.teachers).dim == 1152 and cfg.stages.stage1.module.closed_form is not None


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_picks_its_own_settings(stage):
    cfg = compose_train([f"stage={stage}", "experiment=jasper_paper"])
    paper = {1: (1e-4, 4000, "Stage1"), 2: (8e-5, 7000, "Stage2"), 3: (7e-5, 2200, "Stage3")}[stage]
    settings = cfg.stage_settings
    assert (settings.module.optimizer.lr, settings.steps, settings.module._target_.split(".")[-1]) == paper
    assert cfg.trainer.max_steps == paper[1]
    assert settings.module.scheduler.num_training_steps == paper[1]


def test_paper_recipe():
    cfg = compose_train(["experiment=jasper_paper"])
    assert [t.model_name_or_path for t in cfg.teachers.teachers] == [
        "nvidia/NV-Embed-v2",
        "NovaSearch/stella_en_1.5B_v5",
    ]
    assert cfg.model.model_name_or_path == "NovaSearch/stella_en_1.5B_v5"
    assert list(cfg.model.mrl_dims) == [1024, 512, 256] and cfg.model.max_length == 512
    assert cfg.trainer.precision == "bf16-mixed"
    assert (
        cfg.trainer.strategy.config.zero_optimization.stage == 2 and cfg.trainer.strategy.config.bf16.enabled
    )
    assert (cfg.loss.cosine, cfg.loss.similarity, cfg.loss.relative_similarity, cfg.loss.margin) == (
        10,
        200,
        20,
        0.015,
    )


def test_paper_faithful_choices_are_the_papers_default_and_the_embedded_runs_pin_theirs():
    """Stage 3's reduction over heads and stage 4's pooling (docs/losses.md, docs/vision.md): the paper's configs
    take the official code's mean and the released model's 300-token parameter-free pooling; the embedded default
    (and the experiments whose results are recorded) keep the sum, the embedded tower its grid + projector."""
    paper = compose_train(["experiment=jasper_paper"])
    assert paper.stages.stage3.module.head_reduction == "mean"
    assert (paper.vision.pooling, paper.vision.num_tokens) == ("adaptive_avg", 300)
    embedded = compose_train([])
    assert embedded.stages.stage3.module.head_reduction == "sum"
    assert embedded.vision.pooling == "grid_projector"
    for experiment in ("mini_jasper", "jasper_analogue"):
        assert compose_train([f"experiment={experiment}"]).stages.stage3.module.head_reduction == "sum"


def test_stage3_with_custom_heads_composes_and_instantiates(minilm_path):
    cfg = compose_train(["stage=3", "model.mrl_dims=[512,768,1024]"])
    student = instantiate(cfg.model, fc1_dim=768)
    module = instantiate(cfg.stage_settings.module, student=student, loss=instantiate(cfg.loss))
    assert student.head_names == ["fc1", "512", "768", "1024"]
    assert type(module).__name__ == "Stage3"
    schedule = module.configure_optimizers()
    optimizer, scheduler = schedule["optimizer"], schedule["lr_scheduler"]["scheduler"]
    peak, warmup = cfg.stage_settings.module.optimizer.lr, cfg.stage_settings.warmup_steps
    steps = cfg.stage_settings.steps
    seen = {}
    for step in range(steps + 1):
        seen[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    # Linear warm-up to the paper's peak, then a cosine down to zero at the last step.
    assert (
        seen[0] == 0.0
        and seen[warmup // 2] == pytest.approx(peak / 2)
        and seen[warmup] == pytest.approx(peak)
    )
    assert seen[(warmup + steps) // 2] == pytest.approx(peak / 2) and seen[steps] == pytest.approx(
        0.0, abs=1e-12
    )


def test_unknown_stage_is_refused():
    cfg = compose_train(["stage=5"])
    with pytest.raises(ValueError, match="unknown stage=5"):
        stage_settings(cfg)


def test_deepspeed_strategy_instantiates():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    cfg = compose_train(["trainer=deepspeed_zero2"])
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, DeepSpeedStrategy) and strategy.config["zero_optimization"]["stage"] == 2
    assert strategy.config["bf16"] == {
        "enabled": True
    }  # bf16 compute, fp32 master weights in the ZeRO optimiser


@pytest.mark.parametrize("trainer", ["gpu", "deepspeed_zero2"])
def test_gpu_trainers_without_cuda_name_trainer_cpu(trainer, monkeypatch):
    import torch

    from jasper.training.command_line import RunRefused
    from jasper.training.preflight import check_accelerator, validate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_train([f"trainer={trainer}"])
    with pytest.raises(RuntimeError, match="trainer=cpu") as error:
        check_accelerator(cfg)
    assert "\n" not in str(error.value)  # one line
    with pytest.raises(RunRefused, match="trainer=cpu"):
        validate(cfg)  # what run() checks before anything is loaded
    check_accelerator(compose_train(["trainer=cpu"]))


def test_wandb_logger_is_offline_without_a_key_and_online_with_one(tmp_path, monkeypatch):
    """The resolver alone decides (WANDB_MODE unset): no key -> an offline run starts (no network); a key, or
    WANDB_MODE=online -> online (composed and built, never started: that would reach the network)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_train(["logger=wandb"], tmp_path)
    assert cfg.logger.offline is True
    logger = instantiate(cfg.logger)
    assert logger._offline is True
    assert logger.experiment is not None  # starts an offline run, no network
    logger.experiment.finish()
    monkeypatch.delenv("WANDB_MODE", raising=False)  # wandb.init may set it; the next checks start without it
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    cfg = compose_train(["logger=wandb"], tmp_path)
    assert cfg.logger.offline is False and instantiate(cfg.logger)._offline is False
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compose_train(["logger=wandb"], tmp_path).logger.offline is False


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_batch_that_does_not_fit_says_what_to_change(checkpointing, monkeypatch):
    import torch

    import jasper.training.run

    cfg = compose_train(
        ["stage=2", "stages.stage2.batch_size=512", f"model.gradient_checkpointing={checkpointing}"]
    )

    class Trainer:
        logger = None

        def fit(self, *args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(jasper.training.run, "build", lambda cfg: (None, None, Trainer()))
    with pytest.raises(torch.OutOfMemoryError, match="stages.stage2.batch_size=512 does not fit") as error:
        jasper.training.run.run(cfg)
    assert ("model.gradient_checkpointing=true" in str(error.value)) != checkpointing
    assert "docs/gpu.md" in str(error.value)


# Every command line the docs show (README, docs/, the entry points' docstrings, the configs' header comments):
# parsed by the entry point's own Hydra command line (`--cfg job --resolve`: composed and resolved, nothing run),
# then its objects instantiated as the entry point would, short of loading data or training.
ENTRY_POINTS = ("train", "evaluate", "export", "precompute", "report")
COMMAND = re.compile(r"python (" + "|".join(ENTRY_POINTS) + r")\.py")
OVERRIDE = re.compile(r"^[+~]{0,2}[\w.\-/@]+=")
PLACEHOLDERS = {"$(RUN)": "demo", "<run>": "demo", "...": "x"}
# Composed and resolved, not instantiated: their models and data are on the hub (or need the mpnet extra).
HUB = ("experiment=jasper_paper", "teachers=nvembed_stella", "data=paper_mix", "images=infinity_mm")
MPNET_CONFIGS = ("experiment=jasper_analogue", "teachers=mpnet_minilm")


def documented_commands() -> dict[tuple[str, tuple[str, ...]], str]:
    """``{(entry point, its arguments): the file that shows it}``. Optional ``[key=value]`` parts are left out;
    a command's arguments end at its comment or at the first word that is not an override."""
    repo = CONF.parent
    files = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    files += [repo / f"{e}.py" for e in ENTRY_POINTS] + sorted(CONF.rglob("*.yaml"))
    found: dict[tuple[str, tuple[str, ...]], str] = {}
    for path in files:
        for line in path.read_text().splitlines():
            for match in COMMAND.finditer(line):
                rest = line[match.end() :]
                if line[: match.start()].count("`") % 2:  # inline code: up to its closing backtick
                    rest = rest.split("`")[0]
                rest = re.split(r" #|\s{3,}", rest)[0].rstrip('.:"\\ ')
                args = []
                for token in shlex.split(rest):
                    for placeholder, value in PLACEHOLDERS.items():
                        token = token.replace(placeholder, value)
                    token = token.rstrip(".:")  # the end of a sentence in prose
                    if token.startswith("["):
                        continue
                    if token not in ("-m", "--multirun") and not OVERRIDE.match(token):
                        break
                    args.append(token)
                found.setdefault((match.group(1), tuple(args)), str(path.relative_to(repo)))
    return found


def jobs(args: tuple[str, ...]) -> list[list[str]]:
    """The jobs of a command line: one, or each job of a ``-m`` sweep (as Hydra's basic sweeper splits it)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if a not in ("-m", "--multirun")]
    if len(overrides) == len(args):
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def through_the_command_line(entry: str, args: list[str], capsys, monkeypatch) -> dict:
    """The entry point's own ``main`` (its @hydra.main: config path and name) with ``--cfg job --resolve``."""
    import importlib.util
    import sys

    from hydra.core.global_hydra import GlobalHydra

    path = CONF.parent / f"{entry}.py"
    name = f"_entry_{entry}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
        # As when run as a script: Hydra finds conf/ beside the file of a task function from "__main__".
        sys.modules[name].main.__wrapped__.__module__ = "__main__"
    from jasper.training.command_line import quote_paths  # as the scripts do before Hydra reads argv

    monkeypatch.setattr(sys, "argv", [str(path), *quote_paths(args), "--cfg", "job", "--resolve"])
    capsys.readouterr()
    try:
        sys.modules[name].main()
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(OmegaConf.create(capsys.readouterr().out))


def test_the_command_lines_are_found():
    commands = documented_commands()
    assert len(commands) > 30
    assert {entry for entry, _ in commands} == set(ENTRY_POINTS)
    assert ("evaluate", ("model=PATH",)) in commands and ("train", ()) in commands
    assert (
        "export",
        ("ckpt=outputs/mine/stage3/student.pt", "out=outputs/mine/export", "onnx=true"),
    ) in commands


@pytest.mark.parametrize(
    "entry,args",
    [pytest.param(*key, id=" ".join([key[0], *key[1]])) for key in documented_commands()],
)
def test_every_documented_command_line_composes_and_instantiates(entry, args, tmp_path, capsys, monkeypatch):
    from jasper.evaluation.runner import default_out_dir, run_models
    from jasper.evaluation.sets import with_set_specs
    from jasper.training.command_line import quote_paths
    from jasper.training.run import build

    monkeypatch.chdir(tmp_path)  # relative paths (outputs/...) land here
    needs_mpnet = any(a.startswith(MPNET_CONFIGS) for a in args) and not mpnet_installed()
    for job in jobs(args):
        if entry == "evaluate":
            job = [*job, f"runs_dir={tmp_path / 'runs'}"]  # a run_name= reads its stages there
        if needs_mpnet:  # Hydra reports the resolver's error and exits 1; the error names the extra
            with pytest.raises(SystemExit):
                through_the_command_line(entry, job, capsys, monkeypatch)
            assert "make install-mpnet" in capsys.readouterr().err
            continue
        cfg = through_the_command_line(entry, job, capsys, monkeypatch)
        if entry == "export":
            assert cfg["ckpt"] and cfg["out"]
            continue
        if entry == "evaluate":
            if cfg.get("run_name"):
                for stage in (1, 2):
                    student = tmp_path / "runs" / str(cfg["run_name"]) / f"stage{stage}" / "student.pt"
                    student.parent.mkdir(parents=True, exist_ok=True)
                    student.touch()
            models = run_models(cfg, CONF.parent)
            assert models and with_set_specs(cfg["eval"])["sts"] is not None and default_out_dir(cfg)
            continue
        if any(a.startswith(HUB) for a in job):
            continue
        for listed in re.findall(r"paths=\[([^\]]*)\]", " ".join(job)):  # the data files a command names
            for name in listed.split(","):
                if name.endswith((".jsonl", ".txt")):
                    (tmp_path / name).write_text(
                        '{"text": "A placeholder text for the documented command."}\n'
                    )
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # the entry point's own config
            composed = compose(entry, overrides=[*quote_paths(job), f"paths.output_dir={tmp_path / 'stage'}"])
        if entry == "train":
            module, datamodule, trainer = build(composed)
            assert type(module).__name__ == f"Stage{cfg['stage']}"
            assert trainer.max_steps == cfg["trainer"]["max_steps"]
        else:  # precompute.py and report.py read the teachers and the data as train.py does
            teachers = instantiate(composed.teachers)
            instantiate(composed.data, teachers=teachers, tokenize=None)
