"""What the playground shows before the user acts (issue 19.5): a tab whose task has no installed model says
so at the top with the one `edge-run pull` command (from /v1/models) and nothing in it that cannot work looks
active; installing a model turns the tab on by itself; phones get "tap" / "long-press", and long-press does
what it says. Real `edge-run serve` processes, real headless Chromium (desktop and phone emulation)."""

from __future__ import annotations

import json
import urllib.request

from support import CHAT_MODEL, IMAGE_MODEL, SEG_MODEL, ServerProcess, edge_env, install_local
from web_support import no_page_errors, record_posts

IMAGE_RECIPE = "lcm-dreamshaper-v7-onnx"
SEG_RECIPE = "mobilesam-onnx"

MARKS_PIXELS = """() => { const c = document.getElementById('segment-marks');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"""


def get_models(url: str) -> dict:
    return json.load(urllib.request.urlopen(url + "/v1/models", timeout=10))


def rows_by_id(url: str) -> dict[str, dict]:
    return {m["id"]: m for m in get_models(url)["data"]}


def marks_at(page, fx: float, fy: float) -> tuple[float, float]:
    """Page coordinates of the fraction (fx, fy) of the photo."""
    box = page.locator("#segment-marks").bounding_box()
    return box["x"] + fx * box["width"], box["y"] + fy * box["height"]


# -- /v1/models --------------------------------------------------------------------------------------

def test_models_lists_recipes_and_pull_commands(bare_server, web_server):
    from edge.registry import Catalog

    recipes = Catalog(None).recipes
    assert {IMAGE_RECIPE, SEG_RECIPE} <= set(recipes)
    bare = rows_by_id(bare_server.url)
    for rid, task in ((IMAGE_RECIPE, "image"), (SEG_RECIPE, "segment")):
        r = recipes[rid]
        assert bare[rid] == {"id": rid, "object": "model", "created": 0, "owned_by": "edge-run", "task": task,
                             "format": r.format, "license": r.license, "installed": False, "loaded": False,
                             "recipe": True, "pull": f"edge-run pull {rid}"}
    # a pinned entry that is not installed keeps every field it had and gains its pull command
    chat = bare[CHAT_MODEL]
    assert chat["installed"] is False and chat["pull"] == f"edge-run pull {CHAT_MODEL}"
    assert chat["size_bytes"] > 50 << 20 and chat["task"] == "chat" and "recipe" not in chat

    assert get_models(bare_server.url)["pull_on_request"] is False  # serve without --allow-pull

    full = rows_by_id(web_server.url)
    for mid in (CHAT_MODEL, IMAGE_MODEL, SEG_MODEL):
        assert full[mid]["installed"] is True and "pull" not in full[mid], full[mid]
    assert full[IMAGE_RECIPE]["recipe"] is True  # other ids are installed, the recipe still is not


# -- a home with no model installed ------------------------------------------------------------------

