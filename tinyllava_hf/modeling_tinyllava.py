"""PyTorch TinyLLaVA model, laid out like transformers' `models/llava`.

`TinyLlavaModel` holds the towers, the connectors and the LM backbone (`language_model`, a base model without head);
`TinyLlavaForConditionalGeneration` adds `lm_head` and generation. Tower features are scattered into the input
embeddings at placeholder tokens, so the sequence length never changes inside the model: the processor expands each
`<image>` / `<audio>` into exactly `config.num_image_tokens` / `config.num_audio_tokens` placeholders.

Shipped as remote code: imports only torch, transformers and flat siblings.
"""

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .configuration_tinyllava import AUTO_MAP, TinyLlavaConfig
from .connectors_tinyllava import build_connector, init_connector_parameters

# Flat files that make a saved folder loadable with `trust_remote_code=True` and no tinyllava_hf installed.
REMOTE_CODE_FILES = (
    "configuration_tinyllava.py",
    "constants.py",
    "connectors_tinyllava.py",
    "modeling_tinyllava.py",
    "processing_tinyllava.py",
)
# `TINYLLAVA_HF_AUDIO_FEATURE_CACHE=1` turns on the frozen audio tower's per-clip cache (`TinyLlavaModel.
# audio_feature_cache`) for every copy of this file in the process: a checkpoint loaded with `trust_remote_code=True`
# runs its own copy, whose class attribute a caller cannot reach before `tinyllava-hf train` loads it.
AUDIO_FEATURE_CACHE_ENV = "TINYLLAVA_HF_AUDIO_FEATURE_CACHE"
_ENV_AUDIO_FEATURE_CACHE: dict = {}
# Causal LMs whose output projection has a bias (Phi-2); every other supported family has none.
LM_HEAD_WITH_BIAS = ("phi",)


# The output classes extend transformers' own, so the name of the cache field follows the installed version
# (`past_key_values` up to 5.23, `cache` from 5.24): outputs are filled from the LM's own output fields.
@dataclass
class TinyLlavaModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    image_hidden_states (`torch.FloatTensor` of shape `(num_images, num_image_tokens, hidden_size)`, *optional*):
        Connector outputs that replaced the image placeholders.
    audio_hidden_states (`torch.FloatTensor` of shape `(num_audios, num_audio_tokens, hidden_size)`, *optional*):
        Audio connector outputs that replaced the audio placeholders; `(total_kept_tokens, hidden_size)` when
        the clips were trimmed with `feature_attention_mask`.
    """

    image_hidden_states: torch.FloatTensor | None = None
    audio_hidden_states: torch.FloatTensor | None = None


@dataclass
class TinyLlavaCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*): next-token cross-entropy, when `labels` are given.
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`): LM head scores.
    image_hidden_states / audio_hidden_states: see `TinyLlavaModelOutputWithPast`.
    """

    image_hidden_states: torch.FloatTensor | None = None
    audio_hidden_states: torch.FloatTensor | None = None


def _fields_of(output_class: type, values: dict) -> dict:
    """The entries of `values` that `output_class` declares (drops model-specific extras such as router logits)."""
    names = {field.name for field in dataclasses.fields(output_class)}
    return {key: value for key, value in values.items() if key in names}


def _broken_safetensors_files(folder) -> list[Path]:
    """The `.safetensors` files of a local folder whose header or size does not hold up (e.g. cut off mid-write).

    A safetensors file is an 8-byte little-endian header length, a JSON header, then the tensor bytes up to the
    largest end offset in the header; any file shorter than that is truncated.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    broken = []
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        try:
            with path.open("rb") as handle:
                header_size = int.from_bytes(handle.read(8), "little")
                if size < 8 or header_size > size - 8:
                    raise ValueError("header past the end of the file")
                header = json.loads(handle.read(header_size))
            ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
            if 8 + header_size + max(ends, default=0) > size:
                raise ValueError("tensor data past the end of the file")
        except (ValueError, KeyError, TypeError, IndexError):
            broken.append(path)
    return broken


class TinyLlavaPreTrainedModel(PreTrainedModel):
    config: TinyLlavaConfig
    config_class = TinyLlavaConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        init_connector_parameters(module, self.config.initializer_range, init)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`; a truncated or corrupt weights file is reported by name."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as error:
            # safetensors' own error names no file ("incomplete metadata"); it is matched by name so that this
            # remote-code file imports nothing beyond torch/transformers.
            if type(error).__name__ != "SafetensorError":
                raise
            broken = _broken_safetensors_files(pretrained_model_name_or_path)
            where = (
                ", ".join(str(path) for path in broken)
                if broken
                else f"a weights file of {pretrained_model_name_or_path}"
            )
            raise OSError(
                f"Cannot read {where}: the file is truncated or corrupt ({error}). Re-download it (or re-save the "
                "model) and load again."
            ) from error

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights and config plus the flat remote-code files, with an `auto_map` for every Auto class."""
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            source = Path(__file__).parent
            for name in REMOTE_CODE_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, Path(save_directory) / name)


