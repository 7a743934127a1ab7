"""One model taken through the job lifecycle once per session, for the tests that read it.

``reviews_lifecycle``: on a fresh ``MAAS_HOME``, in local mode through the CLI, as the
jobs walkthrough does — MiniLM pushed, a review dataset (with a ``group`` column to
slice on) added, ``maas train --follow`` (a few steps from MiniLM: ``sentiment:1``)
and ``maas evaluate`` with per-group metrics. Fine-tuning and evaluating are two job
subprocesses of seconds each; the CLI walkthrough test (tests/jobs/test_jobs_cli.py)
asserts what they printed, the API lifecycle test (tests/api/test_pipeline.py) carries
the version on through quantization and serving, on a copy of the home.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maas.cli.main import app

GOOD = ["great", "wonderful", "excellent", "loved", "fantastic"]
BAD = ["awful", "terrible", "boring", "hated", "dreadful"]
SUBJECTS = ["the film", "this book", "our dinner", "the concert", "that hotel", "the show"]


@dataclass(frozen=True)
class Run:
    """One CLI command: its exit code and what it printed."""

    code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Lifecycle:
    home: Path  # shared by the session's tests: copy it before writing to it
    train: Run
    evaluate: Run


def reviews_csv() -> str:
    """160 short reviews, half positive, each in group ``a`` or ``b``."""
    rng = random.Random(0)
    rows = ["text,label,group"]
    for i in range(160):
        positive = i % 2 == 0
        word = rng.choice(GOOD if positive else BAD)
        rows.append(
            f"{rng.choice(SUBJECTS)} was {word} {i},{int(positive)},{'a' if i % 4 < 2 else 'b'}"
        )
    return "\n".join(rows) + "\n"


def copy_home(template: Path, home: Path) -> None:
    """A private copy of ``template``: its blobs (immutable, content-addressed) linked,
    everything else (the database above all) copied."""
    blobs = template / "blobs"

    def copy(src: str, dst: str) -> object:
        if Path(src).is_relative_to(blobs):
            os.link(src, dst)
            return dst
        return shutil.copy2(src, dst)

    shutil.copytree(template, home, copy_function=copy)


def _maas(home: Path, *args: str) -> Run:
    result = CliRunner().invoke(app, ["--home", str(home), *args])
    return Run(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def reviews_lifecycle(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Lifecycle:
    root = tmp_path_factory.mktemp("lifecycle")
    home = root / "home"
    source = root / "reviews.csv"
    source.write_text(reviews_csv())
    pushed = _maas(
        home, "models", "push", str(minilm_dir), "--name", "minilm", "--task", "embeddings"
    )
    assert pushed.code == 0 and pushed.stdout.strip() == "minilm:1", pushed
    added = _maas(
        home, "datasets", "add", str(source), "--name", "reviews", "--text-column", "text",
        "--label-column", "label", "--label-map", '{"0": "neg", "1": "pos"}',
        "--slice-column", "group", "--dedup", "--seed", "0",
    )  # fmt: skip
    assert added.code == 0 and added.stdout.strip() == "reviews:1", added
    train = _maas(
        home, "train", "--base", "minilm", "--dataset", "reviews", "--output", "sentiment",
        "--batch-size", "16", "--lr", "5e-4", "--set", "max_steps=24", "--set", "max_length=32",
        "--seed", "0", "--follow",
    )  # fmt: skip
    evaluate = _maas(
        home, "evaluate", "--model", "sentiment:1", "--dataset", "reviews",
        "--set", "slice_column=group", "--seed", "0",
    )  # fmt: skip
    return Lifecycle(home, train, evaluate)
