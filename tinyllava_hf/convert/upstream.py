"""Convert checkpoints saved by upstream TinyLLaVA Factory into tinyllava-hf folders.

An upstream checkpoint folder (what `BaseTrainingRecipe.save` writes, and what the released Hub repos hold) has:

- `config.json`: upstream's `TinyLlavaConfig` (`model_type: "tinyllava"`) naming its parts by hub id
  (`llm_model_name_or_path`, `vision_model_name_or_path`, `connector_type`) and storing `text_config` /
  `vision_config` as *diffs* against the transformers-4.40 class defaults of their `model_type`;
- weights `language_model.*`, `vision_tower._vision_tower.*`, `connector._connector.*` as safetensors or pytorch
  `.bin` (single file or sharded with an index);
- the tokenizer (already carrying upstream's pad/unk post-load edits).

The converter never touches the network. Hub ids in the config are only names: the image processor (and, when not
next to the weights, the tokenizer) are looked up locally, relative to SRC's parent folder and to the working
directory (the layout of the upstream-parity fixtures), in the local Hugging Face cache, or at paths given
explicitly.

The helpers at the top (`ConversionError`, `read_state_dict`, `rename_state_dict`, `load_strict`, `meta_model`) are
shared with `llava_export.py`; destinations are written with `tinyllava_hf.files.atomic_output_dir`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import CONFIG_MAPPING, AutoImageProcessor, AutoTokenizer, GenerationConfig

from ..builder import build_processor, processor_chat_templates
from ..chat_templates import get_chat_template
from ..configuration_tinyllava import TinyLlavaConfig, canonical_connector_name
from ..constants import IMAGE_TOKEN
from ..files import atomic_output_dir, check_destination, check_not_overlapping, write_json_atomic
from ..loading import ModelLoadError, resolve_model_source
from ..modeling_tinyllava import TinyLlavaForConditionalGeneration

__all__ = [
    "ConversionError",
    "KeyRule",
    "TEMPLATE_BY_TEXT_MODEL_TYPE",
    "TEXT_CONFIG_DEFAULTS_440",
    "UPSTREAM_STRATEGIES",
    "VISION_CONFIG_DEFAULTS_440",
    "convert_upstream",
    "load_strict",
    "read_state_dict",
    "rename_state_dict",
    "resolve_sub_config",
]


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the offending key, field or file."""


# ------------------------------------------------------------------------------------------------ shared helpers


