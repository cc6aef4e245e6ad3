"""Synthetic chest-film-like images that show a study's findings, for the multimodal sample world.

A film is drawn on a grid of normalised coordinates (y down, x right; the patient's right lung on the image's
left, as on a real PA film): dark lung fields with faint vascular markings and ribs, a bright mediastinum and
heart shadow, domed hemidiaphragms. Each finding of ``workbench.demo.spec`` that the world uses has a drawing
with a place on the film (``REGIONS`` names it), varied per study by the seed: an opacity blob in one lung
zone, a pleural meniscus at a costophrenic angle, an enlarged heart shadow, a pneumothorax edge with no lung
markings beyond it, tubes and lines, and so on.

    img = draw_study(["opacity", "blunted costophrenic angle"], seed=7)   # 112 x 112 RGB PIL image

Everything is numpy on a fixed-size grid, so one film takes about a millisecond.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SIZE = 112  # 112 x 112 pixels -> 8 x 8 patches of 14 -> 16 merged image tokens

# Where each drawn finding is, for documentation and the occlusion view ("which region the belief follows").
REGIONS: dict[str, str] = {
    "clear lungs": "-", "normal heart size": "-",
    "opacity": "a round soft blob in one zone of one lung",
    "hazy density": "a faint veil over most of one lung",
    "infiltrate": "many small patches scattered over one lower zone",
    "consolidation": "a dense upper lobe, sharply bounded below by the fissure",
    "nodule": "a small bright dot in the middle zone of one lung",
    "mass": "a large bright sharply bounded round shadow in the upper zone of one lung",
    "perihilar haze": "haze around both hila (a bat-wing shape)",
    "kerley b lines": "short horizontal lines at both lung bases, laterally",
    "linear band": "a thin bright horizontal band across one lower zone",
    "elevated hemidiaphragm": "one hemidiaphragm dome raised",
    "enlarged cardiac silhouette": "a wide heart shadow",
    "widened mediastinum": "a wide upper mediastinum",
    "pleural line": "a thin bright curved line near the apex of one lung (the pneumothorax edge)",
    "absent lung markings": "a dark band without vascular markings along the lateral edge of one lung",
    "blunted costophrenic angle": "fluid filling one costophrenic angle",
    "meniscus sign": "a fluid level with a meniscus curving up laterally at one lung base",
    "pleural thickening": "a bright band along the lateral wall of one lung",
    "rib fracture": "a break with a step in the third lateral rib of one side",
    "callus": "a bright lump on the fourth lateral rib of one side",
    "endotracheal tube": "a bright vertical tube in the trachea",
    "central line": "a bright line from the right neck into the mediastinum",
    "pacemaker leads": "a bright device at the upper left chest with wires to the heart",
}


class Film:
    """One film under construction: the pixel grid, its random source and the anatomy's jittered geometry."""

    def __init__(self, seed: int, size: int = SIZE):
        # Two random sources: the patient (anatomy, markings, noise) and the findings' placement, so that the
        # same seed with and without a finding is the same patient (a film's counterfactual twin).
        self.base_rng = np.random.default_rng([seed, 0])
        self.rng = np.random.default_rng([seed, 1])
        self.y, self.x = np.mgrid[0:size, 0:size] / (size - 1)
        j = lambda s: self.base_rng.uniform(-s, s)  # noqa: E731 - anatomy jitter
        self.cx = 0.5 + j(0.02)  # midline
        self.lungs = {side: dict(cx=self.cx + sgn * (0.2 + j(0.015)), cy=0.47 + j(0.02), rx=0.14 + j(0.01),
                                 ry=0.3 + j(0.015)) for side, sgn in (("right", -1), ("left", 1))}
        self.dome = {"right": 0.74 + j(0.015), "left": 0.76 + j(0.015)}  # hemidiaphragm heights
        self.heart_w = 0.15 + j(0.01)
        self.medi_w = 0.06 + j(0.006)
        self.img = np.zeros_like(self.y)
        self.overlay = np.zeros_like(self.y)  # findings and devices, added on top of the anatomy

    # -- shapes -------------------------------------------------------------------------------------
    def blob(self, cy, cx, ry, rx, sharp: float = 0.0) -> np.ndarray:
        d = ((self.y - cy) / ry) ** 2 + ((self.x - cx) / rx) ** 2
        return 1 / (1 + np.exp(np.minimum((d - 1) * sharp, 50))) if sharp else np.exp(-d)

    def line(self, y0, x0, y1, x1, width: float) -> np.ndarray:
        """A straight segment of the given width (in normalised units), soft-edged."""
        p = np.stack([self.y - y0, self.x - x0])
        d = np.array([y1 - y0, x1 - x0])
        t = np.clip((p[0] * d[0] + p[1] * d[1]) / (d @ d), 0, 1)
        dist = np.hypot(self.y - (y0 + t * d[0]), self.x - (x0 + t * d[1]))
        return np.exp(-(dist / width) ** 2)

    def lung_mask(self, side: str) -> np.ndarray:
        g = self.lungs[side]
        inside = ((self.y - g["cy"]) / g["ry"]) ** 2 + ((self.x - g["cx"]) / g["rx"]) ** 2 < 1
        return inside & (self.y < self.dome_line(side))

    def dome_line(self, side: str) -> np.ndarray:
        g = self.lungs[side]
        return self.dome[side] - 0.06 * (1 - ((self.x - g["cx"]) / g["rx"]) ** 2).clip(0)

    def side(self) -> str:
        return "right" if self.rng.random() < 0.5 else "left"

    def lateral(self, side: str) -> float:
        return -1.0 if side == "right" else 1.0  # the image direction towards the chest wall

    # -- anatomy ------------------------------------------------------------------------------------
    def anatomy(self) -> np.ndarray:
        body = self.blob(0.52, self.cx, 0.46, 0.44, sharp=12)
        img = 25 + 85 * body
        for side in self.lungs:
            mask = self.lung_mask(side)
            markings = _smooth_noise(self.base_rng, self.y.shape, 4) * 5 * np.exp(-((self.x - self.cx) / 0.25) ** 2)
            img = np.where(mask, 40 + markings + 8 * np.exp(-((self.y - 0.5) / 0.2) ** 2), img)
        for k in range(6):  # ribs: faint arcs across both lungs
            yr = 0.25 + 0.085 * k
            arc = np.exp(-((self.y - yr - 0.06 * ((self.x - self.cx) / 0.35) ** 2) / 0.012) ** 2)
            img += 7 * arc * (self.lung_mask("right") | self.lung_mask("left"))
        img += 70 * self.blob(0.45, self.cx, 0.4, self.medi_w, sharp=8)  # mediastinum and spine
        img -= 30 * self.blob(0.17, self.cx, 0.12, 0.018, sharp=8)  # the trachea's air column
        return img

    def heart(self) -> np.ndarray:
        return 95 * self.blob(0.66, self.cx + 0.03, 0.11, self.heart_w, sharp=8)

    def render(self, noise: float = 4.0) -> np.ndarray:
        img = self.anatomy() + self.heart() + self.overlay
        img += noise * self.base_rng.standard_normal(img.shape)
        return np.clip(img, 0, 255)

    # -- where findings go --------------------------------------------------------------------------
    def zone(self, side: str, level: str) -> tuple[float, float]:
        g = self.lungs[side]
        cy = {"upper": 0.3, "middle": 0.47, "lower": 0.62}[level] + self.rng.uniform(-0.03, 0.03)
        cx = g["cx"] + self.rng.uniform(-0.04, 0.04)
        return cy, cx


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, upsampled."""
    coarse = rng.uniform(-1, 1, (shape[0] // cells + 2, shape[1] // cells + 2))
    return np.kron(coarse, np.ones((cells, cells)))[: shape[0], : shape[1]]


# ---- findings --------------------------------------------------------------------------------------

def _opacity(f: Film) -> None:
    cy, cx = f.zone(f.side(), f.rng.choice(["upper", "middle", "lower"]))
    r = f.rng.uniform(0.08, 0.1)
    f.overlay += 60 * f.blob(cy, cx, r, r)


def _hazy(f: Film) -> None:
    g = f.lungs[f.side()]
    f.overlay += 38 * f.blob(g["cy"], g["cx"], g["ry"] * 0.8, g["rx"] * 0.9, sharp=4)


def _infiltrate(f: Film) -> None:
    side = f.side()
    cy, cx = f.zone(side, "lower")
    for _ in range(9):
        r = f.rng.uniform(0.028, 0.038)
        f.overlay += 75 * f.blob(cy + f.rng.uniform(-0.1, 0.08), cx + f.rng.uniform(-0.08, 0.08), r, r, sharp=6) \
            * f.lung_mask(side)


def _consolidation(f: Film) -> None:
    side = f.side()  # a dense upper lobe, sharply bounded below by the fissure
    g = f.lungs[side]
    fissure = g["cy"] - 0.08 + f.rng.uniform(-0.03, 0.03)
    f.overlay += 80 * (f.y < fissure) * f.lung_mask(side)


def _nodule(f: Film) -> None:
    cy, cx = f.zone(f.side(), "middle")
    f.overlay += 120 * f.blob(cy, cx, 0.04, 0.04, sharp=10)


def _mass(f: Film) -> None:
    cy, cx = f.zone(f.side(), "upper")
    f.overlay += 120 * f.blob(cy, cx, 0.1, 0.1, sharp=12)


def _perihilar(f: Film) -> None:
    for sgn in (-1, 1):
        f.overlay += 50 * f.blob(0.48, f.cx + sgn * 0.13, 0.12, 0.07)


def _kerley(f: Film) -> None:
    for side in f.lungs:
        g, lat = f.lungs[side], f.lateral(side)
        x_out = g["cx"] + lat * g["rx"] * 0.85
        for k in range(3):
            y = f.dome[side] - 0.1 - 0.035 * k
            f.overlay += 90 * f.line(y, x_out, y, x_out - lat * 0.07, 0.012)


def _linear_band(f: Film) -> None:
    g = f.lungs[f.side()]
    y = g["cy"] + 0.15 + f.rng.uniform(-0.02, 0.02)
    f.overlay += 85 * f.line(y, g["cx"] - 0.1, y + 0.02, g["cx"] + 0.1, 0.018)


def _elevated_hemidiaphragm(f: Film) -> None:
    side = f.side()
    f.dome[side] -= 0.12  # anatomy is drawn at render time, so the raised dome shows there


def _enlarged_heart(f: Film) -> None:
    f.heart_w *= 1.6


def _widened_mediastinum(f: Film) -> None:
    f.overlay += 90 * f.blob(0.3, f.cx, 0.14, f.medi_w * 2.4, sharp=8)


def _pneumothorax_region(f: Film, side: str) -> np.ndarray:
    """The band between the chest wall and the collapsed lung's edge, upper and lateral."""
    g, lat = f.lungs[side], f.lateral(side)
    edge = g["cx"] + lat * g["rx"] * 0.45
    beyond = (f.x - edge) * lat > 0
    return f.lung_mask(side) & beyond & (f.y < g["cy"] + 0.08)


