"""Every command's ``--help`` shows examples, and each example runs as shown.

The convention, for whoever writes a command: its help (docstring, or the ``help=`` it is
registered with) ends with a ``\\b`` paragraph headed ``Examples:``, one command line per
line, a long one continued with a trailing backslash; it must fit an 80-column terminal
(a wrapped line is an error here). ``#`` starts a remark. ``JOB_ID`` stands for the id
``maas jobs list`` prints. The examples of one command run in order, in local mode, on a
copy of one prepared ``MAAS_HOME`` and working directory that hold what they name:

* ``minilm`` (embeddings), ``reviews-clf`` versions 1 and 2 (text classifiers, tiny random
  BERTs; version 2 carries int8-like metrics), the ``reviews`` dataset, key 2 (``team-a``),
  and one finished ``evaluate`` job;
* ``./my-model`` (a sentence-encoder directory), ``model.onnx``, ``model.gguf`` (a tiny
  Llama), ``reviews.csv``, and master keys ``master.key`` and ``master-2.key``.

An example that runs a job and that ``tests/test_docs_run.py`` also runs word for word (a
line of the jobs walkthrough the docs execute against a server) is run there only: that
test asserts at least as much (exit status 0 under ``set -e``, then the output the docs
show), and a job costs seconds. Where the docs test cannot run, every example runs here.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shlex
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from maas.cli.main import app
from maas.config import Settings
from maas.jobs.base import JOB_KINDS
from maas.registry.store import Registry
from maas.security.keys import KeyStore
from tests.helpers import make_onnx_file, make_tiny_bert

runner = CliRunner()
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
WITHOUT_EXAMPLES = {("serve",)}  # starts a server: see README.md's `make run`


def _commands() -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """Every command path (the root, each group, each leaf) and the leaves alone."""
    every: list[tuple[str, ...]] = []
    leaves: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        every.append(path)
        subcommands = getattr(command, "commands", None)  # a group (typer vendors click)
        if not isinstance(subcommands, dict):
            leaves.append(path)
            return
        for name in sorted(subcommands):
            walk(subcommands[name], (*path, name))

    walk(typer.main.get_command(app), ())
    return every, leaves


COMMANDS, LEAVES = _commands()


@functools.cache  # the help of a command is fixed: collection and every test read it
def help_text(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.stdout


def _with_examples() -> list[tuple[str, ...]]:
    """Commands whose help shows examples (groups may not; every leaf must, see below)."""
    return [path for path in COMMANDS if examples(help_text(path))]


def examples(text: str) -> list[str]:
    """The command lines under "Examples:", continuations joined, remarks removed."""
    lines = [line.strip() for line in text.splitlines()]
    if "Examples:" not in lines:
        return []
    found: list[str] = []
    pending = ""
    for line in lines[lines.index("Examples:") + 1 :]:
        if not line or line.startswith(("╭", "│", "╰")):
            break
        line = pending + line
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        command = re.split(r"\s{2,}#|\s#\s", line)[0].strip()
        words = shlex.split(command)
        while words and ASSIGNMENT.match(words[0]):
            words.pop(0)
        assert words[:1] == ["maas"], f"not a maas command line (wrapped?): {line!r}"
        found.append(command)
    assert not pending, f"an example ends with a continuation: {pending!r}"
    return found


def test_every_command_but_serve_shows_examples_that_fit_80_columns() -> None:
    missing = [
        " ".join(p) for p in LEAVES if p not in WITHOUT_EXAMPLES and not examples(help_text(p))
    ]
    assert missing == []
    assert examples(help_text(())), "maas --help shows no examples"


def test_examples_are_parsed_with_continuations_and_remarks() -> None:
    text = "Examples:\n  maas a --x 1 \\\n      --y '{\"k\": 1}'   # remark\n  K=v maas b\n\n Other"
    assert examples(text) == ["maas a --x 1 --y '{\"k\": 1}'", "K=v maas b"]


@dataclass(frozen=True)
class Prepared:
    home: Path
    workdir: Path
    job_id: str


def _local(home: Path) -> dict[str, str | None]:
    """Local mode on ``home``, whatever the test's own environment says (None unsets)."""
    return {"MAAS_HOME": str(home), "MAAS_URL": None, "MAAS_API_KEY": None}


