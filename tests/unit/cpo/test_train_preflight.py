"""CPO pre-flight on tiny or unbalanced preference data (pairs per answer label, per source)."""


from core.cpo.config import TrainConfig
from core.cpo.train import MIN_PAIRS, balance_warnings, pair_label, preflight
from core.models.loading import load_tokenizer
from workbench.demo.preferences import build_preferences


def _pair(label: str, source: str = "thinking") -> dict:
    return {"prompt": "Findings: opacity.", "chosen": f"<think> x </think> The disease of this patient is {label}.",
            "rejected": "<think> y </think> The disease of this patient is Other.", "source": source, "weight": 1.0}


def test_pair_label_reads_the_chosen_answer():
    assert pair_label(_pair("Lung Opacity")) == "Lung Opacity"
    assert pair_label({**_pair("X"), "label": "Edema"}) == "Edema"
    assert pair_label({"chosen": "no think tag\nAnswer: yes", "source": "a"}) == "Answer: yes"


def test_tiny_unbalanced_and_thin_sources_are_named():
    one = balance_warnings([_pair("Lung Opacity")])
    assert len(one) == 1 and "only 1 pairs" in one[0]
    skewed = [_pair("Lung Opacity")] * 70 + [_pair(f"D{i}", "perception") for i in range(3)]
    w = balance_warnings(skewed)
    assert any("unbalanced answers: 70 of 73" in m and "'Lung Opacity'" in m for m in w)
    assert any("few pairs per source: 'perception' 3" in m for m in w)
    assert not any("only" in m for m in w)
    balanced = [_pair(f"D{i % 7}", "thinking" if i % 2 else "perception") for i in range(MIN_PAIRS)]
    assert balance_warnings(balanced) == []


def test_preflight_of_the_sample_set_is_clean_and_of_one_pair_warns(sample_world, tmp_path):
    tok = load_tokenizer(sample_world / "model")
    data = build_preferences(sample_world, tmp_path / "pairs.jsonl", n=96, seed=0)
    cfg = TrainConfig(base_model=str(sample_world / "model"), data=str(data), output_dir=str(tmp_path / "o"))
    assert not [w for w in preflight(cfg, tok).warnings if "pairs" in w and ("only" in w or "unbalanced" in w)]
    one = tmp_path / "one.jsonl"
    one.write_text(data.read_text().splitlines()[0] + "\n")
    small = preflight(TrainConfig(**{**cfg.__dict__, "data": str(one)}), tok)
    assert any("only 1 pairs" in w for w in small.warnings) and not small.errors


def test_a_run_worse_than_its_start_is_said_in_words():
    from core.cpo.runs import worse_than_start

    start = {"accuracy": 0.587, "flip_rate": 0.104, "malformed": 0.0}
    assert worse_than_start({"accuracy": 0.527, "flip_rate": 0.09, "malformed": 0.0}, start) == \
        ["accuracy 0.527 < 0.587 at the start"]
    assert worse_than_start({"accuracy": 0.9, "flip_rate": 0.2}, start) == ["flip rate 0.200 > 0.104 at the start"]
    assert worse_than_start({"accuracy": 0.9, "flip_rate": 0.05}, start) == []
    assert worse_than_start({"accuracy": 0.1, "held_out_limit": 20}, start) == []  # part of the sets: no comparison
    assert worse_than_start({"accuracy": 0.1}, None) == []
