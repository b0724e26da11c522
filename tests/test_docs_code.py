"""Every ```python and ```bash block of README.md and docs/*.md runs, or is checked.

A block is one of three kinds, chosen by the HTML comment on the line just above its fence:

- no comment: run in an empty temporary directory.
- ``<!-- docs-test: fixture -->``: run in a copy of the fixture working directory below.
- ``<!-- docs-test: skip REASON -->``: not run (it needs a user's checkpoint, a cluster, a GPU,
  the network, ...), REASON says why. A skipped ``bash`` block is still checked against the
  CLI: every ``pairmine SUBCOMMAND ...`` line must parse (the command and its options exist,
  required options are there, values convert; nothing is executed), and every
  ``python path/to/script.py`` names a script of the repository. A skipped ``python`` block
  must compile and every name it takes from pairmine (``from pairmine.x import y``,
  ``pairmine.y``) must exist.

The blocks of one page run in order, as a reader would type them: its ``python`` blocks share
one namespace (a later block may use what an earlier one defined), its ``bash`` blocks run
with ``bash -eo pipefail`` (``pairmine`` and ``python`` are this interpreter's). Every page
gets its own fresh copy of the fixture. All pages run in one subprocess (torch is imported
once). ``python`` blocks inside the API reference that ``pairmine.apidoc`` generates are
signatures: they must parse as ``def`` stubs or classes (test_cli_docs checks they are
current). Other fences (```json, ```text, ...) are not code; an unlabelled fence must not hold
a command line (label it ```bash, or ```text for a synopsis).

The fixture working directory (built once per test run of this module, offline, ~5 s):

    data/train/<class>/NNNN.jpg   200 CIFAR-10 JPEGs, 20 of each of the 10 classes (from the
                                  sample packaged in pairmine/assets/cifar10-sample)
    data/test/<class>/NNNN.jpg    100 others, 10 of each class
    data/shards-000.tar .. data/shards-009.tar
                                  data/train as WebDataset shards (20 images each, NNNN.jpg +
                                  NNNN.cls), i.e. ``data/shards-{000..009}.tar``
    lists/train.txt, lists/train.csv
                                  data/train as a file list (paths relative to the list; the
                                  .csv has columns path,label)
    resnet20.th                   the packaged CIFAR ResNet-20 checkpoint: encoder
                                  ``cifar-resnet:resnet20.th`` (64-D features)
    emb/                          pairmine embed data/train/ emb/ --encoder cifar-resnet:resnet20.th
    pairs/                        pairmine match emb/ pairs/ --min 0.97 --max 0.99   (a few pairs)
    spps/                         pairmine export pairs/ spps/ --format webdataset --combined
                                      --shard-size 80   (~207 samples in 3 shards:
                                  spps/shards/spps-{000000..000002}.tar)
    EMB, PAIRS, SPPS              symlinks to emb/, pairs/, spps/ (the placeholders of the docs)

emb/, pairs/ and spps/ are complete stores: a block that writes a store writes a new path
(``pairs-wide/``) or passes ``--overwrite`` / ``overwrite=True``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
from contextlib import chdir
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
PYTHON = ("python", "py")
BASH = ("bash", "sh", "shell", "console")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>\S+)\s*(?P<reason>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+)\s*(?P<lang>[^\s`]*)[^`]*$")
# a line that is a command to type: in an unlabelled fence it must be labelled ```bash
COMMAND_LINE = re.compile(r"^\s*(\$\s+)?(pairmine|python3?|pip3?|torchrun|ray|srun|sbatch)\s")
DRIVER_TIMEOUT_S = 600  # ~25 s of CPU; minutes only on a machine shared with other jobs
BASH_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    lang: str  # "python", "bash" or the fence's own word
    code: str
    mode: str  # "run" | "fixture" | "skip" | "signature" | "text"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _generated_ranges(lines: list[str]) -> list[tuple[int, int]]:
    """Line ranges of the API reference that pairmine.apidoc writes."""
    from pairmine.apidoc import BEGIN, END

    ranges, start = [], None
    for i, line in enumerate(lines):
        if line.strip() == BEGIN:
            start = i
        elif line.strip() == END and start is not None:
            ranges.append((start, i))
            start = None
    return ranges


def read_blocks(path: Path) -> list[Block]:
    return parse_blocks(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))


def parse_blocks(text: str, page: str) -> list[Block]:
    """The fenced blocks of a Markdown page, with their markers; a bad marker is an error."""
    lines = text.splitlines()
    generated = _generated_ranges(lines)
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        lang = m.group("lang").lower()
        j = i + 1
        while j < len(lines) and not re.match(rf"^\s*{fence}\s*$", lines[j]):
            j += 1
        body = textwrap.dedent("\n".join(line[indent:] if line[:indent].isspace() else line
                                         for line in lines[i + 1:j]))
        above = lines[i - 1] if i else ""
        marker = MARKER.match(above)
        kind = "python" if lang in PYTHON else "bash" if lang in BASH else lang
        if marker is None and "docs-test" in above:
            raise ValueError(f"{page}:{i}: malformed docs-test marker {above.strip()!r}: "
                             "write <!-- docs-test: skip REASON --> or <!-- docs-test: fixture -->")
        if kind not in ("python", "bash"):
            if marker is not None:
                raise ValueError(f"{page}:{i}: a docs-test marker above a ```{lang} fence, "
                                 "which is not code")
            mode, reason = "text", ""
        elif any(a < i < b for a, b in generated):
            mode, reason = "signature", "generated by pairmine.apidoc"
        elif marker is None:
            mode, reason = "run", ""
        elif marker.group("kind") == "fixture" and not marker.group("reason"):
            mode, reason = "fixture", ""
        elif marker.group("kind") == "skip" and marker.group("reason"):
            mode, reason = "skip", marker.group("reason")
        else:
            raise ValueError(f"{page}:{i}: unknown docs-test marker {above.strip()!r}: write "
                             "<!-- docs-test: skip REASON --> or <!-- docs-test: fixture -->")
        blocks.append(Block(page, i + 1, kind, body, mode, reason))
        i = j + 1
    return blocks


ALL_BLOCKS = [b for page in PAGES for b in read_blocks(page)]
CODE_BLOCKS = [b for b in ALL_BLOCKS if b.mode != "text"]
RUN_BLOCKS = [b for b in CODE_BLOCKS if b.mode in ("run", "fixture")]


# ---------------------------------------------------------------------------------------------
# the fixture


def build_fixture(root: Path) -> Path:
    """The working directory of the module docstring, built with the public API."""
    import pairmine
    from pairmine.demo import CHECKPOINT, SAMPLE

    root.mkdir(parents=True, exist_ok=True)
    classes = sorted(p for p in SAMPLE.iterdir() if p.is_dir())
    train: list[tuple[Path, int]] = []
    for label, folder in enumerate(classes):
        files = sorted(folder.glob("*.jpg"))
        for split, chosen in (("train", files[:20]), ("test", files[20:30])):
            for f in chosen:
                target = root / "data" / split / folder.name / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
                if split == "train":
                    train.append((target, label))
    for shard in range(10):
        with tarfile.open(root / "data" / f"shards-{shard:03d}.tar", "w") as tar:
            for path, label in train[shard * 20:(shard + 1) * 20]:
                key = f"{path.parent.name}-{path.stem}"
                tar.add(path, arcname=f"{key}.jpg")
                cls = root / "data" / ".cls"
                cls.write_text(str(label), encoding="utf-8")
                tar.add(cls, arcname=f"{key}.cls")
    (root / "data" / ".cls").unlink()
    lists = root / "lists"
    lists.mkdir()
    rel = [(os.path.relpath(p, lists), label) for p, label in train]
    (lists / "train.txt").write_text("".join(f"{p}\n" for p, _ in rel), encoding="utf-8")
    (lists / "train.csv").write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rel),
                                     encoding="utf-8")
    shutil.copyfile(CHECKPOINT, root / "resnet20.th")
    with chdir(root):
        pairmine.embed("data/train/", "emb/", encoder="cifar-resnet:resnet20.th")
        pairmine.match("emb/", "pairs/", min_score=0.97, max_score=0.99)
        pairmine.export("pairs/", "spps/", fmt="webdataset", combined=True, shard_size=80)
    for name in ("emb", "pairs", "spps"):
        (root / name.upper()).symlink_to(name)
    return root


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fixture(tmp_path_factory.mktemp("docs") / "fixture")


@pytest.fixture(scope="module")
def results(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Run every runnable block, in one subprocess: where -> "" (ran) or the failure."""
    work = tmp_path_factory.mktemp("docs-run")
    spec = work / "spec.json"
    out = work / "results.json"
    spec.write_text(json.dumps({"fixture": str(fixture_dir), "work": str(work),
                                "blocks": [asdict(b) for b in RUN_BLOCKS]}), encoding="utf-8")
    env = {**os.environ, "PATH": f"{work / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg",
           # offline, as the blocks must be (a docs block that needs the network is skipped)
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    (work / "bin").mkdir()
    for name in ("python", "python3"):
        (work / "bin" / name).symlink_to(sys.executable)
    proc = subprocess.run([sys.executable, __file__, str(spec), str(out)], env=env,
                          capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S)
    assert out.exists(), f"the docs driver died (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    found: dict[str, str] = json.loads(out.read_text(encoding="utf-8"))
    return found


# ---------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.where)
def test_block_runs(block: Block, results: dict[str, str]) -> None:
    assert block.where in results, f"{block.where} was not run"
    assert results[block.where] == "", f"{block.where} fails as written:\n{results[block.where]}"


@pytest.mark.parametrize("block", [b for b in CODE_BLOCKS if b.mode == "skip"],
                         ids=lambda b: b.where)
def test_skipped_block_is_checked(block: Block) -> None:
    """Not run (the marker says why); still checked against the CLI or the API."""
    problems = check_bash(block.code) if block.lang == "bash" else check_python(block.code)
    assert not problems, f"{block.where} ({block.reason}):\n" + "\n".join(problems)


@pytest.mark.parametrize("block", [b for b in CODE_BLOCKS if b.mode == "signature"],
                         ids=lambda b: b.where)
def test_generated_signature_parses(block: Block) -> None:
    code = block.code if block.code.lstrip().startswith("class ") else \
        f"def {block.code.strip()}: ..."
    ast.parse(code)


def test_unlabelled_fences_hold_no_commands() -> None:
    """A command in an unlabelled fence would never be tested: label it."""
    bad = [f"{b.where}: {line.strip()}" for b in ALL_BLOCKS if b.mode == "text" and not b.lang
           for line in b.code.splitlines() if COMMAND_LINE.match(line)]
    assert not bad, ("commands in unlabelled fences (use ```bash, marked as "
                     "tests/test_docs_code.py says, or ```text for a synopsis):\n"
                     + "\n".join(bad))


def test_every_page_was_read() -> None:
    assert len(PAGES) > 5 and CODE_BLOCKS
    assert {b.page for b in RUN_BLOCKS} >= {"docs/training-with-spps.md"}


def test_cli_check_catches_what_it_must() -> None:
    """The checker itself: a missing required option, an unknown option or command fail."""
    assert check_bash("pairmine match emb/ pairs/ --min 0.97 --max 0.99") == []
    assert check_bash("pairmine embed data/ emb/ --encoder moco:ckpt.pth \\\n  --batch-size 64"
                      " && pairmine verify spps/  # a comment") == []
    for bad in ("pairmine embed lists/train.txt emb/",  # --encoder is required
                "pairmine match emb/ pairs/ --minimum 0.9",
                "pairmine mtach emb/ pairs/",
                "python examples/no_such_script.py"):
        assert check_bash(bad), bad
    assert check_python("import pairmine\npairmine.no_such_function()")
    assert check_python("from pairmine.datasets import NoSuchThing")
    assert check_python("def broken(:")
    assert check_python("import pairmine\npairmine.embed('a', 'b')") == []


def test_demo_report_next_steps_parse() -> None:
    """The demo report's "next steps" are commands for a user's own data: they must parse."""
    from pairmine.demo import NEXT_STEPS

    assert check_bash(NEXT_STEPS) == []
    assert len([c for c in shell_commands(NEXT_STEPS) if c[0] == "pairmine"]) >= 8


def test_markers_are_read() -> None:
    text = ("x\n<!-- docs-test: skip needs a GPU -->\n```bash\npairmine demo\n```\n"
            "<!-- docs-test: fixture -->\n```python\nimport pairmine\n```\n```json\n{}\n```\n")
    blocks = parse_blocks(text, "probe.md")
    with pytest.raises(ValueError, match="unknown docs-test marker"):
        parse_blocks("<!-- docs-test: skip -->\n```bash\nls\n```\n", "probe.md")
    assert [(b.lang, b.mode, b.reason) for b in blocks] == [
        ("bash", "skip", "needs a GPU"), ("python", "fixture", ""), ("json", "text", "")]


# ---------------------------------------------------------------------------------------------
# checks without running


def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block, as token lists (comments, continuations and
    ``&&``, ``||``, ``;``, ``|`` handled; ``$VAR`` left as written)."""
    commands: list[list[str]] = []
    text = code.replace("\\\n", " ")
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        try:
            tokens = list(lexer)
        except ValueError:  # unbalanced quotes in a fragment: not a command of ours
            continue
        for token in tokens:
            if token and set(token) <= set(";&|()<>"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return commands


def check_bash(code: str) -> list[str]:
    problems: list[str] = []
    for tokens in shell_commands(code):
        for i, token in enumerate(tokens):
            if token == "pairmine":
                args = tokens[i + 1:]
            elif token in ("python", "python3") and tokens[i + 1:i + 3] == ["-m", "pairmine"]:
                args = tokens[i + 3:]
            elif token in ("python", "python3") and len(tokens) > i + 1 \
                    and tokens[i + 1].endswith(".py"):
                if not (REPO / tokens[i + 1]).is_file():
                    problems.append(f"{shlex.join(tokens)}: no script {tokens[i + 1]} in the "
                                    "repository")
                break
            else:
                continue
            error = check_cli(args)
            if error:
                problems.append(f"pairmine {shlex.join(args)}: {error}")
            break
    return problems


def check_cli(args: list[str]) -> str | None:
    """Parse ``pairmine ARGS`` with click, as the CLI would, without invoking anything."""
    import click

    from pairmine.cli import cli

    try:
        ctx = cli.make_context("pairmine", list(args))
        command: click.Command = cli
        rest = [*ctx._protected_args, *ctx.args]
        while isinstance(command, click.Group) and rest:
            name, sub, rest = command.resolve_command(ctx, rest)
            if sub is None:
                return f"no command {name!r}"
            ctx = sub.make_context(name or sub.name or "", rest, parent=ctx)
            command = sub
            rest = [*ctx._protected_args, *ctx.args] if isinstance(sub, click.Group) else []
    except click.exceptions.Exit:  # --help, --version
        return None
    except click.ClickException as exc:
        return " ".join(exc.format_message().split())
    return None


def check_python(code: str) -> list[str]:
    """Compiles, and every name taken from pairmine exists."""
    import importlib

    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"does not compile: {exc}"]
    problems: list[str] = []

    def resolve(module: str, attrs: list[str]) -> None:
        try:
            obj: Any = importlib.import_module(module)
        except ImportError as exc:
            problems.append(f"cannot import {module}: {exc}")
            return
        for attr in attrs:
            if not hasattr(obj, attr):
                try:  # a submodule not imported by its package
                    obj = importlib.import_module(f"{obj.__name__}.{attr}")
                    continue
                except (ImportError, AttributeError):
                    problems.append(f"{module}.{'.'.join(attrs)}: no {attr!r}")
                    return
            obj = getattr(obj, attr)

    aliases: dict[str, str] = {}  # local name -> pairmine module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pairmine":
                    resolve(alias.name, [])
                    aliases[alias.asname or alias.name.split(".")[0]] = \
                        alias.name if alias.asname else "pairmine"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pairmine"):
            for alias in node.names:
                resolve(str(node.module), [alias.name])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases:
            resolve(aliases[node.value.id], [node.attr])
    return problems


# ---------------------------------------------------------------------------------------------
# the driver: `python tests/test_docs_code.py SPEC OUT` runs the blocks of SPEC page by page


def _drive(spec_path: str, out_path: str) -> None:
    import traceback

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    fixture, work = Path(spec["fixture"]), Path(spec["work"])
    results: dict[str, str] = {}
    pages: dict[str, list[dict[str, Any]]] = {}
    for block in spec["blocks"]:
        pages.setdefault(block["page"], []).append(block)
    for number, (page, blocks) in enumerate(pages.items()):
        base = work / f"page-{number:02d}"
        fixture_copy, empty = base / "fixture", base / "empty"
        shutil.copytree(fixture, fixture_copy, symlinks=True)
        empty.mkdir(parents=True)
        namespace: dict[str, Any] = {"__name__": "__docs__"}
        for block in blocks:
            where = f"{page}:{block['line']}"
            cwd = fixture_copy if block["mode"] == "fixture" else empty
            os.chdir(cwd)
            if block["lang"] == "python":
                try:
                    exec(compile(block["code"], where, "exec"), namespace)
                    results[where] = ""
                except BaseException:  # reported; the next block runs all the same
                    results[where] = traceback.format_exc(limit=-8)
            else:
                try:
                    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", block["code"]],
                                          capture_output=True, text=True, cwd=cwd,
                                          timeout=BASH_TIMEOUT_S)
                    results[where] = "" if proc.returncode == 0 else (
                        f"exit code {proc.returncode}\n{proc.stdout[-2000:]}\n"
                        f"{proc.stderr[-3000:]}")
                except subprocess.TimeoutExpired:
                    results[where] = f"still running after {BASH_TIMEOUT_S} s"
        os.chdir(work)
        Path(out_path).write_text(json.dumps(results), encoding="utf-8")  # as far as it got
    Path(out_path).write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    _drive(sys.argv[1], sys.argv[2])