def _invoke(line: str, env: dict[str, str | None]) -> Result:
    words = shlex.split(line)
    extra: dict[str, str | None] = {}
    while ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        extra[name] = value
    assert words[0] == "maas"
    with warnings.catch_warnings():
        # What the command prints is under test, not the libraries' deprecation notices.
        warnings.simplefilter("ignore")
        return runner.invoke(app, words[1:], env={**env, **extra})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prepared]:
    from tests.registry.test_gguf import write_tiny_llama_gguf

    root = tmp_path_factory.mktemp("help-examples")
    home, workdir, models = root / "home", root / "work", root / "models"
    workdir.mkdir()
    encoder = make_tiny_bert(workdir / "my-model", classifier=False)
    (encoder / "modules.json").write_text(  # a sentence-transformers directory: embeddings
        json.dumps(
            [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.Transformer"}]
        )
    )
    make_onnx_file(workdir / "model.onnx")
    write_tiny_llama_gguf(workdir / "model.gguf")
    for name in ("master.key", "master-2.key"):
        (workdir / name).write_text(base64.b64encode(os.urandom(32)).decode())
    rows = [
        f"{s} was {w},{int(w in ('good', 'great'))}"
        for s in ("the film", "a day", "dinner")
        for w in ("good", "great", "bad", "awful", "dull")
    ]
    (workdir / "reviews.csv").write_text("review,stars\n" + "\n".join(rows) + "\n")

    settings = Settings(home=home)
    registry = Registry(settings)
    try:
        KeyStore(registry.db).bootstrap_admin(settings.admin_key_file)  # key 1, as serve makes
        registry.push(encoder, "minilm", task="embeddings")
        classifier = make_tiny_bert(models / "clf", classifier=True)
        registry.push(classifier, "reviews-clf", task="text-classification")
        registry.push(
            classifier,
            "reviews-clf",
            metrics={"accuracy": 0.95, "latency_ms_bs1": 3.5},
            description="stands in for the int8 version",
        )
        _labelled_feedback(registry)
    finally:
        registry.close()
    env = _local(home)
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        for line in (
            "maas datasets add reviews.csv --name reviews --text-column review "
            '--label-column stars --label-map \'{"0": "neg", "1": "pos"}\' --splits 0.6,0.2,0.2',
            "maas keys create --name team-a --scope infer",
        ):
            result = _invoke(line, env)
            assert result.exit_code == 0, (line, result.output)
        result = _invoke("maas evaluate --model reviews-clf:1 --dataset reviews --json", env)
        assert result.exit_code == 0, result.output
        job_id = json.loads(result.stdout)["id"]
    finally:
        os.chdir(cwd)
    yield Prepared(home, workdir, job_id)


def _labelled_feedback(registry: Registry) -> None:
    """Six predictions of reviews-clf:1 with captured inputs and labels (maas feedback)."""
    from datetime import UTC, datetime

    from maas.registry.feedback import PredictionRecord, attach_feedback, write_predictions

    texts = ["the film was good", "dinner was awful", "a great day", "a dull film"] * 2
    records = [
        PredictionRecord(
            f"pred-{i:024x}",
            0,
            "reviews-clf",
            1,
            "text-classification",
            datetime.now(UTC),
            output_label="pos",
            input_text=text,
        )
        for i, text in enumerate(texts[:6])
    ]
    write_predictions(registry.db, records)
    for i, record in enumerate(records):
        label = "pos" if i % 2 == 0 else "neg"
        attach_feedback(registry.db, record.prediction_id, 0, label=label, score=None, key_id=1)


WITH_EXAMPLES = _with_examples()


def _run_by_the_docs() -> frozenset[str]:
    """Job examples (as shlex words joined by spaces) that tests/test_docs_run.py runs."""
    from tests import test_docs_run

    if not test_docs_run.runs_here():
        return frozenset()
    return frozenset(
        line
        for line in test_docs_run.maas_command_lines()
        if line.split(" ")[1:2] and line.split(" ")[1] in JOB_KINDS
    )


RUN_BY_THE_DOCS = _run_by_the_docs()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", WITH_EXAMPLES, ids=[" ".join(p) or "maas" for p in WITH_EXAMPLES])
def test_the_examples_of_a_command_run_as_shown(
    path: tuple[str, ...],
    prepared: Prepared,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = examples(help_text(path))
    home, workdir = tmp_path / "home", tmp_path / "work"
    shutil.copytree(prepared.home, home)
    shutil.copytree(prepared.workdir, workdir)
    monkeypatch.chdir(workdir)
    env = _local(home)
    job_id = prepared.job_id
    if path == ("jobs", "cancel"):  # only a job that has not finished can be cancelled
        queued = _invoke("maas evaluate --model reviews-clf:1 --dataset reviews --detach", env)
        assert queued.exit_code == 0, queued.output
        job_id = queued.stdout.strip()
    assert lines
    for line in lines:
        if " ".join(shlex.split(line)) in RUN_BY_THE_DOCS:
            continue  # tests/test_docs_run.py runs this very line (see the module docstring)
        result = _invoke(line.replace("JOB_ID", job_id), env)
        assert result.exit_code == 0, (
            f"{line}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
