"""The entry file's token gate: a server exposed with --host shows no page until the visitor gives its token."""

from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

TOKEN = "s3cret-token-for-tests"


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
