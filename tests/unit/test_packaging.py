"""Packaging: one distribution, stages under `onfinish.*`, and an SDK that stays light."""

from __future__ import annotations

import subprocess
import sys
import tomllib
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


def test_the_wheel_puts_every_stage_inside_the_onfinish_package(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    import zipfile

    (wheel,) = tmp_path.glob("onfinish-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for stage in STAGES:
        assert f"onfinish/{stage}/__init__.py" in names
    assert {"onfinish/stack/assets/kafka/pom.xml", "onfinish/stack/assets/registry/go.sum"} <= names
    assert not any(name.split("/")[0] in (*STAGES, "tests") for name in names), "no generic top-level names"
