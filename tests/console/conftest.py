"""A real ``maas serve`` and one Debian Chromium driven by Playwright, shared by the
browser tests of this package.

Playwright's own browser download cannot work here (no internet at test time), so
the tests launch the system's Chromium (``apt-get install chromium``, which
``.ci/run`` does on a fresh machine). Every page a test opens is watched: a console
error, an uncaught exception, a failed request or an HTTP error answer fails the
test unless the test declares it expected (``watch.allow``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from maas.config import Settings
from maas.registry.store import Registry
from tests.e2e import conftest as e2e
from tests.e2e.conftest import LiveServer, start_server
from tests.helpers import make_onnx_file, make_tiny_bert
from tests.media_models import make_diffusion_dir, make_vits_dir, make_whisper_dir

CHROMIUM = Path("/usr/bin/chromium")
smollm2_gguf = e2e.smollm2_gguf  # the e2e tests' fixture, shared here
XSS = "<img src=x onerror=alert(1)>"


# Module scope, not session: Playwright's sync API keeps an event loop running on the main
# thread while it is open, and every later test that calls asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def console_server(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path
) -> Iterator[LiveServer]:
    """Two versions of a tiny ONNX model, a model with a hostile description, a tiny BERT
    classifier and SmolLM2."""
    home = tmp_path_factory.mktemp("console-home")
    onnx = make_onnx_file(tmp_path_factory.mktemp("onnx") / "model.onnx")
    bert = make_tiny_bert(tmp_path_factory.mktemp("bert") / "sentiment", classifier=True)
    registry = Registry(Settings(home=home))
    try:
        registry.push(onnx.parent, "affine", task="tensor")
        registry.push(onnx.parent, "affine", task="tensor")
        registry.create_model("hostile", "tensor", description=XSS)
        registry.push(bert, "sentiment", task="text-classification")
        registry.push(smollm2_gguf, "smollm2")
        registry.push(_words_dataset(tmp_path_factory.mktemp("words")), "words", task="dataset")
        media = tmp_path_factory.mktemp("media")
        registry.push(make_whisper_dir(media / "whisper"), "whisper")
        registry.push(make_vits_dir(media / "vits"), "vits")
        registry.push(make_diffusion_dir(media / "diffusion"), "diffusion")
    finally:
        registry.close()
    yield from start_server(home, {"MAAS_KV_CACHE_TOKENS": "2048"})


def _words_dataset(root: Path) -> Path:
    """A tiny text dataset in the tiny BERT's ten-word vocabulary: "good" is pos, "bad" neg."""
    rows = [
        {"text": f"a {word} {noun}", "label": "pos" if word == "good" else "neg"}
        for word in ("good", "bad")
        for noun in ("film", "day")
    ]
    splits = {"train": rows * 6, "validation": rows, "test": rows}
    meta = {"kind": "text", "label_names": ["neg", "pos"], "slice_columns": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    for split, records in splits.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@dataclass
class Watch:
    """What went wrong on a page, as Playwright's event listeners saw it."""

    problems: list[str] = field(default_factory=list)
    allowed: set[int] = field(default_factory=set)
    confirms: int = 0

    def allow(self, *statuses: int) -> None:
        self.allowed.update(statuses)

    def expect_confirm(self) -> None:
        """The next dialog is a confirm() the test means to accept."""
        self.confirms += 1

    def _failed(self, request: Any) -> None:
        # A live region's poll still in flight when the page navigates away is aborted by
        # the browser: that is the navigation, not a broken request.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"request failed: {request.url} {request.failure}")

    def _dialog(self, dialog: Any) -> None:
        if dialog.type == "confirm" and self.confirms > 0:
            self.confirms -= 1
            dialog.accept()
            return
        self.problems.append(f"unexpected {dialog.type} dialog: {dialog.message}")
        dialog.dismiss()

    def attach(self, page: Any) -> None:
        page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
            ),
        )
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.on(
            "response",
            lambda r: (
                self.problems.append(f"HTTP {r.status}: {r.url}")
                if r.status >= 400 and r.status not in self.allowed
                else None
            ),
        )
        page.on("dialog", self._dialog)


@dataclass
class Console:
    server: LiveServer
    page: Any
    watch: Watch
    shots: Path

    def goto(self, path: str) -> Any:
        return self.page.goto(self.server.url + path)  # waits for "load": scripts have run

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def sign_in(self, key: str) -> None:
        self.goto("/console")
        self.page.fill("#key", key)
        with self.page.expect_navigation():
            self.page.click("button[type=submit]")

    def csrf(self) -> str:
        return str(self.page.get_attribute('meta[name="csrf-token"]', "content"))


def open_console(
    browser: Any, server: LiveServer, shots: Path, **context_options: Any
) -> Iterator[Console]:
    """A fresh browser context (its own cookies) watched for errors (a fixture body)."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    watch = Watch()
    watch.attach(page)
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield Console(server, page, watch, shots)
        assert watch.problems == []
    finally:
        context.close()


@pytest.fixture
def console(
    browser: Any, console_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Console]:
    yield from open_console(browser, console_server, shots_dir(tmp_path_factory))


def shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "console-screenshots"