@dataclass(frozen=True)
class KeyRule:
    """One anchored key-renaming rule: `pattern` must match a whole key; `replacement` None drops the key.

    Dropping is reserved for tensors that carry no parameters (index buffers such as `position_ids`, rotary
    `inv_freq`), so "every source key consumed" still means every learned tensor lands somewhere.
    """

    pattern: re.Pattern[str]
    replacement: str | None

    @classmethod
    def of(cls, pattern: str, replacement: str | None) -> KeyRule:
        if not (pattern.startswith("^") and pattern.endswith("$")):
            raise ValueError(f"Key rules must be anchored (^...$): {pattern!r}")
        return cls(re.compile(pattern), replacement)


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: safetensors (single or sharded) or pytorch `.bin` (single or sharded).

    Returns:
        `{key: tensor}` in the dtype stored on disk.
    """
    folder = Path(folder)
    for index_name, loader in (
        ("model.safetensors.index.json", _load_safetensors),
        ("pytorch_model.bin.index.json", _load_torch_bin),
    ):
        index_path = folder / index_name
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            state_dict: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state_dict.update(loader(folder / shard))
            missing = sorted(set(weight_map) - set(state_dict))
            if missing:
                raise ConversionError(f"{index_path} lists tensors its shards do not hold: {missing[:5]}")
            return state_dict
    for name, loader in (("model.safetensors", _load_safetensors), ("pytorch_model.bin", _load_torch_bin)):
        if (folder / name).is_file():
            return loader(folder / name)
    raise ConversionError(
        f"No weights in {folder}: expected model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
        "pytorch_model.bin.index.json."
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path), device="cpu")


def _load_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    # weights_only: a checkpoint is data; never execute pickled code from it.
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def rename_state_dict(
    state_dict: Mapping[str, torch.Tensor], rules: Sequence[KeyRule], source: str
) -> dict[str, torch.Tensor]:
    """Rename every key with the first rule whose anchored pattern matches it.

    Raises:
        ConversionError: a key no rule matches (it would be silently lost), or two keys renamed to one.
    """
    renamed: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unmatched: list[str] = []
    for key, tensor in state_dict.items():
        rule = next((rule for rule in rules if rule.pattern.fullmatch(key)), None)
        if rule is None:
            unmatched.append(key)
            continue
        if rule.replacement is None:
            continue
        target = rule.pattern.sub(rule.replacement, key)
        if target in renamed:
            raise ConversionError(f"{source}: keys {origin[target]!r} and {key!r} both map to {target!r}.")
        renamed[target] = tensor
        origin[target] = key
    if unmatched:
        shown = ", ".join(repr(key) for key in sorted(unmatched)[:10])
        more = f" (and {len(unmatched) - 10} more)" if len(unmatched) > 10 else ""
        raise ConversionError(f"{source}: no conversion rule for key(s) {shown}{more}; refusing to drop them.")
    return renamed


def load_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state_dict` into a (meta-initialised) model, requiring exactly its keys with exactly its shapes.

    Tensors are assigned, not copied, so they keep their dtype and no second copy is made; tied weights are re-tied
    afterwards.

    Raises:
        ConversionError: naming every missing key, unexpected key and shape mismatch.
    """
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {expected[key]}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != expected[key]
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing[:10]}" + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    if unexpected:
        problems.append(f"unexpected {unexpected[:10]}")
    if mismatched:
        problems.append(f"shape mismatch {mismatched[:10]}")
    if problems:
        raise ConversionError(f"{source}: the converted weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def meta_model(config: TinyLlavaConfig, dtype: torch.dtype) -> TinyLlavaForConditionalGeneration:
    """A TinyLLaVA model without allocated weights (they are assigned by `load_strict`)."""
    with torch.device("meta"):
        model = TinyLlavaForConditionalGeneration(config)
    model.config.dtype = dtype
    return model


# --------------------------------------------------------------------------------------- upstream config resolution

# Class defaults of transformers 4.40 (the version upstream pins), for every field that shapes the network or its
# numerics. Upstream stores sub-configs as diffs and rebuilds them with `<ConfigClass>.from_dict(saved)` under 4.40,
# so a missing key means *this* value, whatever later transformers versions default to. `None` for
# num_key_value_heads is 4.40's "same as num_attention_heads".
TEXT_CONFIG_DEFAULTS_440: dict[str, dict[str, Any]] = {
    "llama": dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048, initializer_range=0.02,
        rms_norm_eps=1e-6, use_cache=True, pad_token_id=None, bos_token_id=1, eos_token_id=2, pretraining_tp=1,
        tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, attention_bias=False, attention_dropout=0.0,
    ),
    "phi": dict(
        vocab_size=51200, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
        num_key_value_heads=None, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, hidden_act="gelu_new",
        max_position_embeddings=2048, initializer_range=0.02, layer_norm_eps=1e-5, use_cache=True,
        tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, partial_rotary_factor=0.5,
        qk_layernorm=False, bos_token_id=1, eos_token_id=2,
    ),
    "qwen2": dict(
        vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, hidden_act="silu", max_position_embeddings=32768, initializer_range=0.02,
        rms_norm_eps=1e-6, use_cache=True, tie_word_embeddings=False, rope_theta=10000.0, use_sliding_window=False,
        sliding_window=4096, max_window_layers=28, attention_dropout=0.0, bos_token_id=None, eos_token_id=None,
    ),
    "gemma": dict(
        vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=16, head_dim=256, hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192,
        initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        tie_word_embeddings=True, rope_theta=10000.0, attention_bias=False, attention_dropout=0.0,
    ),
    "stablelm": dict(
        vocab_size=50304, intermediate_size=6912, hidden_size=2560, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, hidden_act="silu", max_position_embeddings=4096, initializer_range=0.02,
        layer_norm_eps=1e-5, use_cache=True, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None,
        use_qkv_bias=False, qk_layernorm=False, use_parallel_residual=False, hidden_dropout=0.0,
        attention_dropout=0.0, partial_rotary_factor=0.25, bos_token_id=0, eos_token_id=0,
    ),
}  # fmt: skip
VISION_CONFIG_DEFAULTS_440: dict[str, dict[str, Any]] = {
    "clip_vision_model": dict(
        hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12, num_attention_heads=12,
        num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0,
    ),
    # 4.40's SigLIP vision model always has its attention-pool head (`vision_use_head` came later, default True).
    "siglip_vision_model": dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
        image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, attention_dropout=0.0,
        vision_use_head=True,
    ),
}  # fmt: skip

