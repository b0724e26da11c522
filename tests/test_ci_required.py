"""The CI rule in conftest.py: a required test that is skipped fails the session when CI is set.

Each case runs a real pytest session in a subprocess over a scratch folder that holds a few
tests and a conftest.py made of our conftest's CI hooks (a copy of it imported under another
name; its toy encoder is left out, which keeps torch out of the subprocess), and reads the
session's exit status and summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import is_required_file, missing_dev_extra

CONFTEST = Path(__file__).with_name("conftest.py")
CI_HOOKS = """from ci_rules import (_register_required_marker, pytest_collection_modifyitems,
                      pytest_collectreport, pytest_runtest_logreport, pytest_sessionfinish,
                      pytest_terminal_summary)

def pytest_configure(config):
    _register_required_marker(config)
"""


def run_session(tmp_path: Path, files: dict[str, str], *, ci: str | None,
                args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    shutil.copy(CONFTEST, tmp_path / "ci_rules.py")
    (tmp_path / "conftest.py").write_text(CI_HOOKS)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # installed plugins cost seconds, add nothing
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "--strict-markers", *args, str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


SKIPS = {
    # a required file: every test in it is required
    "test_interop.py": "import pytest\n\ndef test_client():\n    pytest.skip('no client')\n",
    # elsewhere: an explicit marker, a dev extra too old, and a plain skip that is allowed
    "test_other.py": (
        "import pytest\n\n"
        "@pytest.mark.required\n"
        "def test_marked():\n    pytest.skip('not today')\n\n"
        "def test_extra_too_old():\n    pytest.importorskip('safetensors', minversion='999')\n\n"
        "@pytest.mark.skip(reason='needs a GPU')\n"
        "def test_gpu():\n    pass\n\n"
        "def test_runs():\n    assert True\n"),
}


def test_required_skips_fail_the_session_in_ci(tmp_path: Path) -> None:
    run = run_session(tmp_path, SKIPS, ci="true")
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout + run.stderr
    listed = [line for line in run.stdout.splitlines() if line.startswith("REQUIRED SKIPPED")]
    assert len(listed) == 3, run.stdout
    assert any("test_interop.py::test_client: no client" in line for line in listed)
    assert any("test_other.py::test_marked: not today" in line for line in listed)
    assert any("test_extra_too_old" in line and "safetensors" in line for line in listed)
    assert not any("test_gpu" in line for line in listed)
    assert "3 required test(s) skipped: CI fails" in run.stdout


def test_required_skips_fail_the_session_under_xdist_too(tmp_path: Path) -> None:
    """The suite runs in pytest-xdist workers (`-n auto`): the skips a worker reports must still
    reach the controller's verdict (one worker is enough to put a process between them)."""
    pytest.importorskip("xdist")
    run = run_session(tmp_path, SKIPS, ci="true", args=("-p", "xdist", "-n", "1"))
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout + run.stderr
    listed = [line for line in run.stdout.splitlines() if line.startswith("REQUIRED SKIPPED")]
    assert len(listed) == 3, run.stdout


def test_outside_ci_the_same_skips_are_listed_but_pass(tmp_path: Path) -> None:
    run = run_session(tmp_path, SKIPS, ci="0")
    assert run.returncode == pytest.ExitCode.OK, run.stdout + run.stderr
    assert "3 required test(s) skipped: CI would fail" in run.stdout


def test_a_module_skipped_at_import_counts(tmp_path: Path) -> None:
    module = ("import pytest\n\npytest.importorskip('duckdb.no_such_part')\n\n"
              "def test_x():\n    pass\n")
    run = run_session(tmp_path, {"test_anything.py": module,
                                 "test_fine.py": "def test_ok():\n    pass\n"}, ci="true")
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout + run.stderr
    assert "REQUIRED SKIPPED test_anything.py: could not import 'duckdb.no_such_part'" \
        in run.stdout


def test_nothing_required_skipped_passes_in_ci(tmp_path: Path) -> None:
    run = run_session(tmp_path, {"test_fine.py": "def test_ok():\n    pass\n"}, ci="true")
    assert run.returncode == pytest.ExitCode.OK, run.stdout + run.stderr
    assert "REQUIRED" not in run.stdout


def test_the_rules() -> None:
    assert is_required_file("test_encoders_timm.py") and is_required_file("test_encoders.py")
    assert is_required_file("test_show_browser.py") and not is_required_file("test_match.py")
    assert missing_dev_extra("could not import 'open_clip': No module named 'open_clip'") \
        == "open_clip"
    assert missing_dev_extra("could not import 'triton': No module named 'triton'") is None
    assert missing_dev_extra("no CUDA device") is None
