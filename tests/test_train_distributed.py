"""Multi-process training: DeepSpeed ZeRO-3 with 2 processes launched by torchrun, on CPU (gloo).

One rank gets an image sample and the other a text-only one, the case where a rank skipping the vision tower would
desynchronise ZeRO-3's collective weight gathering; the collator's blank image keeps every rank in step.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_zero3_two_processes_with_a_text_only_rank(parts, tmp_path):
    records = json.loads(parts["finetune"].read_text())
    data = tmp_path / "mixed.json"
    data.write_text(json.dumps([records[0], records[-1]]))  # an image sample and a text-only one
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "tinyllava_hf",
        "train",
        "--config",
        str(REPO / "recipes" / "debug" / "finetune" / "config_full.yaml"),
        "--model_name_or_path",
        "",
        "--llm",
        str(parts["llm"]),
        "--vision_tower",
        str(parts["siglip"]),
        "--data_path",
        str(data),
        "--image_folder",
        str(parts["data"]),
        "--output_dir",
        str(out),
        "--deepspeed",
        str(REPO / "recipes" / "deepspeed" / "zero3.json"),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "1",
        "--gradient_accumulation_steps",
        "1",
        "--activation_checkpointing",
        "false",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "'dummy_pixel_values'" in result.stderr  # the text-only rank ran the tower on a blank image

    # ZeRO-3 checkpoint: one partition per rank; the final save gathers full (unpartitioned) weights.
    shards = sorted(p.name for p in (out / "checkpoint-2" / "global_step2").glob("*model_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    optim = torch.load(
        out / "checkpoint-2" / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        map_location="cpu",
        weights_only=False,
    )
    assert optim["ds_config"]["zero_optimization"]["stage"] == 3
    weights = load_file(out / "model.safetensors")
    assert weights["model.language_model.embed_tokens.weight"].shape == (385, 32)
    assert weights["model.connector.layers.0.weight"].shape == (32, 32)
