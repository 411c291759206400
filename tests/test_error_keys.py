"""Every config key an error message in jasper/ names exists in a config an entry point composes.

A message that says "set stage.module.unfreeze_layers" sends the user to a key Hydra refuses; this test reads the
messages with `ast` and checks their keys against the composed configs.

The rule:
- Messages: the string constants and f-strings (a formatted value becomes ``{}``) inside a ``raise`` statement,
  and inside any call of an exception class (``CacheDamaged(...)`` built first and raised later): a builtin one,
  one defined in jasper/ on top of those, or any name ending in Error or Exception (``torch.OutOfMemoryError``).
  A message first put in a variable and raised later is not seen.
- Keys: dotted words (``model.mrl_dims``, ``stages.stage2.loss.similarity``, maybe followed by ``=``) whose first
  part is a top-level key of a composed config. File names (``student.pt``, ``precompute.py``) are not keys, nor
  is a key the message says to add (``+key=``, or removed with ``~key``).
- Exists: present in at least one composition: each entry point's default (train, precompute, report, export,
  evaluate), and train and evaluate with each option of each config group (``images=folder`` brings
  ``images.source.root``; ``hparams_search=optuna`` brings ``hydra.sweeper.params``). ``stageN`` or ``stage{}``
  stands for any of ``stages.stage1..4``, and ``{}`` for any key at its level (under an empty mapping, which the
  user fills, anything goes).
"""

from __future__ import annotations

import ast
import builtins
import re
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import jasper.training.resolvers  # noqa: F401  (resolvers)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PACKAGE = REPO / "jasper"
KEY = re.compile(r"(?<![\w./\-{}+~])([A-Za-z_][\w{}]*(?:\.[A-Za-z_{}][\w{}]*)+)")
FILE = re.compile(r"\.(pt|py|ckpt|json|jsonl|yaml|md|npy|csv|tsv|txt|safetensors|png|bin)$")
BUILTIN_ERRORS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def exception_classes(trees: list[ast.Module]) -> set[str]:
    """The builtin exceptions and every class in jasper/ that derives from one (by name, to a fixed point)."""
    names = set(BUILTIN_ERRORS)
    classes = [node for tree in trees for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    grew = True
    while grew:
        grew = False
        for node in classes:
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
            if node.name not in names and bases & names:
                names.add(node.name)
                grew = True
    return names


def message_texts(node: ast.AST) -> list[str]:
    """The strings under ``node``: constants, and f-strings with each formatted value as ``{}``."""
    parts = {id(v) for sub in ast.walk(node) if isinstance(sub, ast.JoinedStr) for v in sub.values}
    texts = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.JoinedStr):
            texts.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in sub.values))
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str) and id(sub) not in parts:
            texts.append(sub.value)
    return texts


