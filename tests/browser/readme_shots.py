"""The README's screenshots of every page, as a talk audience first sees them (not a test: run it by hand).

    python -m tests.browser.readme_shots [--out workbench/assets] [--width 1400]

Starts ``workbench demo --world multimodal`` on a fresh workspace, probes one region occlusion of the Perturbation
lab's first study beforehand (so the lab shows its heatmap over the X-ray), and saves one PNG per page in
headless Chromium (Debian's ``chromium``), its whole height, reduced to a 256-colour palette (a third of the bytes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.browser.conftest import stop, wait_http
from tests.conftest import CHROMIUM_ARGS, ROOT, chromium_path

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
PAGES = [("home", "", None), ("checkpoints", "checkpoints", None), ("explorer", "explorer", None),
         ("explorer-trajectory", "explorer", "Trajectory"), ("perturbation", "perturbation", None),
         ("graph", "graph_editor", None), ("counterfactuals", "counterfactuals", None), ("curation", "curation", None),
         ("runs", "runs", None)]


def occlusion_result(workspace: Path) -> None:
    """One occlusion of the shipped analysis's first study, where the lab lists its results."""
    import dataclasses

    from core.drift.analysis import AnalysisView
    from core.perturb import visual, visual_probe
    from core.workspace.workspace import Workspace
    from core.workspace.world import load_world
    from workbench.demo import SAMPLE_WORLDS

    view = AnalysisView.open(SAMPLE_WORLDS["multimodal"] / "analysis")
    first = view.records()[0]["id"]
    cfg = dataclasses.replace(visual.VisualConfig.from_analysis(view.config), kind="occlusion", traj_ids=[first],
                              grid=4, device="cpu")
    folder = visual.results_dir(Workspace.open(workspace), load_world(SAMPLE_WORLDS["multimodal"]))
    visual.write_result(visual_probe.run(cfg), cfg, visual.result_path(folder, cfg))


def shoot(url: str, out: Path, width: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        for name, path, click in PAGES:
            page = browser.new_page(viewport={"width": width, "height": 1000})
            page.goto(f"{url}/{path}")
            page.wait_for_selector(IDLE, timeout=120_000)
            if click:
                page.locator("[data-testid='stButtonGroup'] button", has_text=click).first.click()
                page.wait_for_timeout(1500)
                page.wait_for_selector(IDLE, timeout=120_000)
            page.wait_for_timeout(4000)  # media, charts and the graph's canvas settle
            height = page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollHeight")
            page.set_viewport_size({"width": width, "height": min(int(height) + 40, 4000)})
            page.wait_for_timeout(1500)
            target = out / f"{name}.png"
            page.screenshot(path=str(target))
            _palette(target)
            print(f"{target}: {target.stat().st_size // 1024} KB")
            page.close()
        browser.close()


def _palette(path: Path) -> None:
    from PIL import Image

    Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "workbench" / "assets")
    ap.add_argument("--width", type=int, default=1400)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        occlusion_result(workspace)
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "demo", "--world", "multimodal", "--headless",
                                 "--port", str(port), "--workspace", str(workspace)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True, env=dict(os.environ))
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/_stcore/health", proc)
            shoot(url, args.out, args.width)
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
