"""The web page in headless Chromium with hostile text everywhere the server's words reach it: a
product title, the query (and its rewrite), the ``similar`` parameter and the error it causes.
No injected script may run: each payload would mark ``<body data-pwned>`` if it did."""

from __future__ import annotations

import os
from urllib.parse import quote

import httpx
import pytest

from skulens.serving.app import create_app
from tests.support.browser import chromium, render
from tests.support.live_server import serve_app
from tests.unit.test_serving_app import client  # noqa: F401 - the fixture
from tests.unit.test_serving_pipeline import parts  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

PAYLOAD = '<img src=x onerror="document.body.dataset.pwned=1">'
SCRIPT = "<script>document.body.dataset.pwned=1</script>"


@pytest.fixture
def served_page(client):  # noqa: F811 - the fake catalogue's state, served over HTTP by uvicorn
    state = client.state_obj
    state.variants["control"].pipeline.titles["p0"] = f"{PAYLOAD}{SCRIPT} red shirt"
    with serve_app(create_app(lambda: state)) as base:
        yield base


def test_hostile_titles_queries_and_parameters_stay_text(served_page, tmp_path):
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI (scripts/setup.sh installs it)")
        pytest.skip("chromium is not installed: the web page test needs Debian's chromium package")
    shots = tmp_path
    pages = {
        "title": f"{served_page}/?q=red+shirt",
        "query": f"{served_page}/?q={quote('red shirt ' + PAYLOAD + SCRIPT)}",
        "similar": f"{served_page}/?similar={quote(PAYLOAD + SCRIPT)}",
    }
    for name, url in pages.items():
        dom = render(url, shots / f"xss_{name}.png")
        body = dom[dom.index("<body"):dom.index(">", dom.index("<body"))]
        assert "data-pwned" not in body, (name, body)
        assert "<img src=\"x\"" not in dom and "<script>document" not in dom, name  # never parsed as HTML
        assert "&lt;img src=x" in dom, name  # shown to the shopper as the text it is
    title_dom = render(pages["title"], shots / "xss_title_again.png")
    assert 'data-results="' in title_dom and 'data-results="0"' not in title_dom
    assert httpx.get(f"{served_page}/").headers["content-security-policy"].startswith("default-src 'none'")
