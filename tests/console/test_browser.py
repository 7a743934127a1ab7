"""The console in a real Chromium (Playwright) against a real ``maas serve``.

Few tests, one browser: each test signs in once and walks a whole story. Every page
is watched for console errors, failed requests and HTTP errors (``conftest.Watch``)
and saved as a screenshot under pytest's base temporary directory
(``console-screenshots/``).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console.conftest import XSS, Console, open_console, shots_dir
from tests.e2e.conftest import LiveServer
from tests.helpers import make_onnx_file

pytestmark = pytest.mark.slow

PAGES = (
    "/console/models",
    "/console/models/affine",
    "/console/serving",
    "/console/playground",
    "/console/jobs",
    "/console/keys",
    "/console/usage",
    "/console/audit",
)


def _key(server: LiveServer, name: str, scopes: list[str]) -> dict[str, Any]:
    r = httpx.post(
        f"{server.url}/admin/v1/keys",
        json={"name": name, "scopes": scopes},
        headers={"Authorization": f"Bearer {server.key}"},
    )
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def test_every_page_renders_without_errors_with_a_strict_csp(console: Console) -> None:
    response = console.goto("/console")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    console.shot("signin")
    console.sign_in(console.server.key)
    assert console.page.url.endswith("/console/models")
    for path in PAGES:
        console.goto(path)
        assert console.page.locator("h1").count() == 1, path
        console.shot(path.strip("/").replace("/", "-"))
    # The session cookie is HttpOnly: page scripts cannot read it, nor the key.
    assert console.page.evaluate("document.cookie") == ""
    assert console.server.key not in console.page.content()


def test_a_phone_width_screen_renders_the_models_page(
    browser: Any, console_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for phone in open_console(
        browser, console_server, shots_dir(tmp_path_factory), viewport={"width": 390, "height": 844}
    ):
        phone.sign_in(console_server.key)
        phone.goto("/console/models/affine")
        phone.shot("phone-model")
        # Wide tables scroll inside their own box; the page itself does not scroll sideways.
        overflow = phone.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        assert phone.page.locator("nav a", has_text="Serving").is_visible()


def test_a_model_description_with_markup_renders_as_text(console: Console) -> None:
    console.sign_in(console.server.key)
    console.goto("/console/models/hostile")
    assert console.page.locator("#description").inner_text() == XSS
    assert console.page.locator("main img").count() == 0
    console.goto("/console/models?q=hostile")
    assert console.page.locator("#models td.desc").inner_text() == XSS
    # Edited through the console, markup in tags stays text as well.
    console.goto("/console/models/hostile")
    console.page.click("#edit-model >> xpath=.. >> summary")
    console.page.fill("#edit-tags", json.dumps({"team": XSS}))
    with console.page.expect_navigation():
        console.page.click("#edit-model button[type=submit]")
    assert console.page.locator(".tag", has_text="team=").inner_text() == f"team={XSS}"
    assert console.page.locator("#description").inner_text() == XSS
    assert console.page.locator("main img").count() == 0
    console.shot("xss-escaped")  # the watch fails the test on any alert() dialog


def test_push_a_model_by_upload_and_see_it_listed(console: Console, tmp_path: Path) -> None:
    onnx = make_onnx_file(tmp_path / "uploaded.onnx")
    console.sign_in(console.server.key)
    console.goto("/console/models")
    console.page.fill("#push-name", "uploaded")
    console.page.select_option("#push-task", "tensor")
    console.page.set_input_files("#push-file", str(onnx))
    console.page.click("#push button[type=submit]")
    console.page.wait_for_url("**/console/models/uploaded")
    assert console.page.locator("#versions tbody tr").count() == 1
    console.goto("/console/models")
    assert console.page.locator("#models a", has_text="uploaded").count() == 1


def test_move_an_alias_then_roll_it_back_and_history_shows_both(console: Console) -> None:
    page = console.page
    console.sign_in(console.server.key)
    console.goto("/console/models/affine")
    for version in ("1", "2"):
        page.fill("#alias-name", "production")
        page.select_option("#alias-version", version)
        with page.expect_navigation():
            page.click("#set-alias button[type=submit]")
    assert "production" in page.locator("#aliases").inner_text()
    assert page.locator("#aliases tbody tr td.num").first.inner_text() == "2"
    console.watch.expect_confirm()
    with page.expect_navigation():
        page.locator("#aliases button", has_text="Roll back").click()
    page.wait_for_load_state("networkidle")
    assert page.locator("#aliases tbody tr td.num").first.inner_text() == "1"
    rows = [r.split("\t") for r in page.locator("#history tbody tr").all_inner_texts()]
    moves = [(r[2].strip(), r[3].strip()) for r in rows]
    assert moves[:3] == [("2", "1"), ("1", "2"), ("–", "1")]
    console.shot("alias-rolled-back")


def test_create_a_key_see_its_secret_once_then_revoke_it(console: Console) -> None:
    page = console.page
    console.sign_in(console.server.key)
    console.goto("/console/keys")
    page.fill("#key-name", "ci-runner")
    page.fill("#key-rpm", "60")
    page.click("#create-key button[type=submit]")
    secret = page.locator("#secret-value")
    secret.wait_for(state="visible")
    value = secret.inner_text()
    assert re.fullmatch(r"maas-sk-\S+", value)
    console.shot("key-secret-once")
    with page.expect_navigation():
        page.click("#secret-close")  # closing the dialog reloads the list
    page.wait_for_load_state("networkidle")
    assert value not in page.content()
    row = page.locator("#keys tbody tr", has_text="ci-runner")
    assert row.locator("input[name=rpm_limit]").input_value() == "60"
    # Edit its limits in place.
    row.locator("input[name=rpm_limit]").fill("120")
    with page.expect_navigation():
        row.locator("button", has_text="Save").click()
    row = page.locator("#keys tbody tr", has_text="ci-runner")
    assert row.locator("input[name=rpm_limit]").input_value() == "120"
    # The new key works until it is revoked.
    auth = {"Authorization": f"Bearer {value}"}
    assert httpx.get(f"{console.server.url}/v1/models", headers=auth).status_code == 200
    console.watch.expect_confirm()
    with page.expect_navigation():
        row.locator("button", has_text="Revoke").click()
    page.wait_for_load_state("networkidle")
    assert "revoked" in page.locator("#keys tbody tr", has_text="ci-runner").inner_text()
    assert httpx.get(f"{console.server.url}/v1/models", headers=auth).status_code == 401


def test_a_read_key_finds_no_revoke_button_and_a_forged_call_is_refused(
    console: Console,
) -> None:
    victim = _key(console.server, "victim", ["infer"])["info"]["id"]
    created = _key(console.server, "reader", ["read"])
    reader = created["key"]
    console.sign_in(reader)
    console.goto("/console/keys")
    console.shot("keys-read-only")
    assert console.page.locator("button", has_text="Revoke").count() == 0
    console.watch.allow(403)  # the refusals below are the point of this test
    forged = """async ([url, token]) => {
        const headers = token ? {"X-CSRF-Token": token} : {};
        const r = await fetch(url, {method: "DELETE", headers});
        return [r.status, await r.json()];
    }"""
    url = f"/console/api/admin/v1/keys/{victim}"
    status, body = console.page.evaluate(forged, [url, console.csrf()])
    assert status == 403 and body["error"]["type"] == "permission_error"
    status, body = console.page.evaluate(forged, [url, ""])
    assert status == 403 and "CSRF" in body["error"]["message"]
    console.watch.problems = [p for p in console.watch.problems if "403" not in p]
    r = httpx.get(
        f"{console.server.url}/admin/v1/keys/{victim}",
        headers={"Authorization": f"Bearer {console.server.key}"},
    )
    assert r.json()["revoked_at"] is None
    # Revoking the reader ends its session: the live job list notices and signs out.
    console.goto("/console/jobs")
    httpx.delete(
        f"{console.server.url}/admin/v1/keys/{created['info']['id']}",
        headers={"Authorization": f"Bearer {console.server.key}"},
    )
    console.page.wait_for_url(console.server.url + "/console", timeout=15_000)
    assert console.page.locator("#key").is_visible()


def test_the_playground_streams_chat_classifies_and_sends_v2_tensors(console: Console) -> None:
    page = console.page
    console.sign_in(console.server.key)
    console.goto("/console/playground")
    # Count how often the answer's text changes while it streams in.
    page.evaluate(
        """() => {
        window.updates = 0;
        new MutationObserver(() => window.updates++).observe(
            document.getElementById("chat-log"),
            {subtree: true, childList: true, characterData: true});
    }"""
    )
    page.fill("#chat-input", "Name three colours.")
    page.fill("#chat-max", "24")
    page.fill("#chat-temp", "0")
    page.click("#chat-form button[type=submit]")
    page.locator("#chat-usage").filter(has_text="completion tokens").wait_for()
    answer = page.locator(".msg.assistant").inner_text()
    assert answer.strip()
    assert page.evaluate("window.updates") > 3  # user bubble, empty answer, then chunks
    # The V2 editor sends its JSON as it stands to /v2/models/<model>/infer.
    page.select_option("#v2-model", "affine")
    page.click("#v2-form button[type=submit]")
    page.locator("#v2-result").filter(has_text="outputs").wait_for()
    assert json.loads(page.locator("#v2-result").inner_text())["outputs"][0]["shape"] == [1, 3]
    # Classification with attributions: one highlighted span per model token.
    page.fill("#explain-input", "a good film")
    page.click("#explain-form button[type=submit]")
    page.locator("#explain-result").filter(has_text="p = ").wait_for(timeout=60_000)
    assert page.locator("#explain-tokens .tok").count() >= 2  # [CLS] ... [SEP] at least
    console.shot("playground")


def test_the_playground_transcribes_speaks_and_draws(console: Console, tmp_path: Path) -> None:
    import numpy as np
    import soundfile

    wav = tmp_path / "tone.wav"
    seconds = np.arange(16_000 * 2) / 16_000
    soundfile.write(wav, (0.3 * np.sin(2 * np.pi * 440 * seconds)).astype(np.float32), 16_000)
    page = console.page
    console.sign_in(console.server.key)
    console.goto("/console/playground")
    page.set_input_files("#transcribe-file", str(wav))
    page.click("#transcribe-form button[type=submit]")
    result = page.locator("#transcribe-result")
    result.filter(has_not_text="…").wait_for(timeout=120_000)
    assert "error" not in result.inner_text().lower()
    page.fill("#speech-input", "hello there")
    page.click("#speech-form button[type=submit]")
    page.locator("#speech-status", has_text="KB of WAV").wait_for(timeout=120_000)
    assert page.locator("#speech-audio").get_attribute("src", timeout=1000).startswith("blob:")
    page.fill("#image-prompt", "a red square")
    page.fill("#image-steps", "2")
    page.click("#image-form button[type=submit]")
    page.locator("#image-status", has_text="seed 0").wait_for(timeout=120_000)
    source = page.locator("#image-result").get_attribute("src") or ""
    assert source.startswith("data:image/png;base64,")
    console.shot("playground-media")


def test_a_job_started_from_the_form_reaches_100_percent_and_its_report_opens(
    console: Console,
) -> None:
    page = console.page
    console.sign_in(console.server.key)
    console.goto("/console/jobs")
    page.select_option("#job-kind", "train")
    spec = {"base": "sentiment:1", "dataset": "words", "epochs": 2, "batch_size": 8}
    page.fill("#job-spec", json.dumps(spec))
    with page.expect_navigation():
        page.click("#start-job button[type=submit]")
    page.locator("#job-status", has_text="succeeded").wait_for(timeout=60_000)
    assert page.locator("#job-percent").inner_text() == "100 %"
    console.shot("job-succeeded")
    with page.context.expect_page() as opened:
        page.click("#report-link")
    report = opened.value
    report.wait_for_load_state()
    assert "Training report" in report.locator("h1").inner_text()
    report.close()


def test_load_pin_and_unload_a_version_from_the_serving_page(console: Console) -> None:
    page = console.page
    console.sign_in(console.server.key)
    console.goto("/console/serving")
    page.select_option("#load-model", "affine")
    page.fill("#load-version", "1")
    with page.expect_navigation():
        page.click("#load button[type=submit]")
    row = page.locator("#loaded-models tbody tr", has_text="affine:1")
    assert row.locator("td").nth(4).inner_text() == "no"
    with page.expect_navigation():
        row.locator("button", has_text="Pin").click()
    # The pin is a deployment record that the server's reconciler applies (within its
    # 0.25 s poll, a pass of its own): the page may render before that pass has run.
    row = _row_once(page, "affine:1", lambda r: r.locator("td").nth(4).inner_text() == "yes")
    console.shot("serving-pinned")
    with page.expect_navigation():
        row.locator("button", has_text="Unpin").click()
    row = _row_once(page, "affine:1", lambda r: r.locator("td").nth(4).inner_text() == "no")
    with page.expect_navigation():
        row.locator("button", has_text="Unload").click()
    _row_once(page, "affine:1", lambda r: r.count() == 0)


def _row_once(page: Any, ref: str, done: Any, timeout: float = 20.0) -> Any:
    """The serving page's row of ``ref`` once ``done(row)`` holds, reloading meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        row = page.locator("#loaded-models tbody tr", has_text=ref)
        if done(row):
            return row
        assert time.monotonic() < deadline, f"{ref}: the serving page never showed the change"
        time.sleep(0.25)
        page.reload()
