"""The upload page in headless Chromium (Debian's `chromium`, driven by Playwright).

The app runs in a real HTTP server on 127.0.0.1; the browser may reach nothing else (every
other request is blocked and recorded), which also proves the page needs no CDN.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from services.web.app import create_app
from tests.conftest import REPO_ROOT, unavailable

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def base_url(model_int8_path: Path) -> Iterator[str]:
    yield from served(model_int8_path)


def served(model: Path) -> Iterator[str]:
    """The one app on a real werkzeug server on 127.0.0.1, for as long as the fixture lives."""
    app = create_app({"MODEL_PATH": str(model), "ORT_INTRA_OP_THREADS": 1})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    # Skipped on a laptop without them; a failure in CI (MHIST_REQUIRE_CONTAINERS=1).
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is missing: run `make test-deps` "
                    "(Debian: sudo apt-get install chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        unavailable("Playwright is not installed: run `make setup` "
                    "(or .venv/bin/pip install -c constraints.txt -e '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture()
def page(browser, base_url):
    context = browser.new_context()
    blocked: list[str] = []
    problems: list[str] = []

    def route(route):
        if route.request.url.startswith(base_url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", route)
    tab = context.new_page()
    tab.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: problems.append(str(exc)))
    tab.goto(base_url + "/")
    yield tab
    context.close()
    assert blocked == [], f"the page tried to reach other origins: {blocked}"
    assert [p for p in problems if "Content Security Policy" in p or "Refused" in p] == []


def api_predict(base_url: str, data: bytes) -> dict:
    request = urllib.request.Request(base_url + "/predict", data=data,
                                     headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def shown_result(page) -> dict:
    page.wait_for_selector("body[data-state=done]", timeout=30_000)
    bars = page.eval_on_selector_all(
        ".bar", "rows => rows.map(r => [r.dataset.class, Number(r.dataset.probability)])")
    return {
        "label": page.inner_text("#label"),
        "decision": page.inner_text("#decision"),
        "probabilities": dict(bars),
        "threshold_text": page.inner_text("#threshold"),
        "threshold": float(page.get_attribute("#threshold", "data-threshold")),
        "bar_texts": page.eval_on_selector_all(".bar > span",
                                               "spans => spans.map(s => s.textContent)"),
        "winner": (page.get_attribute(".bar.winner", "data-class")
                   if page.locator(".bar.winner").count() else None),
        "preview_width": page.eval_on_selector("#preview", "img => img.naturalWidth"),
        "data_decision": page.get_attribute("#decision", "data-decision"),
        "warnings": page.eval_on_selector_all(
            "#warnings li", "items => items.map(i => [i.dataset.code, i.textContent])"),
        "warnings_hidden": page.is_hidden("#warnings"),
        "notice": None if page.is_hidden("#notice") else page.inner_text("#notice"),
        "scale": page.inner_text("#threshold-scale"),
    }


def assert_matches_api(shown: dict, expected: dict) -> None:
    assert shown["label"] == expected["label"]
    assert shown["data_decision"] == expected["decision"]
    # The decision first, in words; the highlighted bar is the decision's class, or none.
    words = {"not_assessable": "Not assessable", "uncertain": "Uncertain"}
    assert shown["decision"] == words.get(expected["decision"], expected["decision"])
    classes = expected["probabilities"].keys()
    assert shown["winner"] == (expected["decision"] if expected["decision"] in classes else None)
    assert shown["scale"] == expected["threshold_scale"]
    # Every input warning in words; the model's notice above, not in the list.
    warnings = expected.get("warnings") or []
    assert shown["warnings"] == [[w["code"], w["message"]] for w in warnings
                                 if w["code"] != "synthetic_training_data"]
    assert shown["warnings_hidden"] == (shown["warnings"] == [])
    synthetic = [w["message"] for w in warnings if w["code"] == "synthetic_training_data"]
    assert shown["notice"] == (synthetic[0] if synthetic else None)
    # Full precision in the data attribute, 3 decimals for people.
    assert shown["threshold"] == expected["threshold"]
    assert re.fullmatch(r"[01]\.\d{3}", shown["threshold_text"]), shown["threshold_text"]
    assert float(shown["threshold_text"]) == pytest.approx(expected["threshold"], abs=5e-4)
    for text in shown["bar_texts"]:
        assert re.fullmatch(r"\w+: \d{1,3}\.\d%", text), text  # e.g. "SSA: 93.1%"
    assert shown["probabilities"].keys() == expected["probabilities"].keys()
    for name, p in expected["probabilities"].items():
        assert shown["probabilities"][name] == pytest.approx(p, abs=1e-9)
    assert shown["preview_width"] > 0  # the preview really decoded the chosen file


def test_choose_a_file_shows_the_api_answer(page, base_url, sample_image_bytes):
    expected = api_predict(base_url, sample_image_bytes)
    # A selector, not wait_for_function: Playwright polls a string predicate with eval, which
    # the page's CSP (script-src 'self') refuses once the condition is not true at once.
    page.wait_for_selector("#model:has-text('classes')")
    page.set_input_files("#file", files=[{"name": "sample.png", "mimeType": "image/png",
                                          "buffer": sample_image_bytes}])
    assert_matches_api(shown_result(page), expected)
    assert page.is_hidden("#error")


def test_drop_an_image_shows_the_api_answer(page, base_url, sample_image_bytes):
    expected = api_predict(base_url, sample_image_bytes)
    data_transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            return transfer;
        }""",
        base64.b64encode(sample_image_bytes).decode("ascii"),
    )
    page.dispatch_event("#drop", "dragover", {"dataTransfer": data_transfer})
    page.dispatch_event("#drop", "drop", {"dataTransfer": data_transfer})
    assert_matches_api(shown_result(page), expected)