def _pleural_line(f: Film) -> None:
    side = getattr(f, "ptx_side", None) or f.side()
    f.ptx_side = side
    g, lat = f.lungs[side], f.lateral(side)
    edge = g["cx"] + lat * g["rx"] * 0.45
    f.overlay += 120 * f.line(g["cy"] - g["ry"] * 0.85, edge + lat * 0.02, g["cy"] + 0.08, edge, 0.018)
    f.overlay += 18 * (f.lung_mask(side) & ((f.x - edge) * lat < 0) & (f.y < g["cy"] + 0.08))  # the collapsed lung


def _absent_markings(f: Film) -> None:
    side = getattr(f, "ptx_side", None) or f.side()
    f.ptx_side = side
    f.overlay -= 35 * _pneumothorax_region(f, side)


def _blunted_angle(f: Film) -> None:
    side = f.side()
    g, lat = f.lungs[side], f.lateral(side)
    corner_y, corner_x = f.dome[side] - 0.01, g["cx"] + lat * g["rx"] * 0.9
    f.overlay += 90 * f.blob(corner_y, corner_x, 0.06, 0.05, sharp=10)


def _meniscus(f: Film) -> None:
    side = f.side()
    g, lat = f.lungs[side], f.lateral(side)
    level = f.dome[side] - 0.12 - 0.1 * ((f.x - g["cx"]) * lat / g["rx"]).clip(0, 1) ** 2  # curves up laterally
    f.overlay += 70 * (f.y > level) * f.lung_mask(side)


