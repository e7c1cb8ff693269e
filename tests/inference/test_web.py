"""`glmtune web` in a real headless Chromium (Debian's package) driven by playwright.

Marked `browser` (make test-browser): it needs gradio, playwright and a Chromium binary (GLMTUNE_CHROMIUM, or
/usr/bin/chromium); without them it skips. With GLMTUNE_SCREENSHOTS=DIR it leaves a screenshot of each tab there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_server

pytestmark = pytest.mark.browser
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")
httpx = pytest.importorskip("httpx")
CHROMIUM = os.environ.get("GLMTUNE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("no Chromium binary (apt-get install -y chromium)", allow_module_level=True)

QUESTION = "你是谁？"


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("labels") / "labelled.jsonl"


@pytest.fixture(scope="module")
def page_url(tiny_dir, labels, tmp_path_factory):
    log = tmp_path_factory.mktemp("web") / "web.log"
    with cli_server(["web", str(tiny_dir), "--data", str(labels)], "/", log) as url:
        yield url + "/"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, page_url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(page_url)
    page.wait_for_selector("#message textarea", timeout=60_000)
    yield page
    page.close()


def _screenshot(page, name: str) -> None:
    folder = os.environ.get("GLMTUNE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def _bot_text(page) -> str:
    messages = page.locator("#tuned .message-row.bot-row, #tuned [data-testid='bot']")
    return messages.last.inner_text().strip() if messages.count() else ""


def test_playground_answer_equals_chat_query(page, tiny_dir):
    expected = subprocess.run(
        [sys.executable, "-m", "glmtune.cli", "chat", str(tiny_dir), "--query", QUESTION, "--max-new-tokens", "24"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    budget = page.locator("#max-new-tokens input[type=number]")
    budget.fill("24")
    budget.press("Enter")
    page.fill("#message textarea", QUESTION)
    page.press("#message textarea", "Enter")
    deadline, seen, stable = time.monotonic() + 300, "", 0
    while time.monotonic() < deadline and stable < 6:
        time.sleep(0.5)
        text = _bot_text(page)
        stable = stable + 1 if text and text == seen else 0
        seen = text
    assert " ".join(seen.split()) == " ".join(expected.split())
    _screenshot(page, "web-playground.png")


def test_labelled_record_lands_in_the_file_and_prepare_accepts_it(page, labels, tiny_dir, tmp_path):
    page.get_by_role("tab", name="Label").click()
    page.fill("#instruction textarea", "你叫什么名字？")
    page.fill("#output textarea", "我叫Glimmer。")
    page.click("#save")
    page.wait_for_function(
        "() => document.querySelector('#status') && document.querySelector('#status').innerText.includes('saved')",
        timeout=30_000,
    )
    _screenshot(page, "web-label.png")
    records = [json.loads(line) for line in labels.read_text(encoding="utf-8").splitlines()]
    assert records[-1]["messages"][-1] == {"role": "assistant", "content": "我叫Glimmer。"}
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[run]\nname = "lab"\noutput_dir = "{tmp_path / "runs"}"\n[model]\npath = "{tiny_dir}"\n'
        f'[data]\ntrain = ["{labels}"]\n',
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "glmtune.cli", "prepare", str(recipe)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_a_record_prepare_would_reject_is_refused_on_the_page(page, labels):
    before = labels.read_text(encoding="utf-8") if labels.exists() else ""
    page.get_by_role("tab", name="Label").click()
    page.fill("#instruction textarea", "Who made you?")
    page.fill("#output textarea", "   ")
    page.click("#save")
    page.get_by_text("empty answer").first.wait_for(timeout=30_000)
    assert (labels.read_text(encoding="utf-8") if labels.exists() else "") == before