@pytest.fixture(scope="module")
def banded_url(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fixture model with an uncertain band over all of (0, 1): every answer is
    "uncertain"."""
    import dataclasses

    from export.convert import read_metadata, write_metadata

    path = tmp_path_factory.mktemp("banded") / "banded.onnx"
    path.write_bytes(model_int8_path.read_bytes())
    write_metadata(path, dataclasses.replace(read_metadata(model_int8_path),
                                             uncertain_band={"low": 0.0, "high": 1.0}))
    yield from served(path)


def test_the_page_shows_the_uncertain_decision_and_the_band(browser, banded_url,
                                                            sample_image_bytes):
    expected = api_predict(banded_url, sample_image_bytes)
    assert expected["decision"] == "uncertain"
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(banded_url + "/")
        page.wait_for_selector("#band-info:not([hidden])", state="attached")  # see above
        assert page.inner_text("#band") == "0.000 and 1.000"
        page.set_input_files("#file", files=[{"name": "sample.png", "mimeType": "image/png",
                                              "buffer": sample_image_bytes}])
        assert_matches_api(shown_result(page), expected)
        assert page.get_attribute("#decision", "data-decision") == "uncertain"
        assert page.locator(".bar .band").count() == 1  # drawn on the positive class's bar
    finally:
        context.close()


def test_the_explain_box_lays_the_map_over_the_image(page, base_url, sample_image_bytes):
    request = urllib.request.Request(base_url + "/predict?explain=1", data=sample_image_bytes,
                                     headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
        expected = json.loads(response.read())
    page.wait_for_selector("#model:has-text('classes')")  # a selector: see above
    page.check("#explain")
    page.set_input_files("#file", files=[{"name": "sample.png", "mimeType": "image/png",
                                          "buffer": sample_image_bytes}])
    page.wait_for_selector("#overlay:not([hidden])", timeout=30_000)
    assert_matches_api(shown_result(page), {k: v for k, v in expected.items()
                                            if k != "explanation"})
    overlay = page.get_attribute("#overlay", "src")
    assert overlay == "data:image/png;base64," + expected["explanation"]["overlay_png_base64"]
    assert page.get_attribute("#overlay", "data-class") == expected["explanation"]["class"]
    assert page.inner_text("#explained-class") == expected["label"]
    page.eval_on_selector("#overlay", "img => img.decode()")  # resolves once it is drawable
    box = page.eval_on_selector("#overlay", "img => img.getBoundingClientRect().toJSON()")
    under = page.eval_on_selector("#preview", "img => img.getBoundingClientRect().toJSON()")
    # The fixture model's crop is the whole resized image (size == resize_size): the map
    # covers exactly the preview.
    assert {k: round(box[k]) for k in ("x", "y", "width", "height")} == {
        k: round(under[k]) for k in ("x", "y", "width", "height")}
    page.uncheck("#explain")  # sends the same file again, without explain
    page.wait_for_selector("#overlay", state="hidden")
    assert page.is_hidden("#explain-info")
    page.wait_for_selector("#status:not(:has-text('Classifying'))")  # the answer arrived


def photo_png() -> bytes:
    """A real photograph (scikit-learn's sample image of a Chinese temple), 224 px."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    img = Image.fromarray(load_sample_image("china.jpg"))
    img.thumbnail((224, 224))
    return png_bytes(img)


def blank_png() -> bytes:
    from PIL import Image

    return png_bytes(Image.new("RGB", (224, 224), (242, 242, 242)))


def png_bytes(img) -> bytes:
    import io

    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("case", ["sample_patch", "photo", "blank"])
def test_the_page_shows_the_decision_warnings_and_notice(page, base_url, sample_image_bytes,
                                                         case, tmp_path, record_property):
    """What a person sees for a patch, a photograph and a blank image: the decision first
    (not assessable for the last two, with every warning in words), the synthetic-training
    notice (the fixture model learnt from the sample), the bar of the decision's class
    highlighted or none. A screenshot of each is kept in the test's output folder."""
    data = {"sample_patch": sample_image_bytes, "photo": photo_png(), "blank": blank_png()}[case]
    expected = api_predict(base_url, data)
    page.wait_for_selector("#model:has-text('classes')")  # a selector: see above
    assert page.is_visible("#notice")  # from /metadata's provenance, before any upload
    page.set_input_files("#file", files=[{"name": f"{case}.png", "mimeType": "image/png",
                                          "buffer": data}])
    shown = shown_result(page)
    assert_matches_api(shown, expected)
    assert shown["notice"] and "synthetic" in shown["notice"]
    if case == "sample_patch":
        assert expected["decision"] in expected["probabilities"], expected["reasons"]
        assert shown["warnings"] == []
    else:
        assert expected["decision"] == "not_assessable", expected["warnings"]
        assert shown["winner"] is None and shown["warnings"]
        assert "low_tissue" in expected["reasons"]
        if case == "photo":  # coloured, but nothing like H&E
            assert "unusual_stain" in expected["reasons"]
    screenshot = tmp_path / f"upload-page-{case}.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    record_property("screenshot", str(screenshot))
    print(f"screenshot: {screenshot}")


def test_a_bad_file_shows_the_error(page):
    page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png",
                                          "buffer": b"this is not an image"}])
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert page.inner_text("#error").startswith("400 invalid_image")