def _pleural_thickening(f: Film) -> None:
    side = f.side()
    g, lat = f.lungs[side], f.lateral(side)
    x = g["cx"] + lat * g["rx"] * 0.92
    f.overlay += 80 * f.line(g["cy"] - 0.2, x, g["cy"] + 0.2, x, 0.022)


def _rib_point(f: Film, side: str, k: int) -> tuple[float, float]:
    g, lat = f.lungs[side], f.lateral(side)
    x = g["cx"] + lat * g["rx"] * 0.7
    return 0.25 + 0.085 * k + 0.06 * ((x - f.cx) / 0.35) ** 2, x


def _rib_fracture(f: Film) -> None:
    cy, cx = _rib_point(f, f.side(), 2)
    f.overlay -= 40 * f.blob(cy, cx, 0.03, 0.02)  # the gap
    f.overlay += 120 * f.line(cy - 0.05, cx - 0.025, cy + 0.05, cx + 0.025, 0.014)  # the displaced step


def _callus(f: Film) -> None:
    cy, cx = _rib_point(f, f.side(), 3)
    f.overlay += 120 * f.blob(cy, cx, 0.045, 0.06, sharp=8)


def _ett(f: Film) -> None:
    f.overlay += 140 * f.line(0.02, f.cx, 0.3, f.cx, 0.014)


