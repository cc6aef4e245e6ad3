"""Typed paths stay under the data roots (one message, whether or not the file exists), and user text
renders without images or live links."""

import os

import pytest

from core.errors import InputError
from core.io.roots import check_data_path, refused_paths
from core.workspace.workspace import Workspace, data_roots
from workbench.safe_text import inert


def test_paths_outside_the_roots_get_one_message_whether_or_not_they_exist(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    ws = Workspace.open(tmp_path / "ws")
    roots = data_roots(ws.store)
    (ws.root / "uploads" / "mine.jsonl").write_text("{}")
    assert check_data_path(ws.root / "uploads" / "mine.jsonl", roots) == (ws.root / "uploads" / "mine.jsonl").resolve()
    messages = []
    for path in ("/etc/passwd", "/etc/no-such-file-here", str(ws.root / ".." / "secret.txt")):
        with pytest.raises(InputError) as e:
            check_data_path(path, roots)
        messages.append(str(e.value).replace(path, "PATH"))
    assert len(set(messages)) == 1 and "not under the data roots" in messages[0]
    os.symlink("/etc/passwd", ws.root / "uploads" / "link.jsonl")  # a link inside cannot lead out
    assert refused_paths([str(ws.root / "uploads" / "link.jsonl"), None, ""], roots)[0].endswith(
        messages[0].split("PATH", 1)[1])
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(tmp_path))
    (tmp_path / "data.jsonl").write_text("{}")
    assert check_data_path(tmp_path / "data.jsonl", data_roots(ws.store)) == (tmp_path / "data.jsonl").resolve()


def test_a_path_is_checked_as_the_engine_reads_it_with_home_and_variables_expanded(tmp_path, monkeypatch):
    """``$HOME/../outside`` with the working directory in a data root: checked literally it lay under the root
    (``root/$HOME/../outside``), read expanded it is outside."""
    root, home = tmp_path / "root", tmp_path / "home"
    (root / "outside").mkdir(parents=True)
    home.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "traj.jsonl").write_text("{}")
    monkeypatch.chdir(root)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DATA", str(tmp_path / "outside"))
    for typed in ("$HOME/../outside/traj.jsonl", "${HOME}/../outside/traj.jsonl", "~/../outside/traj.jsonl",
                  "$DATA/traj.jsonl"):
        with pytest.raises(InputError, match="not under the data roots"):
            check_data_path(typed, [root])
    (root / "mine.jsonl").write_text("{}")
    monkeypatch.setenv("HOME", str(root))
    assert check_data_path("$HOME/mine.jsonl", [root]) == (root / "mine.jsonl").resolve()
    assert check_data_path("data.jsonl", ["$HOME"]) == (root / "data.jsonl").resolve()  # roots expand too


def test_world_folders_are_data_roots(tmp_path, sample_world, monkeypatch):
    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    ws = Workspace.open(tmp_path / "ws")
    ws.store.register_world("sample", sample_world.resolve(), "f")
    check_data_path(sample_world / "data" / "test.jsonl", data_roots(ws.store))


@pytest.mark.parametrize("text", ["![](http://evil.example/x.png)", "[click](https://evil.example)",
                                  "<https://evil.example>", "see https://evil.example/x.png", "www.evil.example",
                                  "![a][r]\n\n[r]: http://evil.example/x.png"])
def test_user_text_renders_without_images_or_links(text):
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").render(inert(text))
    assert "<img" not in html and "<a " not in html, html
    assert "evil.example" in html  # the text is still shown
    # bare URLs (GFM autolinks them in the browser): the escaped colon or dot breaks the match
    assert "https://" not in inert(text) and "http://" not in inert(text) and "www." not in inert(text)


@pytest.mark.parametrize("text", ["see https://evil.example/x", "www.evil.example", "write to me@evil.example",
                                  "HTTP://EVIL.EXAMPLE"])
def test_bare_urls_match_no_autolink_after_escapes_are_resolved(text):
    """The browser's renderer links URLs, www. names and e-mails in the text after markdown escapes are
    resolved (GFM autolink literals): the patterns it uses must find nothing in what ``inert`` returns."""
    import re

    shown = re.sub(r"\\(.)", r"\1", inert(text))  # what the renderer's text node holds
    gfm = [r"https?://", r"www(?=\.)", r"[-.+\w]+@[-\w]+(?:\.[-\w]+)+"]
    assert not any(re.search(p, shown, re.IGNORECASE) for p in gfm), shown
    assert shown.replace("\u2060", "") == text  # reads the same


def test_guideline_markdown_keeps_its_formatting():
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").render(inert("# Rules\n\n- **Reject** if it cites *opacity*"))
    assert "<h1>" in html and "<strong>" in html and "<li>" in html


def test_a_typed_variable_that_is_not_a_path_is_not_expanded_so_its_value_never_shows(tmp_path, monkeypatch):
    """``root/$SECRET.jsonl`` lay under the root, and the reader's "not found" named the path read: the server's
    token or password in the message. A variable is expanded in a typed path only when its value is a path here;
    one set to anything else and one not set get the same refusal, naming the variable, never its value."""
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("SECRET_VALUE", "hunter2")
    monkeypatch.delenv("NO_SUCH_VARIABLE", raising=False)
    messages = []
    for name in ("SECRET_VALUE", "NO_SUCH_VARIABLE"):
        with pytest.raises(InputError) as e:
            check_data_path(f"{root}/${{{name}}}.jsonl", [root])
        messages.append(str(e.value).replace(name, "NAME"))
    assert messages[0] == messages[1] and "hunter2" not in messages[0] and "$NAME does not name a path" in messages[0]
    monkeypatch.setenv("DATA", str(root))  # a folder: expanded, as before
    assert check_data_path("$DATA/t.jsonl", [root]) == (root / "t.jsonl").resolve()
