"""Which `checkpoint-*` folder a run can resume from: the last COMPLETE one.

`Trainer._save_checkpoint` writes a checkpoint in a fixed order: the weights (or adapter) and processor, then the
optimizer and scheduler (a DeepSpeed engine writes its own `global_step*/` folder and `latest` instead), the RNG
states, and `trainer_state.json` last. A run killed while saving leaves a folder without some of these, and
`transformers.trainer_utils.get_last_checkpoint` would still pick it (the resumed run then fails on the missing
`trainer_state.json`). Checking what a checkpoint must hold, and skipping with a warning the newer ones that do not,
resumes from the last one that is whole.
"""

import json
import logging
import os
import re
import struct
from pathlib import Path

__all__ = ["checkpoint_problem", "last_complete_checkpoint"]

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# One of these holds the weights: a full model (single file or sharded index) or a PEFT adapter.
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is whole when its header fits the file and names tensors ending at the file's end."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if 8 + header_size > size:
                return f"{path.name} is truncated"
            header = json.loads(handle.read(header_size))
    except (struct.error, ValueError):
        return f"{path.name} is truncated or corrupt"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if 8 + header_size + max(ends, default=0) > size:
        return f"{path.name} is truncated"
    return None


def _weights_problem(folder: Path) -> str | None:
    present = [name for name in _WEIGHTS if (folder / name).is_file()]
    if not present:
        return f"no weights ({' or '.join(_WEIGHTS[::2])})"
    for name in present:
        if name.endswith(".index.json"):
            try:
                shards = set(json.loads((folder / name).read_text())["weight_map"].values())
            except (ValueError, KeyError):
                return f"{name} is truncated or corrupt"
            missing = sorted(shard for shard in shards if not (folder / shard).is_file())
            if missing:
                return f"missing weight shard(s) {missing}"
            files = [folder / shard for shard in shards if shard.endswith(".safetensors")]
        else:
            files = [folder / name] if name.endswith(".safetensors") else []
        for path in files:
            if problem := _safetensors_problem(path):
                return problem
    return None


def _deepspeed_problem(folder: Path) -> str | None:
    """A DeepSpeed engine checkpoint: `latest` names a tag folder holding model and optimizer states."""
    latest = folder / "latest"
    if not latest.is_file():
        return "no DeepSpeed `latest` file"
    tag = folder / latest.read_text().strip()
    if not tag.is_dir() or not any(tag.glob("*model_states.pt")):
        return f"no DeepSpeed model states in {tag.name}/"
    if not any(tag.glob("*optim_states.pt")):
        return f"no DeepSpeed optimizer states in {tag.name}/"
    return None


def checkpoint_problem(
    folder: str | os.PathLike, save_only_model: bool = False, deepspeed: bool = False
) -> str | None:
    """What a `checkpoint-*` folder lacks to resume from, or None when it is complete.

    Args:
        folder: the checkpoint folder.
        save_only_model: the run's `save_only_model` (then no optimizer, scheduler or RNG state is saved).
        deepspeed: whether the run uses DeepSpeed (its engine saves the optimizer in its own layout).
    """
    folder = Path(folder)
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the save was interrupted)"
    try:
        json.loads(state.read_text())["global_step"]
    except (ValueError, KeyError):
        return "trainer_state.json is truncated or corrupt"
    if deepspeed:
        # ZeRO-3 without 16-bit gathering saves no whole weights: the engine's states are the checkpoint.
        if problem := _deepspeed_problem(folder):
            return problem
    elif problem := _weights_problem(folder):
        return problem
    if save_only_model:
        return None
    if not deepspeed:
        for name in ("optimizer.pt", "scheduler.pt"):
            if not (folder / name).is_file():
                return f"no {name}"
    if not any(folder.glob("rng_state*.pth")):
        return "no RNG state (rng_state*.pth)"
    return None


def last_complete_checkpoint(
    output_dir: str | os.PathLike, save_only_model: bool = False, deepspeed: bool = False
) -> str | None:
    """The newest complete `checkpoint-*` in `output_dir` (by step), warning about each newer incomplete one."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = sorted(
        (int(match.group(1)), path)
        for path in output_dir.iterdir()
        if path.is_dir() and (match := _CHECKPOINT.match(path.name))
    )
    for _, path in reversed(steps):
        problem = checkpoint_problem(path, save_only_model=save_only_model, deepspeed=deepspeed)
        if problem is None:
            return str(path)
        logger.warning("Skipping incomplete checkpoint %s: %s.", path, problem)
    return None
