"""TinyLLaVA model configuration.

This file is shipped next to the weights as remote code, so it imports only torch/transformers/huggingface_hub and its
flat siblings (never ``tinyllava_hf``).
"""

import re
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

# Where each Auto class finds our code when the checkpoint is loaded with `trust_remote_code=True`. Written into every
# saved config.json by `TinyLlavaPreTrainedModel.save_pretrained`.
AUTO_MAP = {
    "AutoConfig": "configuration_tinyllava.TinyLlavaConfig",
    "AutoModel": "modeling_tinyllava.TinyLlavaModel",
    "AutoModelForImageTextToText": "modeling_tinyllava.TinyLlavaForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_tinyllava.TinyLlavaForConditionalGeneration",
    "AutoProcessor": "processing_tinyllava.TinyLlavaProcessor",
}

# Exact connector names. `mlp{N}x_gelu` is a family (any N >= 1) matched by an anchored regex, never by substring.
CONNECTOR_NAMES = ("identity", "linear", "mlp{N}x_gelu", "qformer", "resampler", "mof")
_MLP_GELU = re.compile(r"^mlp([1-9][0-9]*)x_gelu$")
# Connectors that map every input token to one output token (so they can also serve the audio path).
TOKENWISE_CONNECTORS = ("identity", "linear", "mlp{N}x_gelu")

# Vision towers we know how to count tokens for: model_type -> number of special (non-patch) tokens in front.
VISION_TOWER_PREFIX_TOKENS = {"clip_vision_model": 1, "siglip_vision_model": 0, "dinov2": 1}


def canonical_connector_name(connector_type: str) -> str:
    """Map a connector name to its registry entry (``mlp3x_gelu`` -> ``mlp{N}x_gelu``) or fail listing valid names."""
    if connector_type in CONNECTOR_NAMES and connector_type != "mlp{N}x_gelu":
        return connector_type
    if _MLP_GELU.match(connector_type):
        return "mlp{N}x_gelu"
    raise ValueError(
        f"Unknown connector type {connector_type!r}. Valid connector types: {', '.join(CONNECTOR_NAMES)} "
        "(where N is any integer >= 1, e.g. mlp2x_gelu)."
    )


def mlp_depth(connector_type: str) -> int:
    """Number of Linear layers in an ``mlp{N}x_gelu`` connector."""
    match = _MLP_GELU.match(connector_type)
    if match is None:
        raise ValueError(f"{connector_type!r} is not an mlp{{N}}x_gelu connector")
    return int(match.group(1))


def num_vision_tower_tokens(vision_config: PreTrainedConfig) -> int:
    """Tokens a vision tower emits per image: the patch grid plus its class token (CLIP, DINOv2), none for SigLIP."""
    model_type = vision_config.model_type
    if model_type not in VISION_TOWER_PREFIX_TOKENS:
        raise ValueError(
            f"Unsupported vision tower {model_type!r}. Supported: {', '.join(sorted(VISION_TOWER_PREFIX_TOKENS))}."
        )
    image_size, patch_size = vision_config.image_size, vision_config.patch_size
    if not (isinstance(image_size, int) and isinstance(patch_size, int) and image_size > 0 and patch_size > 0):
        raise ValueError(
            f"The vision tower's image_size ({image_size!r}) and patch_size ({patch_size!r}) must be positive."
        )
    grid = image_size // patch_size
    return grid * grid + VISION_TOWER_PREFIX_TOKENS[model_type]


