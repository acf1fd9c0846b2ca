"""tinyllava-hf <-> transformers' native `llava` (LlavaForConditionalGeneration + LlavaProcessor).

LLaVA's architecture is a special case of TinyLLaVA's: a CLIP/SigLIP tower, hidden state(s) of `vision_feature_layer`
with the first token dropped (`default`) or kept (`full`), a `Linear -> GELU -> Linear` projector (our `mlp2x_gelu`),
and any causal LM whose head has no bias. `export_llava` writes such a model as a plain `llava` checkpoint that loads
without remote code; `import_llava` reads one back.

Both directions check, on a synthetic non-square image, that the two processors produce the same input ids and pixel
values, so a converted folder expands `<image>` into the same number of placeholders as the model fills.

What LLaVA cannot express, and therefore is refused:

- connectors other than `mlp2x_gelu`: `qformer`, `resampler` (a different module), `mof` (two towers),
  `mlp{N}x_gelu` with N != 2, `linear` and `identity` (LLaVA's projector is always Linear -> activation -> Linear; a
  single linear map could only be imitated by inventing an identity second layer with a "linear" activation, which
  this exporter deliberately does not do: the result would not round-trip to the original connector);
- towers other than CLIP and SigLIP (DINOv2 is only used by TinyLLaVA's MoF and is not verified here);
- audio towers;
- LM heads with a bias (Phi-2): `LlavaForConditionalGeneration.lm_head` is `nn.Linear(..., bias=False)`;
- LMs with final logit soft-capping (Gemma-2 style): LLaVA's head does not apply it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoProcessor,
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from ..builder import build_processor, with_default_template
from ..configuration_tinyllava import VISION_TOWER_PREFIX_TOKENS, TinyLlavaConfig, canonical_connector_name
from ..constants import IMAGE_TOKEN
from ..files import atomic_output_dir
from ..processing_tinyllava import TinyLlavaProcessor
from .upstream import (
    LLAVA,
    TINYLLAVA_HF,
    ConversionError,
    KeyRule,
    check_conversion_paths,
    load_strict,
    meta_model,
    read_state_dict,
    rename_state_dict,
    write_conversion_card,
)

__all__ = ["LLAVA_TOWERS", "check_llava_expressible", "export_llava", "import_llava"]

LLAVA_TOWERS = ("clip_vision_model", "siglip_vision_model")
# The name an imported llava processor's own chat template keeps beside the TinyLLaVA ones.
IMPORTED_TEMPLATE_NAME = "llava"
# Image-processor settings carried over to LlavaImageProcessorPil when `pad` has to be expressed by its `do_pad`.
_IMAGE_PROCESSOR_FIELDS = (
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)

_TO_LLAVA = [
    KeyRule.of(r"^model\.vision_tower\.(.+)$", r"model.vision_tower.\1"),
    KeyRule.of(r"^model\.connector\.layers\.0\.(weight|bias)$", r"model.multi_modal_projector.linear_1.\1"),
    KeyRule.of(r"^model\.connector\.layers\.2\.(weight|bias)$", r"model.multi_modal_projector.linear_2.\1"),
    KeyRule.of(r"^model\.language_model\.(.+)$", r"model.language_model.\1"),
    KeyRule.of(r"^lm_head\.weight$", r"lm_head.weight"),
]
_FROM_LLAVA = [
    # transformers >= 4.52 layout, as LlavaForConditionalGeneration.save_pretrained writes it today. Towers saved by
    # 4.x still had a `vision_model.` level, which transformers 5 vision models no longer have.
    KeyRule.of(r"^model\.vision_tower\.vision_model\.(.+)$", r"model.vision_tower.\1"),
    KeyRule.of(r"^model\.vision_tower\.(.+)$", r"model.vision_tower.\1"),
    KeyRule.of(r"^model\.multi_modal_projector\.linear_1\.(weight|bias)$", r"model.connector.layers.0.\1"),
    KeyRule.of(r"^model\.multi_modal_projector\.linear_2\.(weight|bias)$", r"model.connector.layers.2.\1"),
    KeyRule.of(r"^model\.language_model\.(.+)$", r"model.language_model.\1"),
    KeyRule.of(r"^lm_head\.weight$", r"lm_head.weight"),
    # Legacy (< 4.52) layout, still what many llava-hf Hub repos hold.
    KeyRule.of(r"^vision_tower\.vision_model\.(.+)$", r"model.vision_tower.\1"),
    # What LlavaForConditionalGeneration.save_pretrained writes in transformers 5 (legacy prefixes, towers without
    # their `vision_model.` level).
    KeyRule.of(r"^vision_tower\.(.+)$", r"model.vision_tower.\1"),
    KeyRule.of(r"^multi_modal_projector\.linear_1\.(weight|bias)$", r"model.connector.layers.0.\1"),
    KeyRule.of(r"^multi_modal_projector\.linear_2\.(weight|bias)$", r"model.connector.layers.2.\1"),
    KeyRule.of(r"^language_model\.model\.(.+)$", r"model.language_model.\1"),
    KeyRule.of(r"^language_model\.lm_head\.weight$", r"lm_head.weight"),
]


def check_llava_expressible(config: TinyLlavaConfig) -> None:
    """Raise `ConversionError` listing every reason `config` has no exact `llava` equivalent."""
    reasons = []
    connector = canonical_connector_name(config.connector_type)
    if config.connector_type != "mlp2x_gelu":
        why = {
            "qformer": "a Q-Former is not LLaVA's projector",
            "resampler": "a Perceiver resampler is not LLaVA's projector",
            "mof": "MoF needs two vision towers; LLaVA has one",
            "linear": "LLaVA's projector is always Linear -> activation -> Linear; one linear layer cannot be "
            "expressed without inventing a second (identity) layer",
            "identity": "LLaVA's projector is always Linear -> activation -> Linear; an identity connector cannot "
            "be expressed without inventing two identity layers",
            "mlp{N}x_gelu": "LLaVA's projector has exactly two Linear layers",
        }[connector]
        reasons.append(f"connector_type={config.connector_type!r}: {why}")
    if config.vision_config.model_type not in LLAVA_TOWERS:
        reasons.append(
            f"vision tower {config.vision_config.model_type!r}: only {', '.join(LLAVA_TOWERS)} are exported"
        )
    if config.vision_aux_config is not None:
        reasons.append("a second vision tower (vision_aux_config) has no place in LLaVA")
    if config.audio_config is not None:
        reasons.append("an audio tower (audio_config) has no place in LLaVA")
    text_config = config.text_config
    if text_config.model_type == "phi":
        reasons.append(
            "the phi LM head has a bias, but LlavaForConditionalGeneration.lm_head is nn.Linear(bias=False): the "
            "bias would be dropped and every logit would change"
        )
    if getattr(text_config, "final_logit_softcapping", None) is not None:
        reasons.append("the LM soft-caps its final logits, which LlavaForConditionalGeneration does not do")
    if reasons:
        raise ConversionError("Cannot export to llava: " + "; ".join(reasons) + ".")


def _tied(state_dict: dict[str, torch.Tensor], tie: bool) -> dict[str, torch.Tensor]:
    # Tied heads are not stored by save_pretrained; the strict loader still expects the (shared) key.
    if tie and "lm_head.weight" not in state_dict:
        state_dict["lm_head.weight"] = state_dict["model.language_model.embed_tokens.weight"]
    return state_dict


def _probe_image() -> Image.Image:
    """A deterministic non-square RGB image: exercises resizing, cropping and `pad` in both processors."""
    rng = np.random.default_rng(1234)
    return Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))


def _check_processors_agree(ours: TinyLlavaProcessor, llava: LlavaProcessor, expected_tokens: int) -> None:
    """Both processors must expand `<image>` into `expected_tokens` placeholders and give the same tensors."""
    image = _probe_image()
    text = f"Look: {IMAGE_TOKEN}\nwhat is it?"
    ours_out = ours(text=text, images=[image], return_tensors="pt")
    llava_out = llava(text=text, images=[image], return_tensors="pt")
    count = int((llava_out["input_ids"] == llava.image_token_id).sum())
    if count != expected_tokens:
        raise ConversionError(
            f"LlavaProcessor expands <image> into {count} placeholders but the model fills {expected_tokens}."
        )
    if not torch.equal(ours_out["input_ids"], llava_out["input_ids"]):
        raise ConversionError("The tinyllava and llava processors tokenize the same prompt differently.")
    difference = (ours_out["pixel_values"].float() - llava_out["pixel_values"].float()).abs().max().item()
    if difference > 1e-6:
        raise ConversionError(f"The tinyllava and llava image processors disagree (max abs diff {difference:.3g}).")


def _without_remote_code(component):
    """A copy of a tokenizer / image processor that no longer points at tinyllava's remote processor code.

    Loading a tinyllava-hf folder gives its components an `auto_map` to `processing_tinyllava`; a native llava folder
    must not carry it.
    """
    component = copy.deepcopy(component)
    if isinstance(getattr(component, "init_kwargs", None), dict):
        component.init_kwargs.pop("auto_map", None)
    if hasattr(component, "auto_map"):
        del component.auto_map
    return component


def _llava_image_processor(processor: TinyLlavaProcessor):
    """The image processor LlavaProcessor should use: the tower's own, or LlavaImageProcessorPil for `pad`."""
    image_processor = _without_remote_code(processor.image_processor)
    if processor.image_aspect_ratio == "square":
        return image_processor
    # LlavaImageProcessor's `do_pad` pads to a square of int(mean * 255) with the original centred, exactly as
    # LLaVA-1.5 / TinyLLaVA's expand2square, before resizing.
    settings = {
        field: getattr(image_processor, field)
        for field in _IMAGE_PROCESSOR_FIELDS
        if getattr(image_processor, field, None) is not None
    }
    settings["do_center_crop"] = bool(getattr(image_processor, "do_center_crop", False))
    for field in ("size", "crop_size"):
        if field in settings and not isinstance(settings[field], dict):
            settings[field] = {
                key: value for key, value in dict(settings[field].__dict__).items() if value is not None
            }
    return LlavaImageProcessorPil(do_pad=True, **settings)


