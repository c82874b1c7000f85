"""The playground page (GET /) in a real headless Chromium, against the real Serve app.

The page must show what the API says: the draft and final text of the reply, exactly as many marked
replacements, deletions and insertions as the reply counts, and the API's own message for bad
input. The app and the tiny random checkpoint are test_serve's fixtures; Chromium and its driver are
the Debian packages ``chromium`` and ``chromium-driver`` (.ci/run installs them). Set
``MEDLM_PLAYGROUND_SCREENSHOT=docs/playground.png`` to save the page after a finished request.
"""

import base64
import os
import shutil
from pathlib import Path

import httpx
import pytest
from test_serve import checkpoint, url  # noqa: F401  (module-scoped: a tiny checkpoint, a live Serve app)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
MISSING = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
if MISSING:
    reason = (f"chromium not found ({', '.join(MISSING)} missing): "
              "apt-get install -y chromium chromium-driver to run the playground browser tests")
    print(f"\ntests/test_playground.py skipped: {reason}")
    pytest.skip(reason, allow_module_level=True)

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

EDIT_KINDS = ("replace", "delete", "insert")
REQUEST = {"prompt": "Count to five.", "max_new_tokens": 24, "mask_steps": 6, "edit_steps": 4, "seed": 3}


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser, url: str) -> None:
    """Load the page and wait until it has read /v1/models (it clamps the budget fields to the limits)."""
    browser.get(f"{url}/")
    WebDriverWait(browser, 30).until(lambda d: text(d, "model").startswith("model "))


def text(browser, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).get_attribute("textContent")


def set_field(browser, element_id: str, value) -> None:
    """Set a form field as typing would, without typing thousands of characters one by one."""
    browser.execute_script("document.getElementById(arguments[0]).value = arguments[1];", element_id,
                           "" if value is None else str(value))


def submit(browser, fields: dict) -> str:
    """Fill the form, press Refine, wait until the page says it is done or failed; return that state."""
    for name in ("prompt", "max_new_tokens", "mask_steps", "edit_steps", "threshold", "seed"):
        set_field(browser, name, fields.get(name))
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, 180).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    return browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def save_screenshot(browser, path: str) -> None:
    """The whole page, not only the window (Chrome's own full-page capture)."""
    width, height = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(base64.b64decode(shot["data"]))


def test_a_prompt_streams_in_and_the_edit_markup_matches_the_reply(browser, url):
    expected = httpx.post(f"{url}/v1/refine", json={**REQUEST, "return_draft": True}, timeout=180).json()
    open_page(browser, url)
    # record how many masks the response shows each time it changes: they must appear, then fill in
    browser.execute_script("""
        window.maskCounts = [];
        new MutationObserver(() => window.maskCounts.push(document.querySelectorAll('#response .mask').length))
            .observe(document.getElementById('response'), {childList: true, subtree: true, characterData: true});
    """)
    state = submit(browser, REQUEST)
    assert state == "done", text(browser, "error")
    assert text(browser, "draft") == expected["draft"]
    assert text(browser, "response") == expected["text"]
    marked = {k: len(browser.find_elements(By.CSS_SELECTOR, f"#steps .edit-{k}")) for k in EDIT_KINDS}
    assert marked == expected["edits"]
    assert sum(marked.values()) > 0, "the random model made no edits: nothing was checked"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#steps li.step")) <= expected["nfe"]["edit"]
    assert {k: text(browser, f"count-{k}") for k in EDIT_KINDS} == {k: str(v) for k, v in expected["edits"].items()}
    assert text(browser, "nfe-total") == str(expected["nfe"]["total"])
    assert text(browser, "check").startswith("\u2713")
    masks_seen = browser.execute_script("return window.maskCounts")
    assert max(masks_seen) > 0 and masks_seen[-1] == 0, masks_seen
    if os.environ.get("MEDLM_PLAYGROUND_SCREENSHOT"):
        save_screenshot(browser, os.environ["MEDLM_PLAYGROUND_SCREENSHOT"])


@pytest.mark.parametrize("fields", [
    {**REQUEST, "prompt": ""},
    {**REQUEST, "prompt": "x" * 5000},
    {**REQUEST, "max_new_tokens": 100_000},
    {**REQUEST, "edit_steps": 10**6},
], ids=["empty prompt", "over-long prompt", "max_new_tokens over the limit", "edit_steps over the limit"])
def test_bad_input_shows_the_api_error_message(browser, url, fields):
    reply = httpx.post(f"{url}/v1/refine", json={**fields, "stream": True, "stream_mask_steps": True}, timeout=60)
    assert reply.status_code == 400
    open_page(browser, url)
    assert submit(browser, fields) == "error"
    assert reply.json()["error"]["message"] in text(browser, "error")
    assert browser.find_elements(By.CSS_SELECTOR, "#steps li") == []


def test_a_stream_closed_early_ends_in_an_error_state(browser, url):
    """A server that closes the stream before the final event must not leave the page waiting."""
    open_page(browser, url)
    browser.execute_script("""
        window.fetch = async () => new Response(new ReadableStream({start(c) {
            c.enqueue(new TextEncoder().encode('data: {"type": "mask_step", "step": 1, "text": "a\\u2591", "masked": 1}\\n\\n'));
            c.close();
        }}), {status: 200, headers: {"Content-Type": "text/event-stream"}});
    """)
    assert submit(browser, REQUEST) == "error"
    assert "closed the stream" in text(browser, "error")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#response .mask")) == 1
