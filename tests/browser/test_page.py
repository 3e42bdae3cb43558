"""The web page in real headless Chromium (Debian's chromium, driven by Playwright).

Each state the page reaches is saved as a screenshot in test-artifacts/screenshots/.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.serverproc import ServerProcess, running_server

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # installed by `make test`
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]



@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--parallel", "2") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, server: ServerProcess) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(server.base_url + "/")
    yield pg
    context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def idle(server: ServerProcess) -> bool:
    return not any(s["is_processing"] for s in httpx.get(server.base_url + "/slots").json())


def test_page_loads(page: Page) -> None:
    expect(page).to_have_title("Sluice")
    expect(page.locator("#model-name")).to_have_text("gemma-3-270m-q4_k_m.gguf")
    shot(page, "01-loaded")


def test_chat_streams_visible_tokens(page: Page) -> None:
    page.fill("#max_tokens", "24")
    page.fill("#chat-input", "Tell me about rivers.")
    page.click("#chat-form button[type=submit]")
    reply = page.locator(".msg.assistant").last
    expect(reply).not_to_have_text("")
    expect(page.locator("#stats")).to_contain_text("tok/s")
    expect(page.locator("#stop")).to_be_disabled()
    assert page.locator(".msg.user").last.inner_text() == "Tell me about rivers."
    assert "first token after" in page.locator("#stats").inner_text()
    shot(page, "02-chat")


def test_stop_ends_a_long_generation_and_frees_the_slot(page: Page,
                                                       server: ServerProcess) -> None:
    page.click("[data-tab=completion]")
    page.fill("#max_tokens", "4000")
    page.fill("#completion-prompt", "Once upon a time")
    page.click("#completion-form button[type=submit]")
    out = page.locator("#completion-output")
    expect(out).not_to_have_text("")
    page.wait_for_function("document.getElementById('completion-output').textContent.length > 40")
    assert not idle(server)
    page.click("#stop")
    expect(page.locator("#stats")).to_contain_text("stopped")
    page.wait_for_timeout(300)
    length = len(out.inner_text())
    for _ in range(20):
        if idle(server):
            break
        page.wait_for_timeout(50)
    assert idle(server)
    page.wait_for_timeout(300)
    assert len(out.inner_text()) == length  # nothing arrives after the stop
    shot(page, "03-stopped")


def test_extraction_shows_valid_json_and_badge(page: Page) -> None:
    page.click("[data-tab=extract]")
    page.fill("#max_tokens", "200")
    page.fill("#temperature", "0")
    expect(page.locator("#gbnf-output")).to_contain_text("root ::=", use_inner_text=False)
    page.click("#extract-run")
    badge = page.locator("#validation-badge")
    expect(badge).to_have_text("valid against the schema")
    import json

    data = json.loads(page.locator("#extract-output").inner_text())
    assert {"name", "age", "city"} <= set(data)
    shot(page, "04-extraction")


def test_bad_schema_shows_its_error(page: Page) -> None:
    page.click("[data-tab=extract]")
    page.fill("#schema-input", '{"type": "object", "properties": {"a": {"type": "hiccup"}}}')
    error = page.locator("#schema-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("/properties/a/type")
    page.click("#extract-run")
    expect(page.locator("#extract-output")).to_have_text("")
    page.fill("#schema-input", "{not json")
    expect(error).to_contain_text("not valid JSON")
    shot(page, "05-bad-schema")


def test_narrow_screen(browser: Browser, server: ServerProcess) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.goto(server.base_url + "/")
    expect(page.locator("#model-name")).to_have_text("gemma-3-270m-q4_k_m.gguf")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    settings_top = page.locator("#settings").bounding_box()
    main_box = page.locator("main").bounding_box()
    assert settings_top
    assert main_box
    assert settings_top["y"] >= main_box["y"] + main_box["height"] - 1
    shot(page, "06-narrow")
    context.close()


def test_errors_are_shown_in_words(browser: Browser, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    from app.engine.model import default_model_path

    (models / "only.gguf").symlink_to(default_model_path())
    with running_server("--api-key", "sesame", "--models-dir", str(models), "--model",
                        "only.gguf", "--parallel", "1", "--max-queue", "0") as srv:
        context = browser.new_context()
        page = context.new_page()
        page.goto(srv.base_url + "/")
        page.fill("#chat-input", "Hi")
        page.click("#chat-form button[type=submit]")
        banner = page.locator("#error-banner")
        expect(banner).to_contain_text("needs a valid API key")
        shot(page, "07-needs-key")
        page.fill("#api_key", "sesame")
        page.dispatch_event("#api_key", "change")
        expect(page.locator("#model-box")).to_be_visible()  # three models known
        page.reload()  # the key is kept for the session
        expect(page.locator("#api_key")).to_have_value("sesame")
        expect(page.locator("#model-box")).to_be_visible()
        expect(page.locator("#model-select")).to_have_value("only.gguf")
        expect(page.locator("#model-status")).to_contain_text("loaded")
        # one slot, no queue: while a long request holds the slot the server answers 503
        busy, done = threading.Event(), threading.Event()

        def hold_the_slot() -> None:
            with httpx.stream("POST", srv.base_url + "/completion", headers={"X-Api-Key": "sesame"},
                              json={"prompt": "Count:", "n_predict": 4000, "stream": True},
                              timeout=60) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        busy.set()
                    if done.is_set():
                        return

        holder = threading.Thread(target=hold_the_slot)
        holder.start()
        try:
            assert busy.wait(30)
            page.fill("#max_tokens", "8")
            page.fill("#chat-input", "Hi again")
            page.click("#chat-form button[type=submit]")
            expect(banner).to_contain_text("unavailable")
            shot(page, "08-unavailable")
        finally:
            done.set()
            holder.join(30)
        # pick another model and load it: its status shows in the settings
        page.select_option("#model-select", "smollm2-135m-instruct")
        expect(page.locator("#model-status")).to_contain_text("unloaded")
        page.click("#model-load")
        expect(page.locator("#model-status")).to_contain_text("loaded, llama")
        expect(page.locator("#model-name")).to_have_text("smollm2-135m-instruct")
        context.close()


def test_mid_stream_error_event_is_shown(page: Page) -> None:
    # The engine fails a request mid-stream only on a decode failure; the page's handling of
    # such an event is checked by answering /completion with one.
    stream = ('data: {"content":"Hello","tokens":[1],"stop":false,"id_slot":0,"id":1}\n\n'
              'data: {"error":{"code":500,"message":"decoding failed: no room left in the KV '
              'cache","type":"server_error"}}\n\n')
    page.route("**/completion", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=stream))
    page.click("[data-tab=completion]")
    page.fill("#completion-prompt", "Hi")
    page.click("#completion-form button[type=submit]")
    expect(page.locator("#completion-output")).to_have_text("Hello")
    expect(page.locator("#error-banner")).to_contain_text("decoding failed")
    expect(page.locator("#error-banner")).to_contain_text("The server answered 500")
    shot(page, "09-mid-stream-error")


def test_chat_with_the_chat_model_answers_in_words(browser: Browser) -> None:
    """With the embedded chat model, the chat tab answers instead of echoing the prompt."""
    with running_server("--model", "smollm2-135m-instruct") as chat_server:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(chat_server.base_url + "/")
        expect(pg.locator("#model-name")).to_have_text("smollm2-135m-instruct")  # the name it was given by
        pg.fill("#max_tokens", "48")
        pg.fill("#temperature", "0.2")
        pg.fill("#seed", "1")
        question = "What is the capital of France?"
        pg.fill("#chat-input", question)
        pg.click("#chat-form button[type=submit]")
        expect(pg.locator("#stop")).to_be_disabled()
        expect(pg.locator("#stats")).to_contain_text("tok/s")
        answer = pg.locator(".msg.assistant").last.inner_text()
        shot(pg, "10-chat-model")
        context.close()
    words = [w for w in answer.split() if any(c.isalpha() for c in w)]
    assert len(words) >= 3, answer
    assert question not in answer
    assert "<|im_" not in answer
