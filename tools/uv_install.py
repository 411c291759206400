"""`uv pip install ARGS` into this interpreter's environment, from the sources pip is configured with.

make install runs it: uv unpacks and byte-compiles in parallel, twice as fast as pip on 2 cores (torch and its CUDA
libraries are ~5 GB), but it does not read pip's configuration. This reads it (`pip config list`: environment
variables over the [install] section over [global], as pip ranks them) and passes the index, extra indexes,
find-links, constraints and certificate on, so uv installs exactly what pip would, from where pip would (a mirror,
a local wheel folder). Needs uv installed beside pip (`pip install uv`).

    python tools/uv_install.py torch==2.14.1 torchvision==0.29.1
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

# pip's option -> uv's flag; several values of one option are separated by whitespace in pip's config.
FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}
RANK = {":env:": 0, "install": 1, "global": 2}  # who wins, as pip reads its configuration


def pip_options(config_list: str) -> dict[str, str]:
    """Each option's winning value from `pip config list` lines (``section.key='value'``)."""
    ranked: dict[str, tuple[int, str]] = {}
    for line in config_list.splitlines():
        name, equals, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if not equals or section not in RANK:
            continue
        rank = RANK[section]
        if key not in ranked or rank < ranked[key][0]:
            ranked[key] = (rank, ast.literal_eval(value))
    return {key: value for key, (_, value) in ranked.items()}


def uv_arguments(options: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """uv's command-line flags and environment for pip's options."""
    flags = ["--index-strategy", "unsafe-best-match"]  # pip takes the best version across all its indexes
    for option, flag in FLAGS.items():
        for value in options.get(option, "").split():
            flags += [flag, value]
    if options.get("no-index", "").lower() in {"1", "true", "yes", "on"}:
        flags.append("--no-index")
    env = {"SSL_CERT_FILE": options["cert"]} if "cert" in options else {}
    return flags, env


def main(args: list[str]) -> int:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    )
    flags, env = uv_arguments(pip_options(listed.stdout))
    command = [sys.executable, "-m", "uv", "pip", "install", "--python", sys.executable, "--compile-bytecode"]
    return subprocess.run([*command, *flags, *args], env={**os.environ, **env}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