# Keys upstream adds to its sub-configs or that only describe where a config came from; they do not shape the model.
# `auto_map` in particular points at remote code (e.g. microsoft/phi-2's) that the native classes replace.
_SUB_CONFIG_IGNORED_KEYS = (
    "auto_map",
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "model_name_or_path",
    "model_name_or_path2",
)

# Language models TinyLLaVA Factory supports that transformers has no class for.
_NO_TRANSFORMERS_CLASS = {"openelm": "OpenELM (Apple), shipped by TinyLLaVA as remote code only"}

# Upstream `vision_feature_select_strategy` -> ours.
UPSTREAM_STRATEGIES = {"patch": "default", "cls_patch": "full"}

# Chat template per LM family when the config does not say, as upstream's training scripts pair them
# (scripts/train/*: TinyLlama/OpenELM -> llama, Phi-2 and StableLM -> phi, Gemma -> gemma, Qwen2 base -> qwen2_base).
TEMPLATE_BY_TEXT_MODEL_TYPE = {
    "llama": "llama",
    "phi": "phi",
    "stablelm": "phi",
    "gemma": "gemma",
    "qwen2": "qwen2_base",
}

# Upstream hard-codes the Perceiver resampler's attention shape (README quirk 15) and the Q-Former's cross-attention
# frequency (quirk 16).
_RESAMPLER_HEADS, _RESAMPLER_HEAD_DIM = 8, 64
_QFORMER_CROSS_ATTENTION_FREQ = 2
_BERT_BASE_HEADS = 12


def resolve_sub_config(saved: Mapping[str, Any], defaults: Mapping[str, Mapping[str, Any]], field: str):
    """Rebuild one upstream sub-config (a diff against transformers-4.40 defaults) as a transformers config.

    Args:
        saved: the `text_config` / `vision_config` dict from upstream's config.json.
        defaults: `TEXT_CONFIG_DEFAULTS_440` or `VISION_CONFIG_DEFAULTS_440`.
        field: `"text_config"` or `"vision_config"`, for messages.

    Returns:
        The config object of the saved `model_type`, with every missing key at its 4.40 default.
    """
    model_type = saved.get("model_type")
    if model_type in _NO_TRANSFORMERS_CLASS:
        raise ConversionError(
            f"{field}.model_type={model_type!r}: {_NO_TRANSFORMERS_CLASS[model_type]}. transformers has no class for "
            "it, so it cannot be converted to a native tinyllava-hf checkpoint."
        )
    if model_type not in defaults:
        raise ConversionError(
            f"{field}.model_type={model_type!r} is not supported by the converter; supported: {', '.join(defaults)}."
        )
    resolved = dict(defaults[model_type])
    resolved.update({key: value for key, value in saved.items() if key not in _SUB_CONFIG_IGNORED_KEYS})
    if "num_key_value_heads" in resolved and resolved["num_key_value_heads"] is None:
        resolved["num_key_value_heads"] = resolved["num_attention_heads"]
    if model_type == "gemma":
        # 4.40's GemmaMLP used `hidden_activation` when set and otherwise always the tanh GELU (whatever
        # `hidden_act` said); transformers 5 only reads `hidden_act`.
        activation = resolved.pop("hidden_activation", None)
        resolved["hidden_act"] = activation or "gelu_pytorch_tanh"
    return CONFIG_MAPPING[model_type].from_dict(resolved)


def _infer_layers(keys: Sequence[str], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(match.group(1)) for key in keys if (match := regex.match(key))})