def test_bare_home_shows_the_pull_command_and_disables_what_cannot_work(desktop_context, bare_server, artifacts,
                                                                         tiny_exports, open_page):
    desktop_context.grant_permissions(["clipboard-read", "clipboard-write"], origin=bare_server.url)
    page = open_page(desktop_context, bare_server.url)
    seg_posts, img_posts = record_posts(page, "/v1/segment"), record_posts(page, "/v1/images/generations")

    # Imagine: the panel names the command; Generate, the menu and the form are off
    page.click("#tab-imagine")
    assert page.is_visible("#imagine-missing")
    assert page.inner_text("#imagine-missing-title") == "No image model installed."
    assert page.inner_text("#imagine-pull") == f"edge-run pull {IMAGE_RECIPE}"
    assert "Run:" in page.inner_text("#imagine-missing")
    for sel in ("#imagine-go", "#imagine-model", "#imagine-prompt", "#imagine-steps"):
        assert page.is_disabled(sel), sel
    assert page.locator("#imagine-model option").all_inner_texts() == ["none installed"]
    page.click("#imagine-copy")
    page.wait_for_function("document.getElementById('imagine-copy').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == f"edge-run pull {IMAGE_RECIPE}"
    page.screenshot(path=str(artifacts / "imagine-no-model.png"), full_page=True)

    # Segment: the demo photo shows, but a click draws no point, sends nothing, and Undo stays off
    page.click("#tab-segment")
    assert page.is_visible("#segment-missing")
    assert page.inner_text("#segment-missing-title") == "No segmentation model installed."
    assert page.inner_text("#segment-pull") == f"edge-run pull {SEG_RECIPE}"
    assert page.is_disabled("#segment-model") and page.is_disabled("#segment-multimask")
    page.click("#segment-demo")
    page.wait_for_selector("#segment-stage:not([hidden])")
    page.mouse.click(*marks_at(page, 0.5, 0.6))
    page.mouse.click(*marks_at(page, 0.2, 0.5), button="right")
    page.wait_for_timeout(700)  # longer than a long-press
    assert page.evaluate(MARKS_PIXELS) == 0
    assert page.is_disabled("#segment-undo") and page.is_disabled("#segment-clear")
    assert "no segmentation model installed" in page.inner_text("#segment-info")
    assert page.is_hidden("#segment-error")
    page.screenshot(path=str(artifacts / "segment-no-model.png"), full_page=True)

    # Chat: the default chat model is pinned but not pulled
    page.click("#tab-chat")
    assert page.inner_text("#chat-pull") == f"edge-run pull {CHAT_MODEL}"
    assert page.is_disabled("#chat-send") and page.is_disabled("#chat-input")
    assert seg_posts == [] and img_posts == []

    # installing a segmentation model turns the Segment tab on by itself (the page polls /v1/models)
    install_local(bare_server.home, tiny_exports["sam"], SEG_MODEL, "segment",
                  {"recipe": "sam", "random_init": "tiny", "seed": 0})
    page.click("#tab-segment")
    page.wait_for_selector("#segment-missing[hidden]", state="attached", timeout=10_000)
    assert page.locator("#segment-model option").all_inner_texts() == [SEG_MODEL]
    assert not page.is_disabled("#segment-model") and page.is_disabled("#segment-undo")
    assert "click on the photo" in page.inner_text("#segment-info")
    page.mouse.click(*marks_at(page, 0.5, 0.6))
    page.wait_for_selector("#segment-overlay[data-decodes='1']", timeout=60_000)
    assert page.evaluate(MARKS_PIXELS) > 0 and not page.is_disabled("#segment-undo")
    assert len(seg_posts) == 1 and [p[2] for p in seg_posts[0]["points"]] == [1]
    page.click("#tab-imagine")
    assert page.is_visible("#imagine-missing") and page.is_disabled("#imagine-go")  # no image model yet
    no_page_errors(page)
    page.close()


def test_allow_pull_keeps_pinned_models_usable(desktop_context, tmp_path, open_page):
    """`serve --allow-pull` downloads a pinned model on its first request: the Chat tab stays on (its menu
    says so); a recipe is never built on request, so Imagine still shows its pull command."""
    home = tmp_path / "home"
    home.mkdir()
    srv = ServerProcess(home, "--allow-pull", env=edge_env(home, EDGE_KEEP_ALIVE="-1"))
    try:
        assert get_models(srv.url)["pull_on_request"] is True
        page = open_page(desktop_context, srv.url)
        assert page.is_hidden("#chat-missing") and not page.is_disabled("#chat-send")
        assert page.locator("#chat-model option").first.inner_text() == f"{CHAT_MODEL} (downloads on first use)"
        assert page.locator("#imagine-model option").all_inner_texts() == ["none installed"]
        page.click("#tab-imagine")
        assert page.is_visible("#imagine-missing") and page.is_disabled("#imagine-go")
        no_page_errors(page)
        page.close()
    finally:
        srv.stop()


# -- every model installed: the tabs as before ------------------------------------------------------

def test_installed_tabs_show_no_panel_and_only_installed_models(page, web_server):
    for tab in ("chat", "imagine", "segment"):
        page.click(f"#tab-{tab}")
        assert page.is_hidden(f"#{tab}-missing"), tab
        assert not page.is_disabled(f"#{tab}-model"), tab
    assert not page.is_disabled("#imagine-go") and not page.is_disabled("#chat-send")
    menus = {tab: page.locator(f"#{tab}-model option").all_inner_texts() for tab in ("chat", "imagine", "segment")}
    assert menus == {"chat": [CHAT_MODEL], "imagine": [IMAGE_MODEL], "segment": [SEG_MODEL]}  # no recipe, nothing unpulled
    # a desktop window says click
    assert "Left-click" in page.inner_text("#segment-hint") and "right-click" in page.inner_text("#segment-hint")
    assert page.inner_text("fieldset.mode legend") == "Left click adds"
    no_page_errors(page)


# -- a phone -----------------------------------------------------------------------------------------

def test_phone_says_tap_and_long_press_and_long_press_adds_a_background_point(phone_context, web_server, artifacts,
                                                                              open_page):
    page = open_page(phone_context, web_server.url)
    sent = record_posts(page, "/v1/segment")
    page.tap("#tab-segment")
    hint = page.inner_text("#segment-hint")
    assert "Tap" in hint and "long-press" in hint and "click" not in hint.lower(), hint
    assert page.inner_text("fieldset.mode legend") == "Tap adds"
    assert "drop" not in page.inner_text("#segment-empty")
    assert "Enter" not in page.get_attribute("#chat-input", "placeholder")
    page.tap("#segment-demo")
    page.wait_for_selector("#segment-stage:not([hidden])")
    assert "tap on the photo" in page.inner_text("#segment-info")

    # a tap: a foreground point
    page.touchscreen.tap(*marks_at(page, 0.5, 0.6))
    page.wait_for_selector("#segment-overlay[data-decodes='1']", timeout=60_000)
    assert [p[2] for p in sent[0]["points"]] == [1]

    # a long-press: a background point, added while the finger is still down
    x, y = marks_at(page, 0.85, 0.2)
    cdp = phone_context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    page.wait_for_timeout(900)
    assert len(sent) == 2 and [p[2] for p in sent[1]["points"]] == [1, 0], sent
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    page.wait_for_selector("#segment-overlay[data-decodes='2']", timeout=60_000)
    page.wait_for_timeout(300)
    assert len(sent) == 2  # lifting the finger adds nothing more
    page.screenshot(path=str(artifacts / "segment-phone.png"), full_page=True)
    foreign = [u for u in phone_context.requests
               if not (u.startswith(web_server.url + "/") or u.startswith(("data:", "blob:")))]
    assert not foreign, foreign
    no_page_errors(page)
    page.close()