def error_messages(root: Path = PACKAGE) -> list[tuple[str, str]]:
    """``(file:line, text)`` of each string in a raise statement or an exception constructor in ``root``."""
    files = sorted(root.rglob("*.py"))
    trees = [ast.parse(path.read_text(), filename=str(path)) for path in files]
    errors = exception_classes(trees)
    found = []

    def is_error(node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        return name in errors or name.endswith(("Error", "Exception"))

    for path, tree in zip(files, trees, strict=True):
        for node in ast.walk(tree):
            if is_error(node):
                texts = message_texts(node)
            elif isinstance(node, ast.Raise) and node.exc is not None and not is_error(node.exc):
                texts = message_texts(node.exc)  # raise refusal(...): a helper that builds the exception
            else:
                continue
            where = f"{path.relative_to(root.parent)}:{node.lineno}"
            found += [(where, text) for text in texts]
    return found


def named_keys(text: str, top_level: set[str]) -> list[str]:
    """The config keys a message names (see the module docstring for the rule)."""
    keys = []
    for match in KEY.finditer(text):
        key = match.group(1)
        if FILE.search(key) or key.split(".")[0] not in top_level:
            continue
        keys.append(re.sub(r"(\{\})+", "{}", key.replace("stageN", "stage{}")))
    return keys


def exists(node: object, parts: list[str]) -> bool:
    if not parts:
        return True
    if not isinstance(node, dict):
        return False
    if not node:  # an empty mapping the user fills (eval.mteb: {local: ..., tasks: ...}): any key
        return True
    part, rest = parts[0], parts[1:]
    if "{}" not in part:
        return part in node and exists(node[part], rest)
    # {} alone: any key (a sweep's params are dotted keys); within a word: word characters (stage{}: stage3)
    pattern = re.compile(".+" if part == "{}" else re.escape(part).replace(r"\{\}", r"\w+"))
    return any(pattern.fullmatch(str(k)) and exists(v, rest) for k, v in node.items())


def group_options(conf: Path, skip: set[str] = frozenset()) -> list[str]:
    return [
        f"{group.name}={option.stem}"
        for group in sorted(p for p in conf.iterdir() if p.is_dir() and p.name not in skip)
        for option in sorted(group.glob("*.yaml"))
    ]


def composed(config_dir: Path, name: str, overrides: list[str]) -> dict:
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        try:
            cfg = compose(name, overrides=overrides, return_hydra_config=True)
        except ConfigCompositionException:  # a group the defaults list does not name: add it
            cfg = compose(name, overrides=[f"+{o}" for o in overrides], return_hydra_config=True)
    return OmegaConf.to_container(cfg, resolve=False)


@cache
def configs() -> tuple[dict, ...]:
    """Every composition the rule counts: the entry points' defaults, and one group option at a time."""
    found = [composed(CONF, name, []) for name in ("train", "precompute", "report")]
    found.append(composed(CONF, "export", ["ckpt=x", "out=y"]))
    found += [composed(CONF, "train", [o]) for o in group_options(CONF, {"evaluate", "hydra", "stages"})]
    found.append(composed(CONF, "train", ["hparams_search=optuna"]))
    found += [composed(CONF / "evaluate", "evaluate", [o]) for o in group_options(CONF / "evaluate")]
    return tuple(found)


def missing_keys(messages: list[tuple[str, str]]) -> list[str]:
    top_level = {key for cfg in configs() for key in cfg}
    return sorted(
        f"{where}: {key}"
        for where, text in messages
        for key in named_keys(text, top_level)
        if not any(exists(cfg, key.split(".")) for cfg in configs())
    )


def test_error_messages_name_keys_that_exist():
    messages = error_messages()
    assert len(messages) > 100  # the reader finds the messages at all
    assert missing_keys(messages) == []


@pytest.mark.parametrize(
    "message,flagged",
    [
        ("add at least one under teachers.members", ["teachers.members"]),  # the key issue 20 found
        ("set stage.module.unfreeze_layers=2", ["stage.module.unfreeze_layers"]),
        ("set teachers.teachers and model.mrl_dims=[64]", []),
        ("stages.stageN.init_from=PATH or stages.stage{}.loss", []),
        ("stages.stageN.no_such_key", ["stages.stage{}.no_such_key"]),
        ("add it with +data.max_chars=1000, or drop ~model.extra", []),
        ("eval.mteb.local.{}.type must be sts; eval.images.vision", []),
        ("run python precompute.py; student.pt beside vision.pt; e.g. tower.transform", []),
    ],
)
def test_the_rule_catches_keys_that_do_not_exist(message, flagged):
    assert [key.split(": ", 1)[1] for key in missing_keys([("here", message)])] == flagged


def test_messages_are_read_from_raise_statements_and_exception_constructors(tmp_path):
    (tmp_path / "a.py").write_text(
        "class Refused(ValueError):\n    pass\n\n\n"
        "def f(n):\n"
        "    if n:\n"
        '        raise ValueError(f"teachers.members={n} is wrong")\n'
        '    error = Refused("stages.stage" f"{n}.module.nothing")\n'
        '    log = print("model.not_an_error")\n'
        "    return error\n"
    )
    found = sorted(error_messages(tmp_path))
    assert found == [
        (f"{tmp_path.name}/a.py:7", "teachers.members={} is wrong"),
        (f"{tmp_path.name}/a.py:8", "stages.stage{}.module.nothing"),
    ]