def _connector_settings(
    upstream: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], qformer_heads: int | None
) -> tuple[str, dict[str, Any], list[KeyRule]]:
    """Our connector name, its TinyLlavaConfig fields and the key rules for upstream's `connector._connector.*`."""
    connector_type = upstream.get("connector_type")
    if connector_type == "mof_mlp" or upstream.get("vision_model_name_or_path2"):
        raise ConversionError(
            f"connector_type={connector_type!r} / vision_model_name_or_path2="
            f"{upstream.get('vision_model_name_or_path2')!r}: MoF checkpoints (CLIP + DINOv2) are not converted. "
            "Their DINOv2 config is not stored in the checkpoint, and DINOv2 runs at the CLIP resolution there, "
            "which TinyLlavaConfig's token count (derived from the DINOv2 config's image_size) cannot express."
        )
    try:
        canonical = canonical_connector_name(str(connector_type))
    except ValueError as error:
        raise ConversionError(f"connector_type={connector_type!r}: {error}") from None
    prefix = r"^connector\._connector\."
    keys = [key for key in state_dict if key.startswith("connector._connector.")]
    if canonical == "mlp{N}x_gelu":
        return connector_type, {}, [KeyRule.of(prefix + r"(\d+)\.(weight|bias)$", r"model.connector.layers.\1.\2")]
    if canonical == "linear":
        return "linear", {}, [KeyRule.of(prefix + r"(weight|bias)$", r"model.connector.linear.\1")]
    if canonical == "identity":
        return "identity", {}, []
    if canonical == "resampler":
        layers = _infer_layers(keys, prefix + r"layers\.(\d+)\.")
        settings = dict(
            connector_num_queries=upstream.get("num_queries"),
            connector_num_layers=upstream.get("num_resampler_layers"),
            connector_num_heads=_RESAMPLER_HEADS,
            connector_head_dim=_RESAMPLER_HEAD_DIM,
        )
        if len(layers) != settings["connector_num_layers"]:
            raise ConversionError(
                f"num_resampler_layers={settings['connector_num_layers']} but the checkpoint holds {len(layers)} "
                "resampler layers (connector._connector.layers.N.*)."
            )
        layer = prefix + r"layers\.(\d+)\."
        rules = [
            KeyRule.of(prefix + r"linear\.(weight|bias)$", r"model.connector.input_proj.\1"),
            KeyRule.of(prefix + r"latents$", r"model.connector.latents"),
            KeyRule.of(prefix + r"norm\.(weight|bias)$", r"model.connector.norm.\1"),
            KeyRule.of(
                layer + r"0\.(norm_media|norm_latents|to_q|to_kv|to_out)\.(weight|bias)$",
                r"model.connector.layers.\1.attention.\2.\3",
            ),
            KeyRule.of(layer + r"1\.0\.(weight|bias)$", r"model.connector.layers.\1.feed_forward.norm.\2"),
            KeyRule.of(layer + r"1\.1\.weight$", r"model.connector.layers.\1.feed_forward.fc1.weight"),
            KeyRule.of(layer + r"1\.3\.weight$", r"model.connector.layers.\1.feed_forward.fc2.weight"),
        ]
        return "resampler", settings, rules
    if canonical == "qformer":
        return "qformer", _qformer_settings(upstream, state_dict, keys, qformer_heads), _qformer_rules(prefix)
    raise ConversionError(f"connector_type={connector_type!r} has no upstream conversion.")


def _qformer_settings(
    upstream: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], keys: Sequence[str], heads: int | None
) -> dict[str, Any]:
    """Q-Former sizes, read off the weight shapes: upstream never stores its BERT config (README quirk 16)."""
    prefix = r"^connector\._connector\.bert\.encoder\.layer\.(\d+)\."
    query_tokens = state_dict.get("connector._connector.query_tokens")
    if query_tokens is None:
        raise ConversionError("qformer checkpoint without connector._connector.query_tokens.")
    layers = _infer_layers(keys, prefix)
    cross = _infer_layers(keys, prefix + r"crossattention\.")
    expected_cross = [index for index in layers if index % _QFORMER_CROSS_ATTENTION_FREQ == 0]
    if layers != list(range(len(layers))) or cross != expected_cross:
        raise ConversionError(
            f"qformer layers {layers} with cross-attention in {cross}: upstream always uses cross-attention in "
            f"every {_QFORMER_CROSS_ATTENTION_FREQ}nd layer starting at 0 ({expected_cross})."
        )
    hidden = query_tokens.shape[-1]
    heads = heads or _cached_bert_heads(hidden) or _BERT_BASE_HEADS
    if hidden % heads:
        raise ConversionError(f"qformer hidden size {hidden} is not divisible by qformer heads={heads}.")
    num_queries = query_tokens.shape[1]
    if upstream.get("num_queries") not in (None, num_queries):
        raise ConversionError(f"num_queries={upstream['num_queries']} but query_tokens holds {num_queries}.")
    intermediate = state_dict["connector._connector.bert.encoder.layer.0.intermediate_query.dense.weight"].shape[0]
    return dict(
        connector_num_queries=num_queries,
        connector_num_layers=len(layers),
        connector_num_heads=heads,
        qformer_hidden_size=hidden,
        qformer_intermediate_size=intermediate,
        qformer_cross_attention_freq=_QFORMER_CROSS_ATTENTION_FREQ,
        qformer_layer_norm_eps=1e-12,  # BertConfig's default; bert-base-uncased uses it too
    )