# ---------------------------------------------------------------- a missing browser in CI

_NEEDS_A_BROWSER = '''
import tests.test_service_browser as browser_tests
from tests.test_service_browser import browser  # noqa: F401  the fixture under test

browser_tests.CHROMIUM = {chromium!r}


def test_needs_a_browser(browser):
    pass
'''


@pytest.mark.parametrize(
    ("missing", "install"),
    [("chromium", "make test-deps"), ("playwright", "make setup")],
)
@pytest.mark.parametrize("ci", [False, True], ids=["laptop", "ci"])
def test_a_missing_browser_skips_on_a_laptop_and_fails_in_ci(
    missing: str, install: str, ci: bool, tmp_path: Path
) -> None:
    """The real `browser` fixture in a child pytest, with Chromium's path pointing nowhere or a
    `playwright` package on the path that fails to import, as an uninstalled one does."""
    shadow = tmp_path / "shadow"
    if missing == "playwright":
        (shadow / "playwright").mkdir(parents=True)
        (shadow / "playwright" / "__init__.py").write_text(
            "raise ImportError('No module named playwright')\n")
    # Any existing file passes the Chromium check, which comes first, when Playwright is missing.
    chromium = str(tmp_path / "no-chromium") if missing == "chromium" else sys.executable
    test_file = tmp_path / "test_needs_a_browser.py"
    test_file.write_text(_NEEDS_A_BROWSER.format(chromium=chromium))
    env = {k: v for k, v in os.environ.items() if k != "MHIST_REQUIRE_CONTAINERS"}
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), str(REPO_ROOT)])
    if ci:
        env["MHIST_REQUIRE_CONTAINERS"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q",
         "--rootdir", str(tmp_path), "-W", "ignore::pytest.PytestUnknownMarkWarning",
         str(test_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    out = result.stdout + result.stderr
    assert install in out, out
    if ci:
        assert result.returncode == 1 and "1 error" in out, out
        assert "required in CI (MHIST_REQUIRE_CONTAINERS=1)" in out, out
    else:
        assert result.returncode == 0 and "1 skipped" in out, out