@strict
class TinyLlavaConfig(PreTrainedConfig):
    r"""
    Configuration of a TinyLLaVA model: a vision tower (and optionally an audio tower) whose features a connector maps
    into the input embeddings of any causal language model.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*): config of the causal LM (any `model_type`).
        vision_config (`dict` or `PreTrainedConfig`, *optional*): a `clip_vision_model`, `siglip_vision_model`
            or `dinov2` config.
        vision_aux_config (`dict` or `PreTrainedConfig`, *optional*): second tower (DINOv2) for the `mof` connector.
        audio_config (`dict` or `PreTrainedConfig`, *optional*): a `whisper` config; its encoder is the audio tower.
        connector_type (`str`): one of `identity`, `linear`, `mlp{N}x_gelu`, `qformer`, `resampler`, `mof`.
        connector_num_queries (`int`): learned queries of the `qformer` / latents of the `resampler`.
        connector_num_layers (`int`): layers of the `qformer` / `resampler`.
        connector_num_heads (`int`): attention heads of the `qformer` / `resampler`.
        connector_head_dim (`int`): per-head width of the `resampler` (upstream fixes 64).
        qformer_hidden_size (`int`), qformer_intermediate_size (`int`): width of the Q-Former's BERT-style layers.
        qformer_cross_attention_freq (`int`): cross-attention to the image in layers 0, k, 2k, ...
        qformer_layer_norm_eps (`float`): epsilon of the Q-Former's layer norms.
        vision_feature_layer (`int` or `list[int]`): hidden state(s) of the tower to use; several are concatenated.
        vision_feature_select_strategy (`str`): `default` drops the first token (CLIP/DINOv2 class token; for SigLIP
            this drops a real patch, which is what upstream TinyLLaVA checkpoints were trained with), `full` keeps all.
        audio_connector_type (`str`): a token-wise connector (`identity`, `linear`, `mlp{N}x_gelu`) for audio.
        audio_downsample_factor (`int`): consecutive Whisper frames stacked into one audio token.
        image_token_id (`int`), audio_token_id (`int`): ids of the `<image>` / `<audio>` placeholder tokens.
        tie_word_embeddings (`bool`): tie `lm_head` to the LM's input embeddings.
    """

    model_type = "tinyllava"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
        "vision_aux_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2", optional=True),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    vision_aux_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    connector_type: str = "mlp2x_gelu"
    connector_num_queries: int = 64
    connector_num_layers: int = 2
    connector_num_heads: int = 8
    connector_head_dim: int = 64
    qformer_hidden_size: int = 768
    qformer_intermediate_size: int = 3072
    qformer_cross_attention_freq: int = 2
    qformer_layer_norm_eps: float = 1e-12
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    audio_connector_type: str = "mlp2x_gelu"
    audio_downsample_factor: int = 4
    image_token_id: int | None = None
    audio_token_id: int | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # A config with no sub-config at all is the class default (transformers and `AutoConfig.for_model` may build
        # one); it is refused only when a model is built from it (`TinyLlavaModel`). A config that names some towers
        # but not the LM (or not the vision tower) is a mistake: transformers would silently fill it with Llama's
        # 7B defaults (or a default SigLIP), so it is refused here.
        given = [name for name in self.sub_configs_defaults if getattr(self, name) is not None]
        if given and self.text_config is None:
            raise ValueError(
                f"TinyLlavaConfig got {', '.join(given)} but no text_config: pass the language model's config "
                "(e.g. `AutoConfig.from_pretrained(llm)`), or it would silently default to a 7B Llama."
            )
        if given and self.vision_config is None:
            raise ValueError(
                f"TinyLlavaConfig got {', '.join(given)} but no vision_config: pass the vision tower's config "
                "(CLIP, SigLIP or DINOv2), or it would silently default to a SigLIP tower."
            )
        # Derived counts are properties; a config.json that also stores them (hand-written, or copied from the
        # processor config) loads when they agree with the derived value, and fails naming the field otherwise.
        stored_counts = {name: kwargs.pop(name) for name in ("num_image_tokens", "num_audio_tokens") if name in kwargs}
        super().__post_init__(**kwargs)
        # The sub-configs transformers filled with defaults, kept by identity so that assigning a real one later
        # (config.text_config = ...) lifts the refusal; deep copies keep the identity.
        self.__dict__["_default_sub_configs"] = (
            {} if given else {name: getattr(self, name) for name in ("text_config", "vision_config")}
        )
        # Most LMs declare tying on their own config (Qwen2-0.5B, Gemma); the composite model must honour it.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self._check_consistency()
        for name, stored in stored_counts.items():
            if stored != getattr(self, name):
                raise ValueError(
                    f"config.{name}={stored} disagrees with the {getattr(self, name)} that this configuration "
                    f"implies (it is derived from the towers and connector, never set): remove `{name}` from "
                    "config.json, or fix the fields it is derived from."
                )

    def defaulted_sub_configs(self) -> list[str]:
        """Names of the required sub-configs that still hold transformers' defaults (a bare `TinyLlavaConfig()`)."""
        defaults = self.__dict__.get("_default_sub_configs", {})
        return [name for name, default in defaults.items() if getattr(self, name) is default]

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop("_default_sub_configs", None)  # bookkeeping for `TinyLlavaModel`, never serialised
        return output

    def _check_consistency(self):
        self._check_text_config()
        connector = canonical_connector_name(self.connector_type)
        num_vision_tower_tokens(self.vision_config)  # fails early on an unsupported tower
        self._check_feature_layers("vision_config", self.vision_config)
        if connector in ("qformer", "resampler"):
            self._check_connector_sizes(connector)
        if connector == "mof":
            if self.vision_aux_config is None:
                raise ValueError("connector_type='mof' needs a second vision tower in `vision_aux_config` (DINOv2).")
            if num_vision_tower_tokens(self.vision_aux_config) != num_vision_tower_tokens(self.vision_config):
                raise ValueError(
                    "connector_type='mof' interleaves the tokens of both towers, so they must emit the same number "
                    f"of tokens: vision_config gives {num_vision_tower_tokens(self.vision_config)}, vision_aux_config "
                    f"gives {num_vision_tower_tokens(self.vision_aux_config)}."
                )
            self._check_feature_layers("vision_aux_config", self.vision_aux_config)
        elif self.vision_aux_config is not None:
            raise ValueError(f"vision_aux_config is only used by the 'mof' connector, not {self.connector_type!r}.")
        if self.num_image_tokens < 1:
            raise ValueError(
                f"This configuration gives {self.num_image_tokens} tokens per image: the vision tower's image_size "
                f"({self.vision_config.image_size}) must hold at least one patch of {self.vision_config.patch_size} "
                "pixels beyond what vision_feature_select_strategy='default' drops."
            )
        if self.audio_config is not None:
            if canonical_connector_name(self.audio_connector_type) not in TOKENWISE_CONNECTORS:
                raise ValueError(
                    f"audio_connector_type must be one of {', '.join(TOKENWISE_CONNECTORS)}, "
                    f"got {self.audio_connector_type!r}."
                )
            factor = self.audio_downsample_factor
            if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
                raise ValueError(
                    f"audio_downsample_factor must be a positive integer (frames stacked into one audio token), "
                    f"got {factor!r}."
                )
            if self.audio_config.max_source_positions % factor:
                raise ValueError(
                    f"audio_downsample_factor={factor} must divide the Whisper encoder's "
                    f"{self.audio_config.max_source_positions} output frames."
                )

    def _check_text_config(self):
        # The LM backbone is built with `AutoModel` and fed `inputs_embeds` as a decoder: an encoder (BERT) or an
        # encoder-decoder (T5, BART) builds but fails later with an unrelated AttributeError.
        text_config = self.text_config
        if getattr(text_config, "is_encoder_decoder", False) or getattr(text_config, "is_decoder", True) is False:
            kind = "an encoder-decoder" if getattr(text_config, "is_encoder_decoder", False) else "an encoder"
            raise ValueError(
                f"text_config is {kind} model ({text_config.model_type!r}); TinyLLaVA needs a decoder-only language "
                "model with a causal-LM class in transformers (e.g. llama, qwen2, phi, gemma, stablelm)."
            )
        if type(text_config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            raise ValueError(
                f"text_config model_type {text_config.model_type!r} has no causal-LM class in transformers; "
                "TinyLLaVA needs a decoder-only language model (e.g. llama, qwen2, phi, gemma, stablelm)."
            )

    def _check_feature_layers(self, name: str, tower_config: PreTrainedConfig):
        # A tower returns num_hidden_layers + 1 hidden states (the embeddings first), so an index outside that range
        # would pass loading and fail only in the first forward with an IndexError.
        layers = self.vision_feature_layers
        num_states = tower_config.num_hidden_layers + 1
        if not layers:
            raise ValueError("vision_feature_layer is an empty list; give at least one layer index (e.g. -2).")
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not -num_states <= layer < num_states:
                raise ValueError(
                    f"vision_feature_layer={self.vision_feature_layer!r} is out of range for {name} "
                    f"({tower_config.model_type}, {tower_config.num_hidden_layers} layers): each index must lie in "
                    f"[{-num_states}, {num_states - 1}] (0 = embeddings, -1 = last layer, -2 = the usual choice)."
                )

    def _check_connector_sizes(self, connector: str):
        # Zero or negative sizes build an empty module (0 queries -> 0 image tokens) or fail deep inside torch.
        sizes = {"connector_num_queries": 1, "connector_num_heads": 1, "connector_num_layers": 0}
        if connector == "resampler":
            sizes["connector_head_dim"] = 1
        else:
            sizes.update(qformer_hidden_size=1, qformer_intermediate_size=1, qformer_cross_attention_freq=1)
        for field, minimum in sizes.items():
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"{field} must be an integer >= {minimum} for the {connector!r} connector, got {value!r}."
                )
        if connector == "qformer" and self.qformer_hidden_size % self.connector_num_heads:
            raise ValueError(
                f"qformer_hidden_size={self.qformer_hidden_size} must be divisible by "
                f"connector_num_heads={self.connector_num_heads}."
            )

    @property
    def vision_feature_layers(self) -> list[int]:
        """`vision_feature_layer` as a list (one entry per concatenated hidden state)."""
        layer = self.vision_feature_layer
        return [layer] if isinstance(layer, int) else list(layer)

    @property
    def num_image_tokens(self) -> int:
        """Placeholder tokens one image fills in the LM sequence, derived from this configuration alone."""
        connector = canonical_connector_name(self.connector_type)
        if connector in ("qformer", "resampler"):
            return self.connector_num_queries
        tokens = num_vision_tower_tokens(self.vision_config)
        if self.vision_feature_select_strategy == "default":
            tokens -= 1
        # MoF interleaves one token of each tower, so it doubles the sequence.
        return 2 * tokens if connector == "mof" else tokens

    @property
    def num_audio_tokens(self) -> int | None:
        """Placeholder tokens one audio clip (a 30 s Whisper window) fills, or None without an audio tower."""
        if self.audio_config is None:
            return None
        return self.audio_config.max_source_positions // self.audio_downsample_factor


__all__ = ["TinyLlavaConfig"]