def _qformer_rules(prefix: str) -> list[KeyRule]:
    layer = prefix + r"bert\.encoder\.layer\.(\d+)\."
    rules = [
        # An int64 index buffer [1, 512] of the (deleted) BERT position embeddings: no parameters.
        KeyRule.of(prefix + r"bert\.embeddings\.position_ids$", None),
        KeyRule.of(prefix + r"query_tokens$", r"model.connector.query_tokens"),
        KeyRule.of(prefix + r"projector\.(weight|bias)$", r"model.connector.projector.\1"),
        KeyRule.of(layer + r"intermediate_query\.dense\.(weight|bias)$", r"model.connector.layers.\1.intermediate.\2"),
        KeyRule.of(layer + r"output_query\.dense\.(weight|bias)$", r"model.connector.layers.\1.output.\2"),
        KeyRule.of(layer + r"output_query\.LayerNorm\.(weight|bias)$", r"model.connector.layers.\1.output_norm.\2"),
    ]
    ours = r"model.connector.layers.\1"
    for source, target in (("attention", "self_attention"), ("crossattention", "cross_attention")):
        rules += [
            KeyRule.of(
                layer + source + r"\.self\.(query|key|value)\.(weight|bias)$",
                rf"model.connector.layers.\1.{target}.\2.\3",
            ),
            KeyRule.of(layer + source + r"\.output\.dense\.(weight|bias)$", rf"{ours}.{target}.dense.\2"),
            KeyRule.of(layer + source + r"\.output\.LayerNorm\.(weight|bias)$", rf"{ours}.{target}.norm.\2"),
        ]
    return rules


def _tower_and_lm_rules() -> list[KeyRule]:
    return [
        # Buffers some older saves contain: index ranges and rotary frequencies, recomputed by the model.
        KeyRule.of(r"^vision_tower\._vision_tower\.vision_model\.embeddings\.position_ids$", None),
        KeyRule.of(r"^language_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$", None),
        # transformers 5 vision models hold `embeddings.*`, `encoder.*`, ... directly (no `vision_model.` level).
        KeyRule.of(r"^vision_tower\._vision_tower\.vision_model\.(.+)$", r"model.vision_tower.\1"),
        # Our backbone is the LM's base model; its head is ours.
        KeyRule.of(r"^language_model\.model\.(.+)$", r"model.language_model.\1"),
        KeyRule.of(r"^language_model\.lm_head\.(weight|bias)$", r"lm_head.\1"),
    ]


# ------------------------------------------------------------------------------------------- local file resolution


def _local_candidates(name: str, src: Path) -> list[Path]:
    """Folders a hub-like `name` may refer to locally: as a path, next to SRC, under the working directory."""
    name = name.split(":")[-1]  # upstream allows "<tower kind>:<hub id>"
    if not name:
        return []
    path = Path(name).expanduser()
    if path.is_absolute():
        return [path]
    return [src.parent / path, Path.cwd() / path]


