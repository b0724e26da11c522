"""The layering, enforced: import-linter's contracts (``.importlinter``) hold, so no stage
imports another, the shared infrastructure imports no stage, and the commands use only the
stages' public API. A broken contract names the import chain that breaks it."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"pairmine.embed", "pairmine.match", "pairmine.export", "pairmine.train",
          "pairmine.quality", "pairmine.ingest"}


def _config() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    assert config.read(ROOT / ".importlinter"), "no .importlinter at the repository root"
    return config


def _modules(value: str) -> set[str]:
    return {line.strip() for line in value.splitlines() if line.strip()}


def test_the_contracts_name_every_stage() -> None:
    config = _config()
    independent = config["importlinter:contract:stages-independent"]
    assert independent["type"] == "independence"
    assert _modules(independent["modules"]) == STAGES
    shared = config["importlinter:contract:shared-imports-no-stage"]
    assert _modules(shared["forbidden_modules"]) >= STAGES
    assert {"pairmine.stores", "pairmine.errors", "pairmine.progress",
            "pairmine.runtime"} <= _modules(shared["source_modules"])
    for name in _modules(config["importlinter:contract:commands-public-api"]
                         ["forbidden_modules"]):
        path = ROOT / Path(*name.split("."))
        assert path.with_suffix(".py").is_file() or path.is_dir(), f"{name} does not exist"


def test_lint_imports_keeps_every_contract() -> None:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
    assert "0 broken" in proc.stdout


def test_every_internal_module_of_a_stage_is_closed_to_the_commands() -> None:
    """A module added to a stage package is internal until its package re-exports it: the
    commands-public-api contract must list it, or a command could start depending on it."""
    forbidden = _modules(_config()["importlinter:contract:commands-public-api"]
                         ["forbidden_modules"])
    internal = {f"pairmine.{stage}.{path.stem}"
                for stage in ("embed", "match", "export", "train", "quality", "ingest")
                for path in (ROOT / "pairmine" / stage).glob("*.py") if path.stem != "__init__"}
    assert sorted(internal - forbidden) == []