def export_llava(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> Path:
    """Write a tinyllava-hf folder as a native transformers `llava` folder (no remote code).

    Args:
        src: a tinyllava-hf folder (config, weights, processor).
        dst: the `llava` folder to write: LlavaConfig, LlavaForConditionalGeneration weights, LlavaProcessor
            (tokenizer, image processor, chat template, patch_size / num_additional_image_tokens / strategy).
        overwrite: replace an existing non-empty `dst`.

    Returns:
        `dst` as an absolute path.
    """
    src = Path(src)
    check_conversion_paths(src, dst, overwrite, expected=TINYLLAVA_HF)  # before any heavy work
    config = TinyLlavaConfig.from_pretrained(src)
    check_llava_expressible(config)
    processor = AutoProcessor.from_pretrained(src)
    if not isinstance(processor, TinyLlavaProcessor):
        raise ConversionError(f"{src}: expected a TinyLlavaProcessor, found {type(processor).__name__}.")
    state_dict = _tied(read_state_dict(src), config.tie_word_embeddings)
    state_dict = rename_state_dict(state_dict, _TO_LLAVA, str(src))

    text_config = config.text_config.to_dict()
    if config.image_token_id >= config.text_config.vocab_size:
        state_dict = _cover_placeholder_row(state_dict, config)
        text_config["vocab_size"] = config.image_token_id + 1
    llava_config = LlavaConfig(
        text_config=text_config,
        vision_config=config.vision_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=config.num_image_tokens,
        projector_hidden_act="gelu",  # nn.GELU() (erf), the activation of our mlp2x_gelu
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_feature_layer=config.vision_feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_config)
    model.config.dtype = state_dict["model.language_model.embed_tokens.weight"].dtype
    load_strict(model, state_dict, str(src))
    model.generation_config = _generation_config(src)

    llava_processor = LlavaProcessor(
        image_processor=_llava_image_processor(processor),
        tokenizer=_without_remote_code(processor.tokenizer),
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=processor.chat_template,
        image_token=processor.image_token,
        # CLIP's class token is one extra token in front of the patches; SigLIP has none.
        num_additional_image_tokens=VISION_TOWER_PREFIX_TOKENS[config.vision_config.model_type],
    )
    _check_processors_agree(processor, llava_processor, config.num_image_tokens)

    dst = Path(dst).absolute()
    with atomic_output_dir(dst, overwrite=overwrite, error=ConversionError) as tmp:
        model.save_pretrained(tmp)
        llava_processor.save_pretrained(tmp)
        _assert_no_remote_code(tmp)
    return dst


def _cover_placeholder_row(state_dict: dict[str, torch.Tensor], config: TinyLlavaConfig) -> dict[str, torch.Tensor]:
    """Give `<image>` an embedding row when its id lies past the LM vocabulary.

    Our model never looks placeholder ids up, but transformers' llava embeds `input_ids` before it scatters the image
    features, so the id needs a row. The new rows are the mean of the existing ones; in the head that makes the new
    logit the mean logit, which changes no existing logit and can never be the greedy choice (it does take part in a
    softmax over the full vocabulary).
    """
    extra = config.image_token_id + 1 - config.text_config.vocab_size

    def grow(tensor: torch.Tensor) -> torch.Tensor:
        mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
        return torch.cat([tensor, mean.expand(extra, *tensor.shape[1:])], dim=0)

    grown = dict(state_dict)
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight", "lm_head.bias"):
        if key in grown:
            grown[key] = grow(grown[key])
    return grown


def _assert_no_remote_code(folder: Path) -> None:
    """A native llava folder has no code files and no `auto_map` in any of its JSON files."""

    def has_auto_map(node) -> bool:
        if isinstance(node, dict):
            return "auto_map" in node or any(has_auto_map(value) for value in node.values())
        return isinstance(node, list) and any(has_auto_map(value) for value in node)

    offending = [path.name for path in folder.glob("*.py")]
    offending += [path.name for path in folder.glob("*.json") if has_auto_map(json.loads(path.read_text()))]
    if offending:
        raise ConversionError(f"Internal error: the exported llava folder would need remote code ({offending}).")


def _generation_config(folder: Path) -> GenerationConfig | None:
    if (folder / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(folder)
    return None


def import_llava(src: str | Path, dst: str | Path, *, template: str | None = None, overwrite: bool = False) -> Path:
    """Convert a native transformers `llava` folder into a tinyllava-hf folder (`mlp2x_gelu` connector).

    Args:
        src: a `llava` folder (LlavaConfig, weights in the current or the legacy key layout, LlavaProcessor files).
        dst: the tinyllava-hf folder to write.
        template: a tinyllava chat template name to use when the llava processor has no chat template.
        overwrite: replace an existing non-empty `dst`.

    Returns:
        `dst` as an absolute path.
    """
    src = Path(src)
    check_conversion_paths(src, dst, overwrite, expected=LLAVA)  # before any heavy work
    llava_config = AutoConfig.from_pretrained(src)
    reasons = []
    if llava_config.projector_hidden_act != "gelu":
        reasons.append(f"projector_hidden_act={llava_config.projector_hidden_act!r} (mlp2x_gelu needs 'gelu')")
    if not llava_config.multimodal_projector_bias:
        reasons.append("multimodal_projector_bias=False (mlp2x_gelu has biases)")
    if llava_config.vision_config.model_type not in LLAVA_TOWERS:
        reasons.append(f"vision tower {llava_config.vision_config.model_type!r}")
    if reasons:
        raise ConversionError(f"{src}: cannot import this llava model: " + "; ".join(reasons) + ".")

    llava_processor = AutoProcessor.from_pretrained(src)
    if not isinstance(llava_processor, LlavaProcessor):
        raise ConversionError(f"{src}: expected a LlavaProcessor, found {type(llava_processor).__name__}.")
    # A copy: the llava processor keeps its own (padding) image processor for the agreement check below.
    image_processor = copy.deepcopy(llava_processor.image_processor)
    aspect = "square"
    if getattr(image_processor, "do_pad", False):
        # Our processor pads (same background, same offsets) before calling the image processor.
        aspect = "pad"
        image_processor.do_pad = False
    # Every named template stays selectable by name, as in the checkpoints `train` writes; the llava processor's own
    # template is kept as `llava` and is the default unless `template` names another.
    own = llava_processor.chat_template
    own = own if isinstance(own, dict) else {"default": own} if own else {}
    own_templates = {IMPORTED_TEMPLATE_NAME if name == "default" else name: text for name, text in own.items()}
    if template is None and IMPORTED_TEMPLATE_NAME not in own_templates:
        raise ConversionError(f"{src}: the llava processor has no chat template; pass a template name.")
    template = template or IMPORTED_TEMPLATE_NAME
    try:
        chat_template = with_default_template(own_templates, template)
    except ValueError as error:
        raise ConversionError(str(error)) from None

    config = TinyLlavaConfig(
        text_config=llava_config.text_config.to_dict(),
        vision_config=llava_config.vision_config.to_dict(),
        connector_type="mlp2x_gelu",
        vision_feature_layer=llava_config.vision_feature_layer,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
        tie_word_embeddings=llava_config.tie_word_embeddings,
    )
    tokenizer = llava_processor.tokenizer
    processor = build_processor(
        config, tokenizer, image_processor, chat_template=chat_template, image_aspect_ratio=aspect
    )
    if config.image_token_id != llava_config.image_token_id:
        raise ConversionError(
            f"{src}: the tokenizer's {IMAGE_TOKEN} is id {config.image_token_id} but the llava config says "
            f"image_token_index={llava_config.image_token_id}."
        )
    _check_processors_agree(processor, llava_processor, config.num_image_tokens)

    state_dict = rename_state_dict(read_state_dict(src), _FROM_LLAVA, str(src))
    state_dict = _tied(state_dict, config.tie_word_embeddings)
    model = meta_model(config, state_dict["model.language_model.embed_tokens.weight"].dtype)
    load_strict(model, state_dict, str(src))
    generation_config = _generation_config(src)
    if generation_config is not None:
        model.generation_config = generation_config

    dst = Path(dst).absolute()
    with atomic_output_dir(dst, overwrite=overwrite, error=ConversionError) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    write_conversion_card(
        dst,
        f"Imported by `tinyllava-hf import-llava` from the native transformers llava checkpoint `{src.absolute()}`; "
        "its projector became an `mlp2x_gelu` connector with the same weights.",
        tags=["llava-import"],
    )
    return dst
