"""docs/cli.md is generated from --help; it must not go stale. The CLI must stay light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pairmine.clidoc import render_cli_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render_cli_markdown(), (
        "docs/cli.md is stale: run `python -m pairmine.clidoc > docs/cli.md`")


def test_help_does_not_import_heavy_libraries() -> None:
    code = ("import sys; from pairmine.cli import main\n"
            "try:\n    main(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'faiss', 'pyarrow', 'webdataset') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY=", out.stdout


def test_python_dash_m_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "pairmine", "--version"], capture_output=True,
                         text=True, check=True)
    assert "pairmine" in out.stdout


def test_api_reference_is_current() -> None:
    from pairmine.apidoc import DOC as API_DOC
    from pairmine.apidoc import updated

    text = API_DOC.read_text(encoding="utf-8")
    assert updated(text) == text, "docs/api.md is stale: run `python -m pairmine.apidoc`"
