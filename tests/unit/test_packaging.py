"""Packaging: one distribution, stages under `onfinish.*`, and an SDK that stays light."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

STAGES = ("producers", "processors", "schemas", "sinks")


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_for_the_wheel():
    config = _pyproject()["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    on_disk = {
        "onfinish." + ".".join(p.parent.relative_to(REPO / "onfinish").parts)
        for p in (REPO / "onfinish").glob("**/__init__.py")
        if p.parent != REPO / "onfinish"
    }
    on_disk |= {"onfinish"}
    for stage in STAGES:
        on_disk |= {
            f"onfinish.{stage}." + ".".join(p.parent.relative_to(REPO / stage).parts)
            for p in (REPO / stage).glob("**/__init__.py")
            if p.parent != REPO / stage
        }
    on_disk = {name.rstrip(".") for name in on_disk}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert {mapping[f"onfinish.{stage}"] for stage in STAGES} == set(STAGES)


def test_base_install_is_the_producer_sdk_and_heavy_parts_are_extras():
    project = _pyproject()["project"]
    base = " ".join(project["dependencies"])
    for heavy in ("faust", "aiokafka", "chdb", "clickhouse"):
        assert heavy not in base
    extras = project["optional-dependencies"]
    assert any(d.startswith("faust-streaming") for d in extras["processors"])
    assert {d.split(">")[0] for d in extras["sinks"]} >= {"clickhouse-connect", "chdb"}
    assert set(extras) >= {"processors", "sinks", "all", "dev"}


@pytest.mark.parametrize("stage", STAGES)
def test_stages_import_under_the_onfinish_package(stage):
    module = __import__(f"onfinish.{stage}", fromlist=["_"])
    assert module.__name__ == f"onfinish.{stage}"
    assert module.__doc__


def test_importing_the_sdk_pulls_no_processor_or_sink_dependency():
    code = (
        "import sys, onfinish.producers, onfinish.schemas\n"
        "print(','.join(m for m in ('faust', 'aiokafka', 'chdb', 'clickhouse_connect', 'typer') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert result.stdout.strip() == ""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], str]:
    """The names in the wheel built from a clean copy of this checkout, and what the build printed.

    A copy, as a fresh clone has it: setuptools builds in the source tree and puts whatever an
    earlier build left in build/lib into the wheel, which would hide an undeclared data file. Built
    with the virtualenv's setuptools (no build isolation: nothing to download, so it runs offline).
    """
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for folder in ("onfinish", *STAGES):  # onfinish/<stage> stay symlinks to the stage folders
        shutil.copytree(
            REPO / folder, source / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*command, "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("onfinish-*.whl")
    return set(zipfile.ZipFile(built).namelist()), result.stdout + result.stderr


def _data_files() -> set[str]:
    """Every file of the packages that is not Python, as its name in the wheel (onfinish/...)."""
    roots = {"onfinish": REPO / "onfinish", **{f"onfinish/{stage}": REPO / stage for stage in STAGES}}
    found = set()
    for prefix, root in roots.items():
        for folder, folders, files in os.walk(root):  # does not follow onfinish/<stage> symlinks
            folders[:] = [f for f in folders if f != "__pycache__"]
            for name in files:
                if not name.endswith((".py", ".pyc")):
                    found.add(f"{prefix}/{Path(folder, name).relative_to(root).as_posix()}")
    return found


def test_the_wheel_puts_every_stage_inside_the_onfinish_package(wheel: tuple[set[str], str]):
    names, _ = wheel
    for stage in STAGES:
        assert f"onfinish/{stage}/__init__.py" in names
    assert not any(name.split("/")[0] in (*STAGES, "tests") for name in names), "no generic top-level names"


def test_the_wheel_holds_every_data_file(wheel: tuple[set[str], str]):
    names, _ = wheel
    data = _data_files()
    # The kinds the code reads with importlib.resources: rules, catalogs, migrations, the dashboard,
    # the Avro contract and the local stack's build files.
    assert {name.rsplit(".", 1)[-1] for name in data} >= {"toml", "sql", "html", "avsc", "xml", "mod", "sum"}
    assert "onfinish/stack/assets/kafka/pom.xml" in data
    assert data <= names, f"declare as package data in pyproject.toml: {sorted(data - names)}"


def test_building_the_wheel_prints_no_warning(wheel: tuple[set[str], str]):
    # setuptools warned once per data folder that Python could import it as a namespace package
    # absent from `packages` (about 150 lines); pyproject.toml now declares every data file.
    _, printed = wheel
    assert "warning" not in printed.lower(), printed
