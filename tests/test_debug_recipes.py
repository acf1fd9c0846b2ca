"""Every debug recipe, run end to end exactly as `recipes/README.md` documents it: the tiny parts under
`outputs/tiny_parts` of a scratch working directory, then `tinyllava-hf train --config RECIPE` with no overrides, the
pretrain stage first and each finetune variant after it; plus the 2-process CPU launch through
`recipes/accelerate_configs/cpu_2proc.yaml` (DeepSpeed ZeRO-3 on gloo)."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tinyllava_hf.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
DEBUG = REPO / "recipes" / "debug"
PRETRAIN = DEBUG / "pretrain" / "config_siglip_llama.yaml"
FINETUNE_RECIPES = sorted((DEBUG / "finetune").glob("config_*.yaml"))

pytestmark = pytest.mark.slow


def losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def output_dir_of(recipe: Path) -> Path:
    return Path(yaml.safe_load(recipe.read_text())["output_dir"])


@pytest.fixture(scope="module")
def workspace(parts, tmp_path_factory):
    """A scratch working directory with the tiny parts where the recipes expect them (`outputs/tiny_parts`)."""
    root = tmp_path_factory.mktemp("debug_recipes")
    (root / "outputs").mkdir()
    (root / "outputs" / "tiny_parts").symlink_to(parts["llm"].parent)  # what `tinyllava-hf tiny-parts` writes
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the recipes' relative paths resolve here, and their outputs land here
        yield root


@pytest.fixture(scope="module")
def pretrained(workspace):
    assert cli(["train", "--config", str(PRETRAIN)]) == 0
    out = workspace / output_dir_of(PRETRAIN)
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-6").is_dir()  # 48 samples, batch 8
    assert all(math.isfinite(loss) for loss in losses(out)) and len(losses(out)) == 6
    return out


def test_every_debug_recipe_is_run_here():
    assert {path.name for path in FINETUNE_RECIPES} >= {"config_full.yaml", "config_lora.yaml", "config_qlora.yaml"}
    assert sorted(DEBUG.glob("*/config_*.yaml")) == sorted([PRETRAIN, *FINETUNE_RECIPES])


def test_debug_pretrain(pretrained):
    assert "pretrain" in (pretrained / "chat_template.jinja").read_text()


@pytest.mark.parametrize("recipe", FINETUNE_RECIPES, ids=lambda path: path.stem)
def test_debug_finetune(recipe, pretrained, workspace):
    assert cli(["train", "--config", str(recipe)]) == 0
    out = workspace / output_dir_of(recipe)
    trained = losses(out)
    assert trained and all(math.isfinite(loss) for loss in trained)
    raw = yaml.safe_load(recipe.read_text())
    if raw.get("tune_llm") in ("lora", "qlora"):
        assert (out / "adapter_model.safetensors").is_file()
        merged = workspace / "outputs" / "debug" / f"{out.name}_merged"
        assert cli(["merge-lora", str(out), str(merged)]) == 0
        assert (merged / "model.safetensors").is_file()
    else:
        assert (out / "model.safetensors").is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.subprocess
def test_accelerate_cpu_2proc_config_runs_zero3_on_two_processes(pretrained, workspace):
    pytest.importorskip("deepspeed")
    records = json.loads((workspace / "outputs/tiny_parts/data/finetune.json").read_text())
    mixed = workspace / "mixed.json"
    mixed.write_text(json.dumps([records[0], records[-1]]))  # an image sample and a text-only one
    out = workspace / "outputs" / "accelerate_cpu_2proc"
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--config_file", "recipes/accelerate_configs/cpu_2proc.yaml", "--main_process_port", str(free_port())),
        *("-m", "tinyllava_hf", "train", "--config", "recipes/debug/finetune/config_full.yaml"),
        *("--model_name_or_path", str(pretrained), "--data_path", str(mixed)),
        *("--image_folder", str(workspace / "outputs/tiny_parts/data"), "--output_dir", str(out)),
        *("--max_steps", "2", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1"),
        *("--save_steps", "2"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # From the repository root: the accelerate config names recipes/deepspeed/zero3.json relative to it. In a session
    # of its own, so that a hang (a collective one rank never joins) can be ended with the worker processes too.
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail("the 2-process run hung:\n" + stderr[-6000:])
    assert process.returncode == 0, stdout[-3000:] + stderr[-6000:]
    # The run loaded a checkpoint under ZeRO-3 (all ranks inside zero.Init together) and ZeRO-3 is on: the text-only
    # rank ran the tower on a blank image.
    assert "'dummy_pixel_values'" in stderr
    shards = sorted(p.name for p in (out / "checkpoint-2" / "global_step2").glob("*model_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    assert (out / "model.safetensors").is_file()
