"""Installing the stack's software from package registries into a cache outside the repository.

- Kafka: the broker's jars, resolved by Maven from the pinned `kafka_2.13` artifact
  (assets/kafka/pom.xml) and copied with `mvn dependency:copy-dependencies`.
- Schema registry: AxonOps Schema Registry, built by the Go toolchain from the module proxy at the
  pinned version (assets/registry/go.mod pins it and go.sum holds the checksums of its dependencies).
- Alertmanager (alerting enabled): built by `go install` from the module proxy at the pinned
  version (v0.28.1: later versions' modules lack the web UI's built files and do not build so).
- PostgreSQL (the registry's storage): Debian's package, found on the machine.

Each artefact is built into a temporary directory and renamed into place, so an interrupted install
never leaves something that looks complete.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from onfinish.errors import ProvisioningError
from onfinish.settings import StackSettings

REGISTRY_MODULE = "github.com/axonops/axonops-schema-registry"
REGISTRY_PACKAGE = f"{REGISTRY_MODULE}/cmd/schema-registry"
ALERTMANAGER_PACKAGE = "github.com/prometheus/alertmanager/cmd/alertmanager"
# Pinned so that a fresh machine resolves the same plugin Maven resolved here.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


@dataclass(frozen=True)
class Artefact:
    """One piece of installed software: what it is, where it lives, whether it is there."""

    name: str
    path: Path

    @property
    def installed(self) -> bool:
        return (self.path / ".complete").exists() if self.path.is_dir() else self.path.exists()


def kafka_libs(settings: StackSettings) -> Artefact:
    return Artefact(
        f"Kafka {settings.kafka_version} jars", settings.cache_dir / f"kafka-{settings.kafka_version}"
    )


def registry_binary(settings: StackSettings) -> Artefact:
    return Artefact(
        f"schema registry {settings.registry_version}",
        settings.cache_dir / "bin" / f"schema-registry-{settings.registry_version}",
    )


def alertmanager_binary(settings: StackSettings) -> Artefact:
    return Artefact(
        f"Alertmanager {settings.alertmanager_version}",
        settings.cache_dir / "bin" / f"alertmanager-{settings.alertmanager_version}",
    )


def _asset(*parts: str) -> Path:
    return Path(str(resources.files("onfinish.stack").joinpath("assets", *parts)))


def _run(argv: list[str], *, what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    if shutil.which(argv[0]) is None:
        raise ProvisioningError(f"{what}: `{argv[0]}` is not on PATH (the CI script installs it)")
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-25:]
        raise ProvisioningError(f"{what} failed (exit {result.returncode}):\n" + "\n".join(output))


def install_kafka(settings: StackSettings) -> Artefact:
    """Fetch the broker's runtime class path with Maven into the cache."""
    artefact = kafka_libs(settings)
    if artefact.installed:
        return artefact
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=settings.cache_dir, prefix=".kafka-"))
    try:
        libs = staging / "libs"
        _run(
            [
                settings.maven,
                "-B",
                "-q",
                "-f",
                str(_asset("kafka", "pom.xml")),
                f"-Dkafka.version={settings.kafka_version}",
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
            ],
            what=f"fetching Kafka {settings.kafka_version} with Maven",
        )
        if not (libs / f"kafka_2.13-{settings.kafka_version}.jar").exists():
            raise ProvisioningError(f"Maven finished but kafka_2.13-{settings.kafka_version}.jar is missing")
        (staging / ".complete").write_text(settings.kafka_version)
        shutil.rmtree(artefact.path, ignore_errors=True)
        staging.rename(artefact.path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return artefact


def install_registry(settings: StackSettings) -> Artefact:
    """Build the schema registry from the Go module proxy into the cache."""
    artefact = registry_binary(settings)
    if artefact.installed:
        return artefact
    artefact.path.parent.mkdir(parents=True, exist_ok=True)
    # go.mod asks for Go 1.26; an older local Go fetches that toolchain through the module proxy.
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    with tempfile.TemporaryDirectory(prefix="onfinish-registry-build-") as tmp:
        build_dir = Path(tmp)
        for name in ("go.mod", "go.sum"):
            shutil.copyfile(_asset("registry", name), build_dir / name)
        pinned = f"{REGISTRY_MODULE} {settings.registry_version}"
        if pinned not in (build_dir / "go.mod").read_text():
            _run(
                [settings.go, "get", "-tool", f"{REGISTRY_PACKAGE}@{settings.registry_version}"],
                what=f"resolving schema registry {settings.registry_version}",
                cwd=build_dir,
                env=env,
            )
        output = build_dir / "schema-registry"
        _run(
            [settings.go, "build", "-trimpath", "-o", str(output), REGISTRY_PACKAGE],
            what=f"building schema registry {settings.registry_version} with Go",
            cwd=build_dir,
            env=env,
        )
        shutil.move(output, artefact.path)
    return artefact


def install_alertmanager(settings: StackSettings) -> Artefact:
    """Build Alertmanager with `go install` from the Go module proxy into the cache.

    `go install module/cmd@version` needs no module of ours: the module's own go.mod and go.sum
    pin its dependencies, and the proxy's checksum database verifies them.
    """
    artefact = alertmanager_binary(settings)
    if artefact.installed:
        return artefact
    artefact.path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onfinish-alertmanager-build-") as tmp:
        env = {**os.environ, "GOBIN": tmp, "GOFLAGS": "-trimpath"}
        _run(
            [settings.go, "install", f"{ALERTMANAGER_PACKAGE}@{settings.alertmanager_version}"],
            what=f"building Alertmanager {settings.alertmanager_version} with Go",
            cwd=Path(tmp),
            env=env,
        )
        built = Path(tmp) / "alertmanager"
        if not built.exists():
            raise ProvisioningError(f"go install finished but {built.name} is missing")
        shutil.move(built, artefact.path)
    return artefact


def postgres_bin_dir(settings: StackSettings) -> Path:
    """Where initdb, postgres and pg_isready live: the setting, or Debian's newest installed major."""
    candidates = (
        [settings.postgres_bin_dir]
        if settings.postgres_bin_dir
        else sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
    )
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    raise ProvisioningError(
        "PostgreSQL (storage of the schema registry) is not installed: install Debian's `postgresql` "
        "package, or set ONFINISH_STACK_POSTGRES_BIN_DIR"
    )