def _cached_folder(repo_id: str, filename: str) -> Path | None:
    """The folder of `filename` in the local Hugging Face cache, without any network access."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id=repo_id.split(":")[-1], filename=filename)
    except Exception:  # an id that is not a valid repo id (e.g. an absolute path) simply is not cached
        return None
    return Path(found).parent if isinstance(found, str) else None


def _find_folder_with(filename: str, explicit: str | Path | None, names: Sequence[str], src: Path, what: str) -> Path:
    if explicit is not None:
        folder = Path(explicit)
        if not (folder / filename).is_file():
            raise ConversionError(f"{what}: {folder} has no {filename}.")
        return folder
    candidates = [src] + [folder for name in names if name for folder in _local_candidates(name, src)]
    for folder in candidates:
        if (folder / filename).is_file():
            return folder
    for name in names:
        if name and (cached := _cached_folder(name, filename)) is not None:
            return cached
    tried = ", ".join(str(folder) for folder in candidates)
    raise ConversionError(
        f"{what}: no {filename} found locally for {', '.join(repr(n) for n in names if n)} (looked in {tried} and "
        "the local Hugging Face cache). The converter never downloads; pass the folder explicitly."
    )


# ------------------------------------------------------------------------------------------------------ conversion


def _select_template(upstream: Mapping[str, Any], text_model_type: str, override: str | None) -> str:
    if override is not None:
        name = override
    elif upstream.get("conv_version"):
        name = upstream["conv_version"]
    else:
        if text_model_type not in TEMPLATE_BY_TEXT_MODEL_TYPE:
            raise ConversionError(f"No default chat template for LM type {text_model_type!r}; pass --template.")
        name = TEMPLATE_BY_TEXT_MODEL_TYPE[text_model_type]
        if name == "qwen2_base" and "instruct" in str(upstream.get("llm_model_name_or_path", "")).lower():
            name = "qwen2_instruct"
    try:
        get_chat_template(name)
    except ValueError as error:
        raise ConversionError(str(error)) from None
    return name


def build_config_from_upstream(
    upstream: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], qformer_heads: int | None = None
) -> tuple[TinyLlavaConfig, list[KeyRule]]:
    """Our TinyLlavaConfig for an upstream config (+ its weights, for shapes it does not store) and the key rules."""
    for field in ("text_config", "vision_config", "connector_type"):
        if field not in upstream:
            raise ConversionError(f"config.json has no {field!r}: not an upstream TinyLLaVA Factory checkpoint.")
    text_config = resolve_sub_config(upstream["text_config"], TEXT_CONFIG_DEFAULTS_440, "text_config")
    vision_config = resolve_sub_config(upstream["vision_config"], VISION_CONFIG_DEFAULTS_440, "vision_config")
    strategy = upstream.get("vision_feature_select_strategy", "patch")
    if strategy not in UPSTREAM_STRATEGIES:
        raise ConversionError(
            f"vision_feature_select_strategy={strategy!r}; upstream knows {', '.join(UPSTREAM_STRATEGIES)}."
        )
    feature_layer = upstream.get("vision_feature_layer", -2)
    if not isinstance(feature_layer, int):
        raise ConversionError(f"vision_feature_layer={feature_layer!r}: upstream checkpoints use a single int.")
    connector_type, connector_settings, connector_rules = _connector_settings(upstream, state_dict, qformer_heads)
    try:
        config = TinyLlavaConfig(
            text_config=text_config,
            vision_config=vision_config,
            connector_type=connector_type,
            vision_feature_layer=feature_layer,
            vision_feature_select_strategy=UPSTREAM_STRATEGIES[strategy],
            tie_word_embeddings=bool(text_config.tie_word_embeddings),
            **connector_settings,
        )
    except (ValueError, TypeError) as error:
        raise ConversionError(f"Cannot express the upstream config as TinyLlavaConfig: {error}") from None
    return config, _tower_and_lm_rules() + connector_rules


def convert_upstream(
    src: str | Path,
    dst: str | Path,
    *,
    template: str | None = None,
    tokenizer: str | Path | None = None,
    image_processor: str | Path | None = None,
    qformer_heads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an upstream TinyLLaVA Factory checkpoint folder into a tinyllava-hf folder.

    Args:
        src: the upstream checkpoint folder (config.json + weights + tokenizer).
        dst: the folder to write (weights, config with `auto_map`, remote code, processor with chat template).
        template: chat template name (`tinyllava_hf.chat_templates`); default: `conv_version` from the config, else
            the LM family's upstream template.
        tokenizer: tokenizer folder; default: SRC, else the LLM name resolved locally.
        image_processor: folder with `preprocessor_config.json`; default: SRC, else the vision tower name resolved
            locally (next to SRC's parent, the working directory, the local HF cache).
        qformer_heads: attention heads of a Q-Former connector, which upstream does not store; default: those of a
            locally cached google-bert/bert-base-uncased config of the same width (what upstream read), else 12.
        overwrite: replace an existing non-empty `dst`.

    Returns:
        `dst` as an absolute path.
    """
    src = Path(src)
    upstream = check_conversion_paths(src, dst, overwrite, expected=UPSTREAM)  # before any heavy work
    aspect = upstream.get("image_aspect_ratio", "square")
    if aspect not in ("square", "pad"):
        raise ConversionError(f"image_aspect_ratio={aspect!r} is not supported (only 'square' and 'pad').")

    source_weights = read_state_dict(src)
    config, rules = build_config_from_upstream(upstream, source_weights, qformer_heads)
    state_dict = rename_state_dict(source_weights, rules, str(src))
    del source_weights
    if config.tie_word_embeddings:
        embed = state_dict["model.language_model.embed_tokens.weight"]
        head = state_dict.get("lm_head.weight")
        if head is not None and not torch.equal(head, embed):
            raise ConversionError(
                "tie_word_embeddings is true but language_model.lm_head.weight differs from the embeddings."
            )
        state_dict["lm_head.weight"] = embed

    template_name = _select_template(upstream, config.text_config.model_type, template)
    tokenizer_dir = _find_folder_with(
        "tokenizer_config.json",
        tokenizer,
        [upstream.get("tokenizer_name_or_path"), upstream.get("llm_model_name_or_path")],
        src,
        "tokenizer",
    )
    # `config=`: never let AutoTokenizer parse upstream's config.json (model_type "tinyllava" means something else
    # here); the tokenizer belongs to the LM.
    text_tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, config=config.text_config)
    if "tokenizer_model_max_length" in upstream:
        text_tokenizer.model_max_length = upstream["tokenizer_model_max_length"]
    if "tokenizer_padding_side" in upstream:
        text_tokenizer.padding_side = upstream["tokenizer_padding_side"]
    processor_dir = _find_folder_with(
        "preprocessor_config.json",
        image_processor,
        [upstream.get("vision_model_name_or_path")],
        src,
        "image processor",
    )
    # The PIL backend: upstream ran transformers 4.40's (PIL) image processors; pixel values then match exactly.
    images = AutoImageProcessor.from_pretrained(processor_dir, backend="pil", config=config.vision_config)
    _check_image_size(images, config.vision_config.image_size, processor_dir)

    processor = build_processor(
        config,
        text_tokenizer,
        images,
        # Every named template stays selectable (`apply_chat_template(..., chat_template="phi")`), the chosen one
        # as the default, as in checkpoints that `train` writes.
        chat_template=processor_chat_templates(template_name, getattr(text_tokenizer, "chat_template", None)),
        image_aspect_ratio=aspect,
    )
    # No vocabulary growth when the tokenizer already fills the LM's vocabulary: `<image>` may get an id past it,
    # because the model never looks placeholder ids up (their rows are overwritten by image features), so the LM's
    # logits and loss stay exactly upstream's.

    dtype = state_dict["model.language_model.embed_tokens.weight"].dtype
    model = meta_model(config, dtype)
    load_strict(model, state_dict, str(src))
    # Upstream's generate delegates to the LLM's generate, i.e. eos/bos from text_config (README quirk 10).
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=config.text_config.eos_token_id,
        pad_token_id=text_tokenizer.pad_token_id,
    )

    dst = Path(dst).absolute()
    with atomic_output_dir(dst, overwrite=overwrite, error=ConversionError) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        _write_conversion_note(tmp, src, upstream, template_name, tokenizer_dir, processor_dir, IMAGE_TOKEN)
    write_conversion_card(
        dst,
        f"Converted by `tinyllava-hf convert` from the upstream TinyLLaVA Factory checkpoint `{src.absolute()}` "
        f"(LM `{upstream.get('llm_model_name_or_path')}`, vision tower `{upstream.get('vision_model_name_or_path')}`"
        f"); the weights are unchanged and the `{template_name}` chat template is the default.",
        tags=["tinyllava-factory-conversion"],
    )
    return dst


