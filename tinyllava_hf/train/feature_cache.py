"""Vision feature cache: stage 1 with a frozen tower computes each image's tower features once, not once per epoch.

    tinyllava-hf train --config RECIPE.yaml --cache_vision_features true [--vision_feature_cache_dir DIR]

Off by default. In the pretrain stage (connector only, tower frozen) the tower's forward is pure overhead after the
first epoch: the same image always gives the same features. With the cache on, `TinyLlavaModel`'s tower step (the
selected hidden states, before the connector, which trains) is looked up per image:

- key: a hash of the image's processed pixel values (their bytes, shape and dtype: that covers the image content and
  every processing setting, resizing, padding, normalisation, since any change changes the pixels) together with a
  fingerprint of the tower: its config, attention implementation, selected layers and strategy, and a hash of its
  weights. Another image or another tower (different weights, config or feature layer) is another key, so stale
  features are never returned; a tower whose weights change in place is fingerprinted afresh (parameter version
  counters tell).
- store: in memory on the tower's device (fast; about `num_image_tokens x hidden x 2` bytes per image in bf16, 300 KB
  for SigLIP-base), or, with `vision_feature_cache_dir`, one file per image under `DIR/<tower fingerprint>/`, which
  also outlives the run (a later run with the same tower and images starts warm).

Only valid when the tower is frozen: `enable_vision_feature_cache` refuses a tower with trainable parameters, and the
lookup refuses again if one becomes trainable later. A tower in training mode with dropout is refused too (its
features would differ per call). Misses are computed in one batch by the original code under `torch.no_grad()`, so a
hit returns exactly (bitwise) what recomputing that batch returns.

The collator still loads and processes every image (the key is the processed pixels); the tower's forward is what is
saved. See docs/performance.md for the measured speed-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "TowerNotFrozenError",
    "VisionFeatureCache",
    "disable_vision_feature_cache",
    "enable_vision_feature_cache",
    "image_key",
    "tower_fingerprint",
]

logger = logging.getLogger(__name__)


class TowerNotFrozenError(ValueError):
    """The feature cache was asked for a tower that trains (its features change at every step)."""


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # `.view(torch.uint8)` reads any dtype's raw bytes (numpy has no bfloat16).
    return tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


def image_key(pixel_values: torch.Tensor) -> str:
    """Content hash of one image's processed pixel values `(channels, height, width)`."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{tuple(pixel_values.shape)}|{pixel_values.dtype}".encode())
    digest.update(_tensor_bytes(pixel_values))
    return digest.hexdigest()


