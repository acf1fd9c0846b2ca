"""The measurement scripts in scripts/ keep running against the package (a few steps; their figures are in docs/)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_demo_explore_runs_both_stages_and_logs_a_result(tmp_path):
    log = tmp_path / "runs.jsonl"
    command = [
        sys.executable, str(SCRIPTS / "demo_explore.py"), "--pretrain-steps", "1", "--finetune-steps", "2",
        "--eval-size", "8", "--eval-batch-size", "8", "--tower-pretrain-epochs", "0", "--threads", "1",
        "--log", str(log),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert run["eval"]["accuracy"] >= 0.0 and run["eval_blind"]["accuracy"] >= 0.0
    assert run["finetune"]["final_loss"] > 0
