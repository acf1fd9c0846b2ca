"""What produced an answer file: a fingerprint of the model, prompt and generation settings of an ``eval run``.

Resuming appends to an existing answer file, so it must only ever continue the *same* run. A ``model_id`` (by
default the folder name) cannot tell two checkpoints apart; the fingerprint can. It covers:

* ``model.weights``: SHA-256 over every ``state_dict`` tensor (name, dtype, shape and bytes, in name order), i.e.
  exactly the weights that generate, whichever way the model was loaded (``eval run`` and the Python API agree);
* ``model.config``: SHA-256 of the model config (without the load-time ``dtype``, path and library version);
* ``chat_template``: SHA-256 of the chat template text actually rendered;
* ``task``: the task name and its prompt suffix(es);
* ``generation``: ``max_new_tokens``, greedy decoding, the blank-image flag and the weights' dtype.

Its id (the first 16 hex digits of the SHA-256 of those components) is written on every answer line
(``metadata.fingerprint``), which survives copying the file alone; the components themselves go to a sidecar,
``<answers>.meta.json`` (written atomically), so that a refused resume can say *what* differs.

Cost, measured on one core of a shared 2-core CPU machine: 1.8 GB/s end to end (1.07 GB of float32 weights in
0.60 s, the same for bfloat16), 1 ms for the tiny test model; so ~2 s for a 1.5B model in bf16 and ~8 s for a 7B one
(plus the device-to-host copy on GPU), once per ``eval run``: negligible next to generation, so the hash is exact
rather than sampled. Weights on the ``meta`` device (offloaded with ``device_map``) contribute only their name, dtype
and shape.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import write_json_atomic
from .loaders import EvalDataError, PathLike
from .tasks import TaskSpec

if TYPE_CHECKING:  # torch is imported only to hash weights: `eval score` reads fingerprints without it
    import torch

FINGERPRINT_VERSION = 1
SIDECAR_SUFFIX = ".meta.json"

# Config keys that describe how a model was loaded or saved, not which model it is.
_VOLATILE_CONFIG_KEYS = frozenset({"_name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash"})


def _sha256_json(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of ``model``'s ``state_dict``: each tensor's name, dtype, shape and raw bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        if tensor.device.type == "meta":
            continue
        # Raw bytes of any dtype (bfloat16 has no numpy equivalent): reinterpret as uint8, one tensor at a time.
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu()
        digest.update(memoryview(data.numpy()))
    return digest.hexdigest()


def _stable_config(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable_config(v) for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS}
    if isinstance(value, list | tuple):
        return [_stable_config(v) for v in value]
    return value


def config_digest(model: Any) -> str:
    """SHA-256 of the model config, without the keys that only say how it was loaded (dtype, path, version)."""
    config = getattr(model, "config", None)
    data = config.to_dict() if hasattr(config, "to_dict") else {}
    return _sha256_json(_stable_config(data))


@dataclass(frozen=True)
class RunFingerprint:
    """The components of one run (JSON-ready) and how long hashing the weights took."""

    components: dict[str, Any]
    weights_seconds: float = 0.0

    @property
    def id(self) -> str:
        """Short id written on every answer line: the first 16 hex digits of the components' SHA-256."""
        return _sha256_json(self.components)[:16]


def run_fingerprint(
    model: Any,
    spec: TaskSpec,
    chat_template: str,
    *,
    max_new_tokens: int,
    blank_image: bool,
    dtype: torch.dtype,
) -> RunFingerprint:
    """Fingerprint one ``eval run``; ``chat_template`` is the template *text* that will be rendered."""
    tick = time.perf_counter()
    weights = weights_digest(model)
    seconds = time.perf_counter() - tick
    components = {
        "version": FINGERPRINT_VERSION,
        "model": {"weights": weights, "config": config_digest(model)},
        "chat_template": hashlib.sha256(chat_template.encode("utf-8")).hexdigest(),
        "task": {
            "name": spec.name,
            "prompt_suffix": spec.prompt_suffix,
            "prompt_suffix_by_type": dict(spec.prompt_suffix_by_type),
        },
        "generation": {
            "max_new_tokens": max_new_tokens,
            "greedy": True,
            "blank_image": blank_image,
            "dtype": str(dtype).removeprefix("torch."),
        },
    }
    return RunFingerprint(components, seconds)


