"""moesim as a wheel: built from the sources, installed into a folder, run from outside the repository.

The wheel is built once per session without the network (`pip wheel --no-build-isolation`, this environment's
setuptools) from a copy of the packaged sources, so no build/ or egg-info lands in the repository. Every check
runs in a child Python started with ``-S`` (no site: the editable install's finder in .venv cannot load) and
``PYTHONPATH`` = the installed wheel, then .venv's site-packages for the dependencies; its working folder is a
temporary one outside the repository. About 20 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What the sdist holds besides the package folders (pyproject.toml's packages name those).
TOP_FILES = ("pyproject.toml", "README.md", "__init__.py")
QUICK_TABLES = "data/h100-sxm/quick-bf16"


def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def _project_version() -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', _pyproject(), re.M)
    assert m, "pyproject.toml names no version"
    return m.group(1)


def _package_folders() -> list[str]:
    """Top-level folders of the packages pyproject.toml lists (``moesim.model.presets`` -> ``model``)."""
    block = re.search(r"^packages\s*=\s*\[(.*?)\]", _pyproject(), re.M | re.S)
    assert block, "pyproject.toml lists no packages"
    names = re.findall(r'"moesim\.([A-Za-z_]+)', block.group(1))
    return sorted(set(names))


def _build_reason() -> str | None:
    """Why the wheel cannot be built offline here, or None."""
    try:
        st = version("setuptools")
    except PackageNotFoundError:
        return "setuptools is not installed (pip install 'setuptools>=77')"
    if int(st.split(".")[0]) < 77:  # 77 builds wheels itself (bdist_wheel moved in from `wheel` in 70.1)
        return f"setuptools {st} is older than pyproject.toml's build backend needs (>=77)"
    return None


@pytest.fixture(scope="session")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder moesim's wheel was installed into (``pip install --target``)."""
    reason = _build_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in TOP_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    for folder in _package_folders():
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--no-color"]
    env = {**os.environ, "PIP_NO_INDEX": "1"}  # offline: everything the build needs is already here
    build = subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = list((tmp / "dist").glob("moesim-*.whl"))
    assert len(wheels) == 1, wheels
    site = tmp / "site"
    inst = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheels[0])],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert inst.returncode == 0, inst.stdout[-3000:] + inst.stderr[-3000:]
    return site


def _run(site: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -S -s ARGS`` with only the wheel and .venv's site-packages importable, in ``cwd``."""
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {"PYTHONPATH": os.pathsep.join([str(site), *deps]), "PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1"}
    return subprocess.run(
        [sys.executable, "-S", "-s", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


_PROBE = f"""
import json, pathlib
import moesim, moesim.model, moesim.profiling, moesim.dashboard
from moesim.model import load_accuracy, load_model
m = load_model("mixtral-8x7b")
pkg = pathlib.Path(moesim.__file__).parent
print(json.dumps({{
    "file": moesim.__file__,
    "model_file": moesim.model.__file__,
    "version": moesim.__version__,
    "experts": m.moe.num_experts if m.moe else None,
    "accuracy_rows": len(load_accuracy()),
    "tables": str(pathlib.Path(moesim.profiling.__file__).parent / "{QUICK_TABLES}"),
    "app": (pkg / "dashboard" / "app.py").is_file(),
    "views": sorted(p.name for p in (pkg / "dashboard" / "views").glob("*.py")),
    "examples": (pkg / "examples").exists(),
}}))
"""


def test_the_wheel_installs_and_runs_outside_the_repository(wheel_site: Path, tmp_path: Path) -> None:
    out = json.loads(_ok(_run(wheel_site, tmp_path, "-c", _PROBE)))
    site = str(wheel_site.resolve())
    assert out["file"].startswith(site) and out["model_file"].startswith(site), out  # not the editable tree
    assert out["version"] == _project_version()
    assert out["experts"] == 8 and out["accuracy_rows"] > 0
    assert out["app"] and {"scenario.py", "profiles.py", "placement.py", "sweeps.py", "cap.py"} <= set(out["views"])
    assert not out["examples"]  # examples/ stays in the repository
    assert out["tables"].startswith(site) and any(Path(out["tables"]).glob("*.parquet"))

    cli = _ok(_run(wheel_site, tmp_path, "-m", "moesim.dashboard.cli", "--version"))
    assert _project_version() in cli

    cal = tmp_path / "cal.parquet"
    _ok(_run(wheel_site, tmp_path, "-m", "moesim.dashboard.cli", "calibrate", out["tables"], "--out", str(cal)))
    assert cal.is_file() and cal.stat().st_size > 0

    bad = _run(wheel_site, tmp_path, "-c", "import model")
    assert bad.returncode != 0 and "No module named 'model'" in bad.stderr


def test_the_console_script_writes_the_demo_report(wheel_site: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the demo's plots need matplotlib (moesim[report])")
    script = wheel_site / "bin" / "moesim"
    assert script.is_file(), sorted(p.name for p in wheel_site.iterdir())
    _ok(_run(wheel_site, tmp_path, str(script), "demo", "--no-profile", "--out", "report", timeout=180))
    report = tmp_path / "report"
    assert (report / "report.md").is_file() and (report / "summary.json").is_file()
    assert json.loads((report / "summary.json").read_text())["model"]
