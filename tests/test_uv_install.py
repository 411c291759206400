"""tools/uv_install.py (make install): uv is given the sources pip is configured with, ranked as pip ranks them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
try:
    from uv_install import pip_options, uv_arguments
finally:
    sys.path.pop(0)


def test_environment_beats_install_section_beats_global():
    listed = "\n".join(
        [
            ":env:.find-links='/env/wheels'",
            "global.find-links='/global/wheels'",
            "global.extra-index-url='file:///a/simple file:///b/simple'",
            "install.index-url='https://mirror.example/simple'",
            "global.index-url='https://global.example/simple'",
            "global.cert='/etc/ca.crt'",
            "user.ignored='x'",
        ]
    )
    options = pip_options(listed)
    assert options == {
        "find-links": "/env/wheels",
        "extra-index-url": "file:///a/simple file:///b/simple",
        "index-url": "https://mirror.example/simple",
        "cert": "/etc/ca.crt",
    }
    flags, env = uv_arguments(options)
    assert flags == [
        "--index-strategy",
        "unsafe-best-match",
        "--index-url",
        "https://mirror.example/simple",
        "--extra-index-url",
        "file:///a/simple",
        "--extra-index-url",
        "file:///b/simple",
        "--find-links",
        "/env/wheels",
    ]
    assert env == {"SSL_CERT_FILE": "/etc/ca.crt"}


def test_no_configuration_leaves_uv_on_its_defaults():
    assert uv_arguments(pip_options("")) == (["--index-strategy", "unsafe-best-match"], {})


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel: one module and its dist-info."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}.py", "VALUE = 1\n")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_uv_finds_a_package_only_where_pips_environment_points(tmp_path):
    """End to end through the real uv: a package that exists only in a folder named by PIP_FIND_LINKS, with the
    indexes switched off by PIP_NO_INDEX, resolves (dry run: nothing is installed)."""
    pytest.importorskip("uv", reason="uv is installed by make install")
    _wheel(tmp_path, "jasper_uv_probe", "0.3")
    env = {**os.environ, "PIP_FIND_LINKS": str(tmp_path), "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}
    command = [sys.executable, str(REPO / "tools" / "uv_install.py"), "--dry-run", "jasper_uv_probe"]
    found = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert "jasper-uv-probe==0.3" in found.stderr + found.stdout
    env["PIP_FIND_LINKS"] = str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    missing = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode != 0  # the same request with pip pointing elsewhere: uv looked only there
