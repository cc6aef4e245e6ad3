"""The demo world's knowledge: the 14 CheXpert labels, their radiographic findings and synonyms.

``FINDING_RATES[disease][finding]`` is the probability that a study of that disease shows the finding;
a finding with a positive rate "supports" the disease. ``EXCLUDES`` lists findings that rule a disease
out. The generator samples studies from these rates, so the Bayes posterior over diseases given the
findings is genuinely ambiguous where findings are shared ("opacity" above all), as in real reports.
"""

from __future__ import annotations

DISEASES: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)

# canonical finding -> surface forms (near-synonyms); the first is the canonical form.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "opacity": ("opacity", "lung opacity"),
    "hazy density": ("hazy density", "ground glass density"),
    "consolidation": ("consolidation", "airspace consolidation", "airspace opacity"),
    "air bronchograms": ("air bronchograms", "air bronchogram sign"),
    "infiltrate": ("infiltrate", "patchy opacity"),
    "vascular congestion": ("vascular congestion", "venous congestion"),
    "kerley b lines": ("kerley b lines", "septal lines"),
    "perihilar haze": ("perihilar haze", "perihilar opacity"),
    "volume loss": ("volume loss", "reduced lung volume"),
    "linear band": ("linear band", "linear opacity"),
    "elevated hemidiaphragm": ("elevated hemidiaphragm", "raised hemidiaphragm"),
    "nodule": ("nodule", "rounded opacity"),
    "mass": ("mass", "masslike density"),
    "widened mediastinum": ("widened mediastinum", "mediastinal widening"),
    "enlarged cardiac silhouette": ("enlarged cardiac silhouette", "enlarged heart"),
    "increased cardiothoracic ratio": ("increased cardiothoracic ratio", "high cardiothoracic ratio"),
    "pleural line": ("pleural line", "visceral pleural line"),
    "absent lung markings": ("absent lung markings", "absent vascular markings"),
    "deep sulcus sign": ("deep sulcus sign", "deep sulcus"),
    "blunted costophrenic angle": ("blunted costophrenic angle", "costophrenic blunting"),
    "meniscus sign": ("meniscus sign", "layering fluid"),
    "pleural thickening": ("pleural thickening", "thickened pleura"),
    "pleural plaque": ("pleural plaque", "calcified plaque"),
    "rib fracture": ("rib fracture", "cortical break"),
    "callus": ("callus", "healing callus"),
    "endotracheal tube": ("endotracheal tube", "et tube"),
    "central line": ("central line", "central venous catheter"),
    "pacemaker leads": ("pacemaker leads", "pacer wires"),
    "clear lungs": ("clear lungs", "lungs are clear"),
    "normal heart size": ("normal heart size", "normal cardiac size"),
}

FINDING_RATES: dict[str, dict[str, float]] = {
    "No Finding": {"clear lungs": 0.9, "normal heart size": 0.8},
    "Enlarged Cardiomediastinum": {"widened mediastinum": 0.9, "enlarged cardiac silhouette": 0.3},
    "Cardiomegaly": {"enlarged cardiac silhouette": 0.9, "increased cardiothoracic ratio": 0.6,
                     "vascular congestion": 0.15},
    "Lung Opacity": {"opacity": 0.9, "hazy density": 0.5, "infiltrate": 0.2},
    "Lung Lesion": {"nodule": 0.7, "mass": 0.5, "opacity": 0.2},
    "Edema": {"vascular congestion": 0.7, "kerley b lines": 0.5, "perihilar haze": 0.6, "opacity": 0.3,
              "blunted costophrenic angle": 0.2},
    "Consolidation": {"consolidation": 0.9, "air bronchograms": 0.4, "opacity": 0.35},
    "Pneumonia": {"infiltrate": 0.6, "consolidation": 0.45, "air bronchograms": 0.35, "opacity": 0.4},
    "Atelectasis": {"volume loss": 0.6, "linear band": 0.6, "elevated hemidiaphragm": 0.4, "opacity": 0.3},
    "Pneumothorax": {"pleural line": 0.8, "absent lung markings": 0.6, "deep sulcus sign": 0.3},
    "Pleural Effusion": {"blunted costophrenic angle": 0.85, "meniscus sign": 0.6, "opacity": 0.1},
    "Pleural Other": {"pleural thickening": 0.8, "pleural plaque": 0.5, "blunted costophrenic angle": 0.2},
    "Fracture": {"rib fracture": 0.9, "callus": 0.4},
    "Support Devices": {"endotracheal tube": 0.6, "central line": 0.6, "pacemaker leads": 0.4},
}

# finding -> diseases it rules out (mutually exclusive in the graph).
EXCLUDES: dict[str, tuple[str, ...]] = {
    "clear lungs": ("Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                    "Pneumothorax", "Pleural Effusion"),
    "normal heart size": ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    "absent lung markings": ("Atelectasis", "Consolidation"),
    "air bronchograms": ("No Finding",),
    "opacity": ("No Finding",),
}

DESCRIPTIONS: dict[str, str] = {
    "Lung Opacity": "Any area of increased attenuation in the lung; the catch-all label in CheXpert.",
    "opacity": "Ambiguous: seen in lung opacity, pneumonia, consolidation, edema, atelectasis and more.",
}

# The label the non-stationary RFT stream's shifted annotation convention gives every "opacity" study.
SHORTCUT_FINDING = "opacity"
SHORTCUT_LABEL = "Lung Opacity"
# Classes that are rare in the SFT data but common in the RFT stream: where RFT helps (beneficial drift).
RARE_IN_SFT: tuple[str, ...] = ("Pneumothorax", "Fracture")


def supporters(finding: str, finding_rates: dict[str, dict[str, float]] | None = None) -> list[str]:
    """Diseases a finding supports (at ``finding_rates``, default ``FINDING_RATES``), most typical first."""
    rated = [(rates[finding], d) for d, rates in (finding_rates or FINDING_RATES).items() if finding in rates]
    return [d for _, d in sorted(rated, key=lambda x: -x[0])]
