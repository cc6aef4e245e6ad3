"""The entry file's token gate: a server exposed with --host shows no page until the visitor gives its token."""

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from workbench import auth

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(autouse=True)
def no_earlier_failures():
    """Wrong tokens count server-wide (this process): each test starts with none."""
    auth._failures.clear()
    yield
    auth._failures.clear()


def app(sample_world, monkeypatch, token: str | None = TOKEN) -> AppTest:
    monkeypatch.setenv("WORKBENCH_WORLD", str(sample_world))
    monkeypatch.setenv("WORKBENCH_TOKEN", token or "")
    return AppTest.from_file(str(ROOT / "workbench" / "app.py"), default_timeout=60)


def test_no_page_renders_before_the_token_then_the_form_opens_them(sample_world, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    at = app(sample_world, monkeypatch).run()
    assert not at.exception
    assert not at.metric and not at.dataframe and not at.sidebar.toggle  # nothing of the workbench yet
    at.text_input(key="auth_token").input("wrong-token-123")
    at.button[0].click().run()
    assert "not the one" in at.error[0].value and not at.metric
    at.text_input(key="auth_token").input(TOKEN)
    at.button[0].click().run()
    assert not at.exception and at.metric  # the Home page
    at.run()
    assert at.metric  # once per session


def test_the_token_in_the_link_opens_the_pages(sample_world, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    at = app(sample_world, monkeypatch)
    at.query_params["token"] = TOKEN
    at.run()
    assert not at.exception and at.metric
    assert "token" not in at.query_params


def test_on_this_machine_only_nothing_is_asked(sample_world, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    at = app(sample_world, monkeypatch, token=None).run()
    assert not at.exception and at.metric


def test_wrong_tokens_wait_server_wide_then_the_right_one_opens(sample_world, monkeypatch, tmp_path):
    """Twenty guesses in 15 s met no delay: after five wrong tokens (from any tab) none is checked, not even the
    right one, until the window has passed."""
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    at = app(sample_world, monkeypatch).run()
    for i in range(auth.MAX_FAILURES):
        at.text_input(key="auth_token").input(f"wrong-token-{i}")
        at.button[0].click().run()
        assert "not the one" in at.error[0].value
    other_tab = app(sample_world, monkeypatch)
    other_tab.query_params["token"] = TOKEN
    other_tab.run()
    assert not other_tab.metric  # a new session gets no fresh tries
    at.text_input(key="auth_token").input(TOKEN)
    at.button[0].click().run()
    assert "Too many wrong tokens: try again in" in at.error[0].value and not at.metric
    assert 0 < auth.wait_seconds() <= auth.WINDOW
    auth._failures.rotate()  # as if the window had passed: the oldest failure moved out
    auth._failures.clear()
    at.button[0].click().run()
    assert not at.exception and at.metric