class TinyLlavaModel(TinyLlavaPreTrainedModel):
    """Vision tower (+ optional auxiliary vision tower and audio tower), connectors and the LM backbone."""

    # Opt-in, process-wide cache of a FROZEN audio tower's output per distinct clip (a dict; None: off), keyed by the
    # tower object and a hash of the clip's log-mel features. A question spoken a few ways recurs thousands of times
    # in training: the tower then runs once per distinct clip. Bypassed while the tower trains or has dropout on.
    # Memory: `frames x d_model x 4` bytes per clip (0.4 MB for Whisper tiny at 5 s). Set it to `{}` to turn it on
    # (or the environment variable AUDIO_FEATURE_CACHE_ENV to 1, which also reaches remote-code copies).
    audio_feature_cache: dict | None = None

    def __init__(self, config: TinyLlavaConfig):
        # A bare `TinyLlavaConfig()` is a valid config object (transformers may build one) but no real model: its
        # sub-configs are transformers' defaults, a 7B Llama and a default SigLIP.
        defaulted = config.defaulted_sub_configs()
        if defaulted:
            raise ValueError(
                f"Cannot build a TinyLLaVA model from a config without {' and '.join(defaulted)}: pass the language "
                "model's and the vision tower's configs to TinyLlavaConfig (e.g. `AutoConfig.from_pretrained(...)`)."
            )
        super().__init__(config)
        text_width = config.text_config.hidden_size
        self.vision_tower = AutoModel.from_config(config.vision_config)
        # MoF reads a second tower (DINOv2) on the same pixels; every other connector has a single tower.
        self.vision_tower_aux = (
            AutoModel.from_config(config.vision_aux_config) if config.vision_aux_config is not None else None
        )
        vision_width = config.vision_config.hidden_size * len(config.vision_feature_layers)
        self.connector = build_connector(config.connector_type, config, vision_width, text_width)
        if config.audio_config is not None:
            self.audio_tower = WhisperEncoder(config.audio_config)
            audio_width = config.audio_config.d_model * config.audio_downsample_factor
            self.audio_connector = build_connector(config.audio_connector_type, config, audio_width, text_width)
        else:
            self.audio_tower = None
            self.audio_connector = None
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def _select_vision_features(self, tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """Hidden states of the configured layer(s), concatenated on the channel axis, after the token strategy."""
        outputs = tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        selected = [outputs.hidden_states[layer] for layer in self.config.vision_feature_layers]
        if self.config.vision_feature_select_strategy == "default":
            # Drops CLIP's/DINOv2's class token; for SigLIP this drops a real patch, as upstream TinyLLaVA does.
            selected = [hidden[:, 1:] for hidden in selected]
        return torch.cat(selected, dim=-1)

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        """Encode images into LM-space tokens.

        Args:
            pixel_values: `(num_images, channels, height, width)`.
        Returns:
            `(num_images, config.num_image_tokens, text_hidden_size)`.
        """
        # Casting raw 0-255 integers to the tower's dtype would run the model on unnormalised pixels and answer
        # anyway; only the processor's normalised floats are meaningful.
        if not torch.is_floating_point(pixel_values):
            raise ValueError(
                f"pixel_values must be floating point, normalised by the processor, got {pixel_values.dtype}: pass "
                "the images through `processor(images=...)` instead of raw pixels."
            )
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must have shape (num_images, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        features = self._select_vision_features(self.vision_tower, pixel_values)
        if self.vision_tower_aux is not None:
            aux_features = self._select_vision_features(self.vision_tower_aux, pixel_values)
            return self.connector((features, aux_features))
        return self.connector(features)

    def _audio_tower_output(self, input_features: torch.FloatTensor) -> torch.FloatTensor:
        """The audio tower's last hidden state; looked up per clip in `audio_feature_cache` when that is on."""
        cache = TinyLlavaModel.audio_feature_cache
        if cache is None and os.environ.get(AUDIO_FEATURE_CACHE_ENV) == "1":
            cache = _ENV_AUDIO_FEATURE_CACHE
        tower = self.audio_tower
        # Bypassed whenever the tower could learn or vary: gradients flowing into it (a loaded model's parameters
        # all require grad, so inference counts only under `torch.no_grad`/`inference_mode`) or dropout in training.
        if (
            cache is None
            or (torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters()))
            or (tower.training and (tower.config.dropout > 0 or tower.config.activation_dropout > 0))
        ):
            return tower(input_features, return_dict=True).last_hidden_state
        import hashlib  # only for the opt-in cache

        keys = [
            (id(tower), tuple(row.shape), str(row.dtype), hashlib.blake2b(row.cpu().numpy().tobytes()).hexdigest())
            for row in input_features
        ]
        missing = [i for i, key in enumerate(dict.fromkeys(keys)) if key not in cache]
        if missing:
            unique = list(dict.fromkeys(keys))
            with torch.no_grad():
                rows = torch.stack([input_features[keys.index(unique[i])] for i in missing])
                outputs = tower(rows, return_dict=True).last_hidden_state
            for i, output in zip(missing, outputs, strict=True):
                cache[unique[i]] = output
        return torch.stack([cache[key] for key in keys]).to(input_features.device)

    def get_audio_features(
        self,
        input_features: torch.FloatTensor,
        feature_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.FloatTensor:
        """Encode log-mel spectrograms into LM-space tokens.

        Args:
            input_features: `(num_audios, num_mel_bins, 2 * max_source_positions)`, Whisper's log-mel features.
            feature_attention_mask: `(num_audios, frames)`, 1 on each clip's real log-mel frames (the processor's
                `trim_audio_padding`). When given, only the tokens that cover a clip's real frames are kept (a
                partly filled last token counts, at least one per clip), as many as the processor's
                `audio_token_count`, so the window's padding silence never reaches the LM.
        Returns:
            `(num_audios, config.num_audio_tokens, text_hidden_size)`, or, with `feature_attention_mask`,
            `(total_kept_tokens, text_hidden_size)`: the clips' kept tokens, clip after clip.
        """
        if self.audio_tower is None:
            raise ValueError("This model has no audio tower (config.audio_config is None) but audio input was given.")
        if not torch.is_floating_point(input_features):
            raise ValueError(
                f"input_features must be floating-point log-mel features from the processor, got "
                f"{input_features.dtype}: pass the audio through `processor(audio=...)`."
            )
        hidden = self._audio_tower_output(input_features.to(self.audio_tower.dtype))
        # Stack k consecutive frames into one token: k times fewer placeholders, no information dropped.
        batch, frames, width = hidden.shape
        factor = self.config.audio_downsample_factor
        hidden = hidden.reshape(batch, frames // factor, factor * width)
        features = self.audio_connector(hidden)
        if feature_attention_mask is None:
            return features
        if feature_attention_mask.shape[0] != features.shape[0]:
            raise ValueError(
                f"feature_attention_mask has {feature_attention_mask.shape[0]} rows but input_features holds "
                f"{features.shape[0]} clips: give one mask row per clip, as the processor returns them."
            )
        num_tokens = features.shape[1]
        frames_per_token = input_features.shape[-1] // num_tokens
        counts = (feature_attention_mask.sum(-1).to(features.device) + frames_per_token - 1) // frames_per_token
        counts = counts.clamp(1, num_tokens)
        keep = torch.arange(num_tokens, device=features.device) < counts[:, None]
        return features[keep]

    def _placeholder_mask(self, input_ids: torch.LongTensor) -> torch.BoolTensor:
        token_ids = [i for i in (self.config.image_token_id, self.config.audio_token_id) if i is not None]
        return torch.isin(input_ids, torch.tensor(token_ids, dtype=input_ids.dtype, device=input_ids.device))

    def _scatter_features(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor,
        features: torch.FloatTensor,
        token_id: int | None,
        modality: str,
    ) -> torch.FloatTensor:
        """Write `features` into the rows of `inputs_embeds` that hold the modality's placeholder token."""
        if token_id is None:
            raise ValueError(f"{modality} input was given but config.{modality}_token_id is not set.")
        if input_ids is not None:
            mask = input_ids == token_id
        else:
            placeholder = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            mask = (inputs_embeds == placeholder).all(-1)
        num_tokens = int(mask.sum())
        # 3-D: `(items, tokens per item, hidden)`; 2-D: trimmed audio, `(total tokens, hidden)`.
        num_features = features.shape[0] * features.shape[1] if features.ndim == 3 else features.shape[0]
        if num_tokens != num_features:
            # TRL recognises this sentence and adds a hint about `max_length` truncating placeholders.
            label = "Image" if modality == "image" else "Audio"
            if features.ndim == 3:
                given = (
                    f"{features.shape[0]} {modality}(s) give {num_features} feature vectors ({features.shape[1]} per "
                    f"{modality}). The processor must expand each <{modality}> into exactly {features.shape[1]} "
                    "placeholders."
                )
            else:
                given = (
                    f"the {modality} clips give {num_features} feature vectors after trimming to their "
                    "feature_attention_mask. Pass the processor's input_ids, input_features and "
                    "feature_attention_mask together."
                )
            raise ValueError(
                f"{label} features and {modality} tokens do not match: the input holds {num_tokens} <{modality}> "
                f"placeholder tokens, but {given}"
            )
        features = features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1).to(inputs_embeds.device), features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> TinyLlavaModelOutputWithPast:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`, *optional*):
            One entry per `<image>` in the batch (rows without images contribute none).
        input_features (`torch.FloatTensor` of shape `(num_audios, num_mel_bins, frames)`, *optional*):
            Whisper log-mel features, one entry per `<audio>` in the batch.
        feature_attention_mask (`torch.Tensor` of shape `(num_audios, frames)`, *optional*):
            1 on each clip's real log-mel frames, from a processor with `trim_audio_padding`: each `<audio>` then has
            as many placeholders as its clip needs, not a whole window (see `get_audio_features`).
        kwargs: passed to the LM backbone, including its KV cache (`past_key_values`, or `cache` from transformers
            5.24 on), so the cache argument follows the installed transformers version.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            # Placeholder rows are overwritten by tower features, so their ids are never looked up: the placeholder
            # tokens need no embedding row (their ids may lie past the LM vocabulary, as for a converted checkpoint
            # whose tokenizer fills the vocabulary) and no extra logit enters the softmax.
            inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(self._placeholder_mask(input_ids), 0))

        image_features = audio_features = None
        if pixel_values is not None and pixel_values.shape[0] > 0:
            image_features = self.get_image_features(pixel_values)
            inputs_embeds = self._scatter_features(
                input_ids, inputs_embeds, image_features, self.config.image_token_id, "image"
            )
        if input_features is not None and input_features.shape[0] > 0:
            audio_features = self.get_audio_features(input_features, feature_attention_mask)
            inputs_embeds = self._scatter_features(
                input_ids, inputs_embeds, audio_features, self.config.audio_token_id, "audio"
            )

        kwargs.pop("return_dict", None)  # the backbone is always asked for an output object
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return TinyLlavaModelOutputWithPast(
            **_fields_of(TinyLlavaModelOutputWithPast, outputs),
            image_hidden_states=image_features,
            audio_hidden_states=audio_features,
        )


class TinyLlavaForConditionalGeneration(TinyLlavaPreTrainedModel, GenerationMixin):
    """TinyLLaVA with a language-modelling head: `AutoModelForImageTextToText` (and `AutoModelForCausalLM`)."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: TinyLlavaConfig):
        super().__init__(config)
        self.model = TinyLlavaModel(config)
        text_config = config.text_config
        self.lm_head = nn.Linear(
            text_config.hidden_size, text_config.vocab_size, bias=text_config.model_type in LM_HEAD_WITH_BIAS
        )
        # Tie to the backbone's own embedding module: not every LM calls it `embed_tokens` (GPT-2: `wte`).
        embeddings = self.model.get_input_embeddings()
        name = next(name for name, module in self.model.language_model.named_modules() if module is embeddings)
        if name != "embed_tokens":
            self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{name}.weight"}
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        return self.model.get_image_features(pixel_values, **kwargs)

    def get_audio_features(
        self, input_features: torch.FloatTensor, feature_attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.FloatTensor:
        return self.model.get_audio_features(input_features, feature_attention_mask, **kwargs)

    def prepare_inputs_for_generation(self, *args, **kwargs):
        """As GenerationMixin's, which forwards `pixel_values`/`input_features` at prefill only; so does
        `feature_attention_mask` here (it only describes `input_features`)."""
        model_inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        first = kwargs.get("is_first_iteration")
        if first is not None and not first and kwargs.get("use_cache", True):
            model_inputs.pop("feature_attention_mask", None)
        return model_inputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        feature_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> TinyLlavaCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets; `-100` is ignored. Placeholder positions are always ignored, whatever they hold.
        logits_to_keep (`int` or `torch.Tensor`): compute logits only for the last N positions (0 = all).
        feature_attention_mask (`torch.Tensor` of shape `(num_audios, frames)`, *optional*): see
            `TinyLlavaModel.forward`.
        """
        kwargs.pop("return_dict", None)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            input_features=input_features,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            feature_attention_mask=feature_attention_mask,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        softcap = getattr(self.config.text_config, "final_logit_softcapping", None)
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap

        loss = None
        if labels is not None:
            if input_ids is not None:
                # A placeholder is never a target: its embedding is a tower feature, not the token.
                labels = labels.masked_fill(self.model._placeholder_mask(input_ids), -100)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )

        passthrough = {key: value for key, value in outputs.items() if key not in ("loss", "logits")}
        return TinyLlavaCausalLMOutputWithPast(
            loss=loss, logits=logits, **_fields_of(TinyLlavaCausalLMOutputWithPast, passthrough)
        )


__all__ = ["TinyLlavaForConditionalGeneration", "TinyLlavaModel", "TinyLlavaPreTrainedModel"]
