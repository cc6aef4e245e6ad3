"""A server exposed with a token, in real Chromium and over plain HTTP: nothing answers without the token, not
the X-ray behind ``/media/<hash>`` nor ``/_stcore/metrics``; the token in a link leaves no history entry; wrong
tokens wait."""

import urllib.error
import urllib.request

import pytest

from tests.browser.conftest import served
from workbench import auth

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TOKEN = "a-token-from-a-file-42"


@pytest.fixture
def exposed(free_port, tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    args = ["demo", "--headless", "--host", "0.0.0.0", "--port", str(free_port),
           "--workspace", str(tmp_path / "ws"), "--token-file", str(tmp_path / "token")]
    with served(args, free_port) as url:
        yield url


def status(url: str, data: bytes | None = None, cookie: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_nothing_answers_without_the_token_and_the_link_leaves_no_trace(browser, exposed, artifacts):
    assert status(exposed + "/_stcore/metrics")[0] == 404
    assert status(exposed + "/media/0123456789abcdef.jpg")[0] == 403
    code, body = status(exposed + "/")
    assert code == 401 and "Access token" in body and TOKEN not in body
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(exposed + f"/?token={TOKEN}")
    page.get_by_text("Checkpoint series").wait_for(timeout=90_000)  # no second token form: the cookie counts
    assert TOKEN not in page.url
    page.screenshot(path=str(artifacts / "token-home.png"))
    cookie = next(c for c in page.context.cookies() if c["name"] == auth.COOKIE)
    assert cookie["value"] != TOKEN and cookie["httpOnly"]
    page.go_back()
    assert TOKEN not in page.url  # the redirect left no history entry holding the token
    assert status(exposed + "/media/0123456789abcdef.jpg", cookie=f"{auth.COOKIE}={cookie['value']}")[0] == 404
    assert status(exposed + "/_stcore/metrics", cookie=f"{auth.COOKIE}={cookie['value']}")[0] == 404
    for i in range(auth.MAX_FAILURES):
        code, body = status(exposed + "/", data=f"token=wrong-{i}-guess".encode())
        assert code == 401 and "not the one" in body
    code, body = status(exposed + "/", data=f"token={TOKEN}".encode())
    assert code == 401 and "Too many wrong tokens" in body  # the right one waits too
