"""Where modules meet: each shared idea has one home, the linter runs in CI, TRL's private hooks are checked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# ---------------------------------------------------------------------------------------- linter and CI

def test_ci_runs_the_readme_test_command_verbatim_then_ruff_and_the_import_contracts():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"```bash\n(python3 -m venv .venv && [^\n]*pytest)\n```", readme).group(1)
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    test_line = next(i for i, line in enumerate(lines) if line.startswith(command))
    checks = [next(i for i, line in enumerate(lines) if line.startswith(c))
              for c in (".venv/bin/ruff check .", ".venv/bin/lint-imports")]
    assert all(test_line < c for c in checks), "ruff and lint-imports run after the install that brings them"
    assert all(lines[i].endswith("|| status=$?") for i in (test_line, *checks))
    assert lines[-1] == 'exit "$status"'  # a failure of any fails CI
    extra = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    assert all(f'"{tool}>=' in extra for tool in ("ruff", "import-linter", "pytest-xdist")), extra


def test_ruff_passes_when_installed():
    ruff = shutil.which("ruff", path=str(ROOT / ".venv" / "bin")) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' brings it)")
    out = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_docstring_names_every_subcommand():
    from workbench import cli

    subcommands = cli.parser()._subparsers._group_actions[0].choices
    assert "come with the engine" not in cli.__doc__
    for name in subcommands:
        assert f"workbench {name}" in cli.__doc__, f"the module docstring of workbench/cli.py misses {name!r}"


# ---------------------------------------------------------------------------------------- import-time weight

def _modules_after(code: str) -> set[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    probe = code + "\nimport sys; print(' '.join(m for m in ('torch', 'trl', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_a_train_config_is_built_without_torch_or_trl():
    loaded = _modules_after("from core.cpo.config import TrainConfig, OBJECTIVES\n"
                            "TrainConfig(base_model='m', data='d.jsonl', output_dir='o', objective='cpo++')")
    assert not loaded, f"building a TrainConfig imported {sorted(loaded)}"


def test_the_command_line_and_the_worker_build_their_flags_without_torch():
    """Every job command's flags come from its config's fields (core.config): those config modules stay light."""
    loaded = _modules_after("from workbench import cli\nfrom core.jobs import worker\ncli.parser(); worker.parser()")
    assert not loaded, f"building the command line's parsers imported {sorted(loaded)}"


def test_the_pages_cached_access_imports_without_torch():
    loaded = _modules_after("import workbench.resources")
    assert not loaded, f"importing workbench.resources imported {sorted(loaded)}"


def test_the_trainer_checks_objectives_from_the_config():
    from core.cpo import config as cpo
    from core.cpo import trainer as cpo_trainer

    assert cpo_trainer.OBJECTIVES is cpo.OBJECTIVES
    with pytest.raises(ValueError, match="objective"):
        cpo.TrainConfig(base_model="m", data="d", output_dir="o", objective="ppo")


# ---------------------------------------------------------------------------------------- TRL's private hooks

def test_every_private_trl_hook_cpo_trainer_overrides_is_still_there():
    from core.cpo import trainer as cpo_trainer

    problems = cpo_trainer.hook_problems()
    assert not problems, "\n".join(problems)  # each line names the hook that moved
    for name in cpo_trainer.HOOKS:  # the table lists what CPOTrainer really overrides
        assert name in vars(cpo_trainer.CPOTrainer), f"CPOTrainer no longer overrides {name}: drop it from HOOKS"


def test_a_moved_hook_is_named_and_stops_the_trainer():
    from core.cpo import trainer as cpo_trainer

    class OtherTRL:  # what a future TRL might look like: one signature changed, the rest gone
        def _prepare_dataset(self, dataset, args):
            return dataset

        def compute_loss(self, model, inputs):
            return model(**inputs).loss

    problems = "\n".join(cpo_trainer.hook_problems(OtherTRL))
    assert "OtherTRL._prepare_dataset now takes ('dataset', 'args')" in problems
    for name in ("_set_signature_columns_if_needed", "_compute_loss", "_save"):
        assert f"OtherTRL.{name} is gone" in problems
    assert "'self._compute_loss('" in problems and "'add_fused_lm_head('" in problems
    with pytest.raises(RuntimeError, match=r"TRL .* does not fit .*tested: trl>=.*_compute_loss is gone"):
        cpo_trainer.check_hooks(OtherTRL)


def test_pyproject_pins_the_trl_range_the_hooks_were_checked_against():
    import trl
    from packaging.specifiers import SpecifierSet

    from core.cpo.trainer import TESTED_TRL

    assert f'"trl{TESTED_TRL}"' in (ROOT / "pyproject.toml").read_text()
    assert trl.__version__ in SpecifierSet(TESTED_TRL), f"installed TRL {trl.__version__} is outside trl{TESTED_TRL}"


def test_trls_preference_collator_still_gives_the_columns_the_loss_reads():
    from core.models.families.text_collator import WeightedPreferenceCollator

    batch = WeightedPreferenceCollator(pad_token_id=0)([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4]}])
    assert {"input_ids", "attention_mask", "completion_mask", "weight", "source_idx"} <= set(batch)
    assert batch["completion_mask"].tolist() == [[0, 0, 1], [0, 0, 1]]  # [chosen; rejected], completion tokens


# ---------------------------------------------------------------------------------------- one loader of base models

def test_cpo_loads_its_base_through_its_family(sample_world, tmp_path, monkeypatch):
    import torch

    from core.cpo import train as cpo
    from core.errors import InputError
    from core.models.families import TEXT_FAMILY

    calls = []
    real = TEXT_FAMILY.load_model
    monkeypatch.setattr(TEXT_FAMILY, "load_model", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    cfg = cpo.TrainConfig(base_model=str(sample_world / "model"), data="d.jsonl", output_dir=str(tmp_path), bf16=False)
    model = cpo.load_base(cfg, cuda=False)
    assert len(calls) == 1 and calls[0][0][0] == sample_world / "model"
    assert next(model.parameters()).dtype == torch.float32 and next(model.parameters()).device.type == "cpu"

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((sample_world / "model" / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    cfg = cpo.TrainConfig(base_model=str(broken), data="d.jsonl", output_dir=str(tmp_path))
    with pytest.raises(InputError, match=r"broken: cannot load model weights"):
        cpo.load_base(cfg, cuda=False)


# ---------------------------------------------------------------------------------------- one INSERT each

def test_trajectories_and_counterfactuals_are_inserted_in_one_place():
    for table in ("trajectories", "counterfactuals"):
        writers = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "core").rglob("*.py"))
                   if f"INSERT INTO {table} " in p.read_text()]
        assert writers == ["core/counterfactuals/store.py"], f"INSERT INTO {table} in {writers}"


def test_a_generated_and_an_imported_counterfactual_share_their_trajectory(tmp_path):
    import json

    from core.counterfactuals.rewrite import Consistency, Counterfactual
    from core.counterfactuals.store import store_counterfactuals
    from core.curation import snapshots
    from core.io.store import Store

    store = Store.open(tmp_path / "w.db")
    record = {"id": "s1", "prompt": "Findings: opacity.", "label": "Edema",
              "completion": "<think> opacity </think> The disease of this patient is Edema."}
    cf = Counterfactual("Pneumonia", "<think> consolidation </think> The disease of this patient is Pneumonia.",
                        "graph", 3, None, {"mode": "one"}, Consistency(0.5, 0.5, 1.0, 0.0, (), ()))
    first = store_counterfactuals(store, record, "test", [cf])
    assert store_counterfactuals(store, record, "test", [cf]) == first  # stored once, same id
    line = json.dumps({"prompt": record["prompt"], "chosen": record["completion"], "label": "Edema",
                       "rejected": "<think> effusion </think> The disease of this patient is Pleural Effusion."})
    result = snapshots.import_text(store, line + "\n", "pairs.jsonl", required=2)
    assert (result.kept, result.duplicates) == (1, 0)
    assert snapshots.import_text(store, line + "\n", "again.jsonl").duplicates == 1
    assert store.query("SELECT COUNT(*) FROM trajectories") == [(1,)]
    rows = store.query("SELECT method, graph_version, consistency, settings, required_decisions, import_batch_id "
                       "FROM counterfactuals ORDER BY id")
    assert rows[0] == ("graph", 3, 0.5, '{"mode": "one"}', 1, None)
    assert rows[1][0] == "import" and rows[1][4] == 2 and rows[1][5] == result.batch_id
    store.close()


# ---------------------------------------------------------------------------------------- one word-diff renderer

def test_the_word_diff_is_rendered_in_one_place():
    files = [p for folder in ("workbench", "pages") for p in sorted((ROOT / folder).rglob("*.py"))]
    users = [p.relative_to(ROOT).as_posix() for p in files if "changed_spans" in p.read_text()]
    assert users == ["workbench/diffview.py"], f"changed_spans rendered in {users}"


def test_both_diff_views_show_the_same_marked_words():
    from workbench import graphview
    from workbench.diffview import diff_html

    original, counterfactual = "<b>opacity</b> & clear lungs.", "consolidation & clear lungs."
    left, right = diff_html(original, counterfactual)
    table = graphview.side_by_side_html(original, counterfactual)
    assert left == '<mark class="del">&lt;b&gt;opacity&lt;/b&gt;</mark> &amp; clear lungs.'
    assert right == '<mark class="ins">consolidation</mark> &amp; clear lungs.'
    assert "<del style='background:#fdd'>&lt;b&gt;opacity&lt;/b&gt;</del> &amp; clear lungs." in table
    assert "<mark style='background:#cfc'>consolidation</mark> &amp; clear lungs." in table


# ---------------------------------------------------------------------------------------- the workspace's folders

def test_the_workspace_names_and_makes_its_folders(tmp_path):
    from core.workspace.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    named = {"cache": ws.cache_dir, "jobs": ws.jobs_dir, "runs": ws.runs_dir, "analyses": ws.analyses_dir,
             "uploads": ws.uploads_dir, "datasets": ws.datasets_dir, "perturbations": ws.perturbations_dir}
    for name, folder in named.items():
        assert folder == ws.root / name and folder.is_dir(), name
    assert ws.job_dirs == (ws.jobs_dir, ws.runs_dir)
    ws.store.close()


def test_new_jobs_start_in_jobs_and_old_ones_under_runs_still_show(tmp_path):
    import time

    from core.jobs import supervisor as jobs
    from core.workspace.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    old = jobs.Job(ws.runs_dir / "score-20250101-000000-abcdef", "score", "an old job", ["-c", "pass"],
                   time.time() - 3600, None, {})
    old.dir.mkdir()
    old._save()  # as a workspace from before jobs/ left it (next to runs/cpo/<name>)
    new = jobs.start(ws.jobs_dir, "score", ["-c", "pass"], title="a new job")
    assert new.dir.parent == ws.jobs_dir
    assert [j.title for j in jobs.list_jobs(ws.job_dirs, "score")] == ["a new job", "an old job"]
    assert [j.title for j in jobs.list_jobs([ws.jobs_dir, ws.jobs_dir])] == ["a new job"]  # a folder counts once
    assert new.wait(30) == "done"
    ws.store.close()


def test_pages_ask_the_workspace_for_its_folders():
    for page in sorted((ROOT / "pages").glob("*.py")):
        text = page.read_text()
        assert not re.search(r"\bws\.root\s*/", text), f"{page.name} builds a workspace path itself"
        assert "jobs.start(ws.runs_dir" not in text, f"{page.name} starts a job among the CPO run folders"
