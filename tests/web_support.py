"""What the playground's browser tests share (test files cannot import each other under --import-mode=importlib)."""

from __future__ import annotations


def record_posts(page, path: str) -> list[dict]:
    """Bodies of the page's POSTs to ``path`` (as the server received them)."""
    bodies: list[dict] = []
    page.on("request", lambda r: r.method == "POST" and r.url.endswith(path) and bodies.append(r.post_data_json))
    return bodies


def no_page_errors(page) -> None:
    errors = [e for e in page.console_errors if "Failed to load resource" not in e]
    assert not errors, errors