def tower_fingerprint(tower: nn.Module, settings: dict | None = None) -> str:
    """Hash of a tower's config, attention implementation, weights (names, shapes, dtypes, values) and `settings`
    (what else shapes its features: selected layers, strategy)."""
    digest = hashlib.blake2b(digest_size=20)
    config = getattr(tower, "config", None)
    described = {
        "config": config.to_dict() if config is not None else type(tower).__name__,
        "attention": getattr(config, "_attn_implementation", None),
        "settings": settings or {},
    }
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    for name, tensor in sorted(tower.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _check_frozen(tower: nn.Module) -> None:
    trainable = [name for name, param in tower.named_parameters() if param.requires_grad]
    if trainable:
        raise TowerNotFrozenError(
            f"The vision feature cache needs a frozen vision tower, but {len(trainable)} of its parameters train "
            f"(e.g. {trainable[0]}): cached features would go stale after the first step. Use tune_vision_tower: "
            "frozen, or turn cache_vision_features off."
        )
    if tower.training:
        config = getattr(tower, "config", None)
        rates = [getattr(config, key, 0.0) or 0.0 for key in ("attention_dropout", "hidden_dropout_prob", "dropout")]
        rates += [module.p for module in tower.modules() if isinstance(module, nn.Dropout)]
        if any(rate > 0 for rate in rates):
            raise TowerNotFrozenError(
                "The vision tower uses dropout in training mode, so its features differ at every call and cannot be "
                "cached: set its dropout to 0 (or put it in eval mode), or turn cache_vision_features off."
            )


def _parameter_versions(tower: nn.Module) -> int:
    # Every in-place write to a parameter bumps its version counter: a cheap test of "the weights changed".
    return sum(param._version for param in tower.parameters())


class VisionFeatureCache:
    """Per-image cache of tower features for a `TinyLlavaModel` (see the module docs).

    Args:
        settings: what besides the tower shapes the features (part of every key).
        cache_dir: store on disk under this folder instead of in memory.
    """

    def __init__(self, settings: dict | None = None, cache_dir: str | Path | None = None):
        self.settings = settings or {}
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.memory: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0
        self._fingerprints: dict[int, tuple[int, str, str]] = {}

    def fingerprint(self, tower: nn.Module) -> str:
        """The tower's fingerprint, recomputed only when its config or weights changed since the last call."""
        config = getattr(tower, "config", None)
        described = json.dumps(config.to_dict() if config is not None else {}, sort_keys=True, default=str)
        version = _parameter_versions(tower)
        known = self._fingerprints.get(id(tower))
        if known is None or known[0] != version or known[1] != described:
            fingerprint = tower_fingerprint(tower, self.settings)
            if known is not None and known[2] != fingerprint:
                logger.info("The vision tower changed: its cached features are no longer used.")
                self.memory = {key: value for key, value in self.memory.items() if not key.startswith(known[2])}
            known = (version, described, fingerprint)
            self._fingerprints[id(tower)] = known
        return known[2]

    def _path(self, key: str) -> Path:
        fingerprint, image = key.split(":")
        return self.cache_dir / fingerprint / f"{image}.pt"

    def _get(self, key: str, device: torch.device) -> torch.Tensor | None:
        if self.cache_dir is None:
            return self.memory.get(key)
        path = self._path(key)
        return torch.load(path, map_location=device, weights_only=True) if path.is_file() else None

    def _put(self, key: str, features: torch.Tensor) -> None:
        if self.cache_dir is None:
            self.memory[key] = features
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(features)}")
        torch.save(features.cpu().clone(), tmp)  # clone: save the row, not the whole batch's storage
        tmp.replace(path)  # atomic: a reader never sees a half-written file

    def __len__(self) -> int:
        if self.cache_dir is None:
            return len(self.memory)
        return sum(1 for _ in self.cache_dir.glob("*/*.pt"))

    def features(
        self,
        tower: nn.Module,
        pixel_values: torch.Tensor,
        compute: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """`compute(tower, pixel_values)`, from the cache where possible; misses are computed in one batch."""
        _check_frozen(tower)
        fingerprint = self.fingerprint(tower)
        keys = [f"{fingerprint}:{image_key(image)}" for image in pixel_values]
        found = [self._get(key, pixel_values.device) for key in keys]
        missing = [i for i, features in enumerate(found) if features is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            with torch.no_grad():
                computed = compute(tower, pixel_values[missing])
            if len(missing) == len(keys):
                for key, row in zip(keys, computed):
                    self._put(key, row)
                return computed
            for i, row in zip(missing, computed):
                found[i] = row
                self._put(keys[i], row)
        return torch.stack(found)


def _core_model(model: nn.Module) -> nn.Module:
    # Under LoRA the TinyLlavaModel sits inside a PeftModel: find it by its tower step rather than by class, so that
    # a model loaded as remote code (another class object) is found too.
    for module in model.modules():
        if hasattr(module, "_select_vision_features") and hasattr(module, "vision_tower"):
            return module
    raise TypeError(f"{type(model).__name__} holds no TinyLlavaModel: nothing to cache.")


def enable_vision_feature_cache(model: nn.Module, cache_dir: str | Path | None = None) -> VisionFeatureCache:
    """Route `model`'s tower step through a new `VisionFeatureCache` and return it.

    Raises:
        TowerNotFrozenError: a tower (or the auxiliary tower) has trainable parameters, or dropout in training mode.
    """
    core = _core_model(model)
    for tower in (core.vision_tower, getattr(core, "vision_tower_aux", None)):
        if tower is not None:
            _check_frozen(tower)
    disable_vision_feature_cache(model)
    config = core.config
    settings = {
        "vision_feature_layers": list(config.vision_feature_layers),
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
    }
    cache = VisionFeatureCache(settings, cache_dir)
    original = core._select_vision_features  # the bound method of the class

    def cached(tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return cache.features(tower, pixel_values, original)

    core._select_vision_features = cached  # an instance attribute: shadows the method for this model only
    core._vision_feature_cache = cache
    return cache


def disable_vision_feature_cache(model: nn.Module) -> None:
    """Undo `enable_vision_feature_cache` (no-op when it is not enabled)."""
    core = _core_model(model)
    if "_select_vision_features" in vars(core):
        del core._select_vision_features
        del core._vision_feature_cache