# --------------------------------------------------------------------------------------------------------------------
# Sidecar and resume check
# --------------------------------------------------------------------------------------------------------------------


def sidecar_path(output: PathLike) -> Path:
    """``answers.jsonl`` -> ``answers.jsonl.meta.json``."""
    output = Path(output)
    return output.with_name(output.name + SIDECAR_SUFFIX)


def write_sidecar(output: PathLike, fingerprint: RunFingerprint, **info: Any) -> Path:
    """Write ``<output>.meta.json`` atomically: the fingerprint id, its components and ``info`` (model_id, ...)."""
    record = {
        "fingerprint": fingerprint.id,
        "components": fingerprint.components,
        **info,
        "weights_hash_seconds": round(fingerprint.weights_seconds, 3),
    }
    return write_json_atomic(sidecar_path(output), record)


def read_sidecar(output: PathLike) -> dict[str, Any] | None:
    """The sidecar of ``output``, or ``None`` when it is missing or unreadable (the lines still carry the id)."""
    try:
        record = json.loads(sidecar_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("components"), dict) else None


def line_fingerprint(record: dict[str, Any]) -> str | None:
    """The fingerprint id an answer line carries (``metadata.fingerprint``), or ``None`` (older files)."""
    metadata = record.get("metadata")
    value = metadata.get("fingerprint") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) else None


def describe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Readable differences between two fingerprints' components, most important first."""
    differences = []
    old_model, new_model = old.get("model", {}), new.get("model", {})
    if old_model.get("weights") != new_model.get("weights"):
        differences.append("a different model (weights differ)")
    elif old_model.get("config") != new_model.get("config"):
        differences.append("a different model (config differs)")
    if old.get("chat_template") != new.get("chat_template"):
        differences.append("another chat template")
    old_task, new_task = old.get("task", {}), new.get("task", {})
    if old_task.get("name") != new_task.get("name"):
        differences.append(f"another task ({old_task.get('name')}, this run {new_task.get('name')})")
    elif old_task != new_task:
        differences.append("another prompt suffix")
    old_gen, new_gen = old.get("generation", {}), new.get("generation", {})
    for key in sorted(set(old_gen) | set(new_gen)):
        if old_gen.get(key) != new_gen.get(key):
            differences.append(f"{key} {old_gen.get(key)} (this run {new_gen.get(key)})")
    if not differences and old != new:
        differences.append(f"another fingerprint version ({old.get('version')}, this run {new.get('version')})")
    return differences


def check_resume(output: PathLike, records: list[dict[str, Any]], fingerprint: RunFingerprint) -> None:
    """Refuse to resume ``output`` unless every answer in it carries this run's fingerprint id.

    Raises :class:`~tinyllava_hf.eval.loaders.EvalDataError` saying what differs (from the sidecar), e.g.
    ``answers.jsonl was written by a different model (weights differ); use a new --output or delete it``.
    """
    if not records:
        return
    output = Path(output)
    found = {line_fingerprint(record) for record in records}
    if found == {fingerprint.id}:
        return
    fix = "use a new --output or delete it"
    if None in found:
        raise EvalDataError(
            f"{output} holds answers without a run fingerprint (written by an older tinyllava-hf or another tool), "
            f"so resuming cannot check they come from this model and settings; {fix} (it still scores)"
        )
    if len(found) > 1:
        raise EvalDataError(f"{output} mixes answers of {len(found)} different runs; {fix}")
    sidecar = read_sidecar(output)
    if sidecar is not None and sidecar.get("fingerprint") in found:
        differences = describe_differences(sidecar["components"], fingerprint.components)
        raise EvalDataError(f"{output} was written by {', '.join(differences)}; {fix}")
    raise EvalDataError(
        f"{output} was written by another run (fingerprint {found.pop()}, this run {fingerprint.id}; "
        f"{sidecar_path(output).name}, which would say what differs, is missing); {fix}"
    )
