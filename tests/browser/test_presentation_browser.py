"""What a talk audience sees, in real Chromium on the multimodal demo world (one server for the module): at 1400
and 1920 px, with and without presentation mode, the Home page's films, captions and links stay inside their
columns and off each other, and no chart's legend lies on an axis title or a tick label outside the figure;
presentation mode scales the charts' type with the page's; an "Interactive HTML" download and a camera SVG
of the token heatmap carry its tick labels, axis titles and title, under a file name that says what they are.
All checks are by the elements' bounding boxes."""

import os
import subprocess
import sys

import pytest

from tests.browser.conftest import stop, wait_http
from tests.browser.test_loop_browser import idle, no_exception
from tests.conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Boxes are [left, top, right, bottom] in CSS px; a pixel of tolerance for sub-pixel rounding.
BOX = "e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }"
FILMS = f"""() => [...document.querySelectorAll("[data-testid='stMain'] [data-testid='stImage']")].map(im => ({{
    img: ({BOX})(im.querySelector('img')),
    caption: im.querySelector("[data-testid='stImageCaption']") ? ({BOX})(im.querySelector("[data-testid='stImageCaption']")) : null,
    column: im.closest("[data-testid='stColumn']") ? ({BOX})(im.closest("[data-testid='stColumn']")) : null}}))"""
# per chart: its outer svg, legend, axis and figure titles, tick labels, and the font size of its first x tick
CHARTS = f"""() => [...document.querySelectorAll("[data-testid='stMain'] .js-plotly-plot")].map(gd => {{
    const all = sel => [...gd.querySelectorAll(sel)].filter(e => e.getBoundingClientRect().width > 0).map({BOX});
    const titles = [...gd.querySelectorAll('g')].filter(g => [...g.classList].some(c => /^g-[xy][0-9]*title$/.test(c)))
        .map(g => ({{text: g.textContent, box: ({BOX})(g)}})).filter(t => t.text);
    const tick = gd.querySelector('.xtick text');
    return {{svg: ({BOX})(gd.querySelector('svg.main-svg')), legend: all('g.legend'), titles,
             title: gd.querySelector('.gtitle') ? gd.querySelector('.gtitle').textContent : '',
             titleBox: gd.querySelector('.gtitle') ? ({BOX})(gd.querySelector('.gtitle')) : null,
             ticks: all('.xtick text, .ytick text, .x2tick text, .y2tick text'),
             tickFont: tick ? parseFloat(getComputedStyle(tick).fontSize) : null}};
}})"""


def overlap(a, b, tol: float = 1.0) -> bool:
    return a[0] < b[2] - tol and b[0] < a[2] - tol and a[1] < b[3] - tol and b[1] < a[3] - tol


def inside(a, outer, tol: float = 1.0) -> bool:
    return a[0] >= outer[0] - tol and a[1] >= outer[1] - tol and a[2] <= outer[2] + tol and a[3] <= outer[3] + tol


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``workbench demo --world multimodal`` on a free port with a fresh workspace; yields its url."""
    import socket

    tmp = tmp_path_factory.mktemp("present")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "workbench.cli", "demo", "--world", "multimodal", "--headless", "--port", str(port),
           "--workspace", str(tmp / "ws")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "WORKBENCH_DATA_ROOTS": str(tmp)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/_stcore/health", proc)
        yield url
    finally:
        stop(proc)


def open_home(browser, url: str, width: int, presenting: bool):
    page = browser.new_page(viewport={"width": width, "height": 1100}, accept_downloads=True)
    page.goto(url)
    page.get_by_text("Example studies").wait_for(timeout=90_000)
    idle(page)
    if presenting:
        page.get_by_text("Presentation mode").click(timeout=90_000)  # generous: shared cores under load
        idle(page)
    page.locator("[data-testid='stMain'] .js-plotly-plot").first.wait_for(timeout=60_000)
    # the films are drawn after the chart in the same run: wait for all four, each loaded (an empty list is
    # "every image complete" too, which let a check run before the films existed on a loaded machine)
    page.wait_for_function("() => { const ims = [...document.querySelectorAll(\"[data-testid='stMain'] [data-testid='stImage'] img\")];"
                           " return ims.length >= 4 && ims.every(i => i.complete); }", timeout=90_000)
    idle(page)
    return page


def check_films(page) -> None:
    films = page.evaluate(FILMS)
    assert len(films) == 4
    for f in films:
        assert f["column"] and inside(f["img"], f["column"]), f  # no film runs past its column
        assert f["caption"] and inside(f["caption"], f["column"]) and not overlap(f["img"], f["caption"]), f
    for i, a in enumerate(films):
        for b in films[i + 1:]:
            assert not overlap(a["img"], b["img"]) and not overlap(a["caption"], b["caption"]), (a, b)


def check_charts(page, min_tick_font: float) -> list[dict]:
    charts = page.evaluate(CHARTS)
    assert charts
    for c in charts:
        for legend in c["legend"]:
            assert inside(legend, c["svg"]), c
            for t in c["titles"]:  # no legend on an axis title ("RFT step", "P(Pneumonia)")
                assert not overlap(legend, t["box"]), (t["text"], c)
        for tick in c["ticks"]:
            assert inside(tick, c["svg"], tol=2), c  # tick labels are drawn inside the figure, none cut
        assert c["titleBox"] is None or inside(c["titleBox"], c["svg"], tol=2), c  # and the title
        assert c["tickFont"] is None or c["tickFont"] >= min_tick_font, c
    return charts


def check_links(page) -> None:
    """The loop's page links show their whole names ("Perturbation lab", not "Perturbation l")."""
    cut = page.evaluate("""() => [...document.querySelectorAll("[data-testid='stMain'] [data-testid='stPageLink-NavLink']")]
        .map(a => [...a.querySelectorAll('p, div')].filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent))
        .flat()""")
    assert cut == []