# What a folder holds, from its config.json: the kinds the conversion commands read.
UPSTREAM, TINYLLAVA_HF, LLAVA = "upstream", "tinyllava-hf", "llava"
_KIND_NAMES = {
    UPSTREAM: "an upstream TinyLLaVA Factory checkpoint",
    TINYLLAVA_HF: "a tinyllava-hf checkpoint",
    LLAVA: "a native transformers llava checkpoint",
}
# What to run instead, for a folder of the wrong kind.
_KIND_FIX = {
    UPSTREAM: "convert it with `tinyllava-hf convert`",
    TINYLLAVA_HF: "it loads as it is (`tinyllava-hf export-llava` makes a llava one)",
    LLAVA: "import it with `tinyllava-hf import-llava`",
}


def checkpoint_kind(config: Mapping[str, Any]) -> str:
    """`upstream`, `tinyllava-hf`, `llava`, or the config's model_type: both TinyLLaVA kinds say "tinyllava", but
    only upstream's names its LM by path (`llm_model_name_or_path`) instead of holding its `text_config`."""
    model_type = config.get("model_type")
    if model_type == "tinyllava":
        return UPSTREAM if "llm_model_name_or_path" in config else TINYLLAVA_HF
    return LLAVA if model_type == "llava" else str(model_type)


