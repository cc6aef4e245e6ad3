"""ms-swift itself with the plugin file, in its own virtual environment (ms-swift 4.6 pins trl 0.29 and transformers
5.19; ours differ): ``swift sft ... --external_plugins FILE --callbacks cot_drift_watch`` on a tiny local model with
``save_total_limit 1``; every step is recorded and scored.

The environment takes about 80 s to install and is not part of the workbench's: ``.ci/run`` builds it in the
background while the suite runs and names it in ``$WORKBENCH_SWIFT_VENV`` (its ``ready`` file marks it built); this
test waits for it. Without that variable (a local run) the test is skipped, saying how to run it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from core.watch import scorer
from core.watch.config import WatchConfig

pytestmark = pytest.mark.slow
SWIFT_VENV = "WORKBENCH_SWIFT_VENV"


@pytest.fixture(scope="module")
def swift_venv() -> Path:
    venv = os.environ.get(SWIFT_VENV)
    if not venv:
        pytest.skip(f"set {SWIFT_VENV} to a virtualenv with `pip install torch==2.13.0 ms-swift==4.6.0` and a 'ready' "
                    "file in it (.ci/run builds one in the background)")
    venv = Path(venv)
    deadline = time.monotonic() + 900
    while not (venv / "ready").is_file():
        if (venv / "failed").is_file() or time.monotonic() > deadline:
            log = venv.with_name(venv.name + ".log")
            pytest.fail(f"the ms-swift environment {venv} was not built: "
                        f"{log.read_text()[-2000:] if log.is_file() else 'no log'}")
        time.sleep(2)
    return venv


def test_swift_sft_with_the_plugin_file_records_every_step(swift_venv, foreign_run, tmp_path):
    from workbench import watch_cli

    plugin = tmp_path / "plugins" / "cot_drift_watch.py"
    watch_cli.write_plugin(plugin)
    watch, out = tmp_path / "watch", tmp_path / "swift-out"
    env = {**os.environ, "COT_DRIFT_WATCH_DIR": str(watch), "COT_DRIFT_WATCH_KEEP": "adapters", "HF_HUB_OFFLINE": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("PYTHONPATH", None)  # ms-swift runs on its own packages, not the workbench's
    cmd = [str(swift_venv / "bin" / "swift"), "sft", "--model", str(foreign_run["base"]), "--model_type", "llama",
           "--template", "default", "--dataset", str(foreign_run["train"]), "--tuner_type", "lora", "--output_dir",
           str(out), "--max_steps", "3", "--save_steps", "1", "--save_total_limit", "1",
           "--per_device_train_batch_size", "2", "--logging_steps", "1", "--report_to", "none", "--use_hf", "true",
           "--dataloader_num_workers", "0", "--torch_dtype", "float32",
           "--external_plugins", str(plugin), "--callbacks", "cot_drift_watch"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    versions = subprocess.run([str(swift_venv / "bin" / "python"), "-c", "import transformers, trl; "
                               "print(transformers.__version__, trl.__version__)"], capture_output=True, text=True)
    assert versions.stdout.split()[1].startswith("0.29")  # the trainer ran on ms-swift's own pins
    kept = list(out.glob("v*/checkpoint-*"))
    assert [p.name for p in kept] == ["checkpoint-3"]  # ms-swift rotated the others away
    assert sorted(p.name for p in (watch / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    state = json.loads((watch / "trainer.json").read_text())
    assert state["status"] == "ended" and state["global_step"] == 3
    assert json.loads((watch / "checkpoints" / "checkpoint-2" / "args.json").read_text())["tuner_type"] == "lora"
    cfg = WatchConfig(run=str(watch), base=str(foreign_run["base"]), data=str(foreign_run["heldout"]), limit=4,
                      decode=0, once=True, batch_size=4)
    assert scorer.run(cfg) == 3