@pytest.mark.parametrize(("width", "presenting"), [(1400, False), (1920, False), (1400, True), (1920, True)])
def test_home_films_captions_links_and_chart_stay_apart_and_inside(browser, demo, artifacts, width, presenting):
    page = open_home(browser, demo, width, presenting)
    no_exception(page)
    check_films(page)
    check_links(page)
    charts = check_charts(page, min_tick_font=18 if presenting else 11)
    assert any(c["title"].startswith("Drift across the RFT checkpoints") for c in charts)
    page.screenshot(path=str(artifacts / f"home-{width}{'-presenting' if presenting else ''}.png"), full_page=True)
    page.close()


def test_explorer_charts_in_presentation_mode_and_the_heatmap_exported_whole(browser, demo, artifacts, tmp_path):
    page = open_home(browser, demo, 1400, presenting=True)
    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name="Drift explorer").click()  # not Home's link
    page.get_by_text("What drives the drift").wait_for(timeout=60_000)
    idle(page)
    check_charts(page, min_tick_font=16)  # the summary and per-category charts
    page.locator("[data-testid='stButtonGroup'] button", has_text="Trajectory").first.click()
    idle(page)
    page.get_by_text("token of the chain of thought").first.wait_for(timeout=60_000)
    charts = check_charts(page, min_tick_font=16)  # the tokens: 11 px, times 1.5 (they were about 9 px)
    heat = next(c for c in charts if "per checkpoint" in c["title"])  # (its lines run together in textContent)
    assert heat["tickFont"] >= 16
    page.screenshot(path=str(artifacts / "explorer-trajectory-presenting.png"), full_page=True)
    no_exception(page)

    with page.expect_download() as got:  # the heatmap's "Interactive HTML"
        page.locator(".st-key-token-heatmap-html button").click()
    html = got.value
    assert html.suggested_filename.startswith("multimodal-heatmap-") and html.suggested_filename.endswith(".html")
    saved = tmp_path / html.suggested_filename
    html.save_as(saved)
    for width in (1280, 700):  # a slide, and a narrow window: the ticks and titles still fit in the figure
        view = browser.new_page(viewport={"width": width, "height": 800})
        view.goto(saved.as_uri())
        view.locator(".js-plotly-plot .xtick text").first.wait_for(timeout=30_000)
        [chart] = view.evaluate(CHARTS.replace("[data-testid='stMain'] ", ""))
        for tick in chart["ticks"]:
            assert inside(tick, chart["svg"], tol=2), (width, chart)
        assert len(chart["ticks"]) > 10 and "token of the chain of thought" in [t["text"] for t in chart["titles"]]
        assert "checkpoint" in [t["text"] for t in chart["titles"]] and "multimodal" in chart["title"]
        for legend in chart["legend"]:
            assert all(not overlap(legend, t["box"]) for t in chart["titles"])
        view.close()

    page.get_by_text("svg", exact=True).click()  # the sidebar's "Figure downloads": the camera saves SVG
    idle(page)
    plot = page.locator("[data-testid='stMain'] .js-plotly-plot").first
    plot.hover()
    with page.expect_download() as got:
        plot.locator(".modebar-btn[data-title='Download plot']").click()
    svg = got.value
    assert svg.suggested_filename.startswith("multimodal-heatmap-") and svg.suggested_filename.endswith(".svg")
    svg.save_as(tmp_path / svg.suggested_filename)  # with its extension: a browser draws it as SVG
    text = (tmp_path / svg.suggested_filename).read_text(encoding="utf-8")
    assert 'width="1280"' in text  # slide-sized
    for expected in ("token of the chain of thought", "checkpoint-150", "base", "multimodal", "effect drift"):
        assert expected in text, expected
    drawn = browser.new_page(viewport={"width": 1300, "height": 800})  # the file itself, drawn: nothing cut or covered
    drawn.goto((tmp_path / svg.suggested_filename).as_uri())
    [chart] = drawn.evaluate(CHARTS.replace("[data-testid='stMain'] .js-plotly-plot", "svg.main-svg")
                             .replace("gd.querySelector('svg.main-svg')", "gd"))
    assert len(chart["ticks"]) > 10 and all(inside(t, chart["svg"], tol=2) for t in chart["ticks"])
    assert all(not overlap(legend, t["box"]) for legend in chart["legend"] for t in chart["titles"]), chart
    drawn.close()
    page.close()