def check_conversion_paths(src: str | Path, dst: str | Path, overwrite: bool, expected: str) -> dict[str, Any]:
    """The checks of every conversion before any weight is read: `src` is a local folder of the `expected` kind,
    `dst` neither overlaps it nor (without `overwrite`) holds anything. Returns `src`'s config.json.

    Sources follow the one rule of `tinyllava_hf.loading` (a missing path is never tried as a Hub id); conversions
    read weights from disk, so a Hub id must be downloaded first.
    """
    try:
        source, is_local = resolve_model_source(src)
    except ModelLoadError as error:
        raise ConversionError(str(error)) from None
    if not is_local:
        raise ConversionError(
            f"no folder {str(src)!r}: conversions read a local checkpoint folder (for a Hub model, download it first: "
            f"`hf download {src} --local-dir DIR`)."
        )
    check_not_overlapping(src, dst, error=ConversionError, what="source checkpoint")
    check_destination(dst, overwrite, error=ConversionError)
    config_path = Path(source) / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    kind = checkpoint_kind(config)
    if kind != expected:
        found = _KIND_NAMES.get(kind, f"a {kind!r} model")
        fix = _KIND_FIX.get(kind, f"give the folder of {_KIND_NAMES[expected]}")
        raise ConversionError(
            f"{src} is {found} ({config_path}: model_type={config.get('model_type')!r}), not "
            f"{_KIND_NAMES[expected]}: {fix}."
        )
    return config


def write_conversion_card(model_dir: Path, origin: str, tags: list[str]) -> None:
    """The project's model card for a converted checkpoint, with its provenance as the card's origin sentence.

    Written once the folder is in place: the card is named after the folder, not the temporary one it was built in.
    """
    from ..hub import write_checkpoint_card  # model cards need huggingface_hub's Jinja rendering; imported on use

    write_checkpoint_card(model_dir, origin, tags=tags)


def _check_image_size(image_processor, image_size: int, folder: Path) -> None:
    """The image processor must produce exactly the tower's input size (SigLIP/CLIP do not interpolate here)."""
    size = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else image_processor.size
    height, width = getattr(size, "height", None), getattr(size, "width", None)
    if height is None and getattr(size, "shortest_edge", None) is not None:
        height = width = size.shortest_edge
    if (height, width) != (image_size, image_size):
        raise ConversionError(
            f"The image processor in {folder} produces {height}x{width} images but the vision tower expects "
            f"{image_size}x{image_size}."
        )


def _write_conversion_note(
    folder: Path, src: Path, upstream: Mapping[str, Any], template: str, tokenizer: Path, images: Path, token: str
) -> None:
    """A small provenance record: where each part came from (nothing here is read back by the model)."""
    note = {
        "converted_from": str(src.absolute()),
        "upstream_llm_model_name_or_path": upstream.get("llm_model_name_or_path"),
        "upstream_vision_model_name_or_path": upstream.get("vision_model_name_or_path"),
        "upstream_connector_type": upstream.get("connector_type"),
        "chat_template": template,
        "tokenizer_from": str(tokenizer.absolute()),
        "image_processor_from": str(images.absolute()),
        "image_token": token,
    }
    write_json_atomic(folder / "tinyllava_conversion.json", note)


def _cached_bert_heads(hidden_size: int) -> int | None:
    """Heads of google-bert/bert-base-uncased from the local HF cache (what upstream read), if it is cached there.

    Used only when its hidden size equals the checkpoint's, i.e. when it really is the config the Q-Former was
    built from; otherwise the caller falls back to bert-base's 12.
    """
    folder = _cached_folder("google-bert/bert-base-uncased", "config.json")
    if folder is None:
        return None
    bert = json.loads((folder / "config.json").read_text())
    if bert.get("hidden_size", 768) != hidden_size:
        return None
    return int(bert.get("num_attention_heads", _BERT_BASE_HEADS))


def is_config_loadable_by_transformers(config: Mapping[str, Any]) -> bool:
    """Whether plain transformers (no tinyllava_hf) could even build upstream's config: it needs remote code.

    Upstream's Qwen2 repos (Zhang199/TinyLLaVA-Qwen2-0.5B-SigLIP, ...-Qwen2.5-3B-SigLIP) have `model_type:
    "tinyllava"` but no `auto_map` and no code files, so `AutoConfig` raises for them; the tinyllava/... Phi-2 and
    Gemma repos (and the OpenELM ones) ship `configuration.py` + `auto_map`.
    """
    return "AutoConfig" in (config.get("auto_map") or {})