def _central_line(f: Film) -> None:
    f.overlay += 130 * f.line(0.08, f.cx - 0.28, 0.22, f.cx - 0.07, 0.013)
    f.overlay += 130 * f.line(0.22, f.cx - 0.07, 0.42, f.cx - 0.04, 0.013)


def _pacemaker(f: Film) -> None:
    dy, dx = 0.14, f.cx + 0.3
    f.overlay += 150 * f.blob(dy, dx, 0.05, 0.07, sharp=12)
    f.overlay += 120 * f.line(dy, dx, 0.6, f.cx + 0.05, 0.012)


DRAW: dict[str, Callable[[Film], None]] = {
    "clear lungs": lambda f: None, "normal heart size": lambda f: None,
    "opacity": _opacity, "hazy density": _hazy, "infiltrate": _infiltrate, "consolidation": _consolidation,
    "nodule": _nodule, "mass": _mass, "perihilar haze": _perihilar, "kerley b lines": _kerley,
    "linear band": _linear_band, "elevated hemidiaphragm": _elevated_hemidiaphragm,
    "enlarged cardiac silhouette": _enlarged_heart, "widened mediastinum": _widened_mediastinum,
    "pleural line": _pleural_line, "absent lung markings": _absent_markings,
    "blunted costophrenic angle": _blunted_angle, "meniscus sign": _meniscus,
    "pleural thickening": _pleural_thickening, "rib fracture": _rib_fracture, "callus": _callus,
    "endotracheal tube": _ett, "central line": _central_line, "pacemaker leads": _pacemaker,
}
assert set(DRAW) == set(REGIONS)
FINDINGS = tuple(DRAW)


def draw_study(findings: list[str] | tuple[str, ...], seed: int, size: int = SIZE):
    """The film of a study that shows ``findings`` (names from ``DRAW``), as an RGB PIL image; the same seed
    without a finding is the same film without it (same patient, the other findings in the same places)."""
    from PIL import Image

    unknown = [f for f in findings if f not in DRAW]
    if unknown:
        raise ValueError(f"no drawing for finding(s) {unknown}; known: {sorted(DRAW)}")
    film = Film(seed, size)
    for name in findings:
        film.rng = np.random.default_rng([seed, 1, FINDINGS.index(name)])  # its own: the twin without another
        DRAW[name](film)                                                  # finding shows this one in place
    return Image.fromarray(film.render().astype("uint8")).convert("RGB")
