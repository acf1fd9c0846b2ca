"""Build a `TinyLlavaForConditionalGeneration` + processor from parts, or load a saved TinyLLaVA checkpoint.

From parts (the usual start of a pretrain stage):

- the LM comes from any folder `AutoModelForCausalLM` loads: its base model's weights go into
  `model.language_model` and its output projection into `lm_head` (or stays tied, for LMs that tie); a GGUF file
  (`llm: model.gguf`, a folder + `llm_gguf_file`, or `llm: smollm2`) loads through transformers' own GGUF support,
  config, tokenizer and weights dequantised, after its architecture was checked (`tinyllava_hf.gguf_parts`);
- the LM's own chat template is kept as the processor's `lm` template, adapted to take image blocks and, for ChatML
  templates, to mark the answers training needs (`tinyllava_hf.lm_chat_template`);
- the vision tower (CLIP, SigLIP, DINOv2; a full CLIP/SigLIP dual encoder also works) and the Whisper audio tower come
  from their folders with `from_pretrained`, together with their image processor / feature extractor;
- the connector(s) keep the fresh initialisation of `TinyLlavaForConditionalGeneration.__init__`;
- `<image>` (and `<audio>`) are added to the tokenizer as special tokens and the embeddings are resized to cover them;
  a tokenizer without pad token pads with its unk token (as upstream TinyLLaVA does for llama), else with eos.

What `save_pretrained` writes then loads with `AutoModelForImageTextToText.from_pretrained(folder,
trust_remote_code=True)` and `AutoProcessor.from_pretrained(folder, trust_remote_code=True)`, or without remote code
when `tinyllava_hf` is imported.
"""

import copy
import importlib.util
import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
    GenerationConfig,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
)

from ..builder import build_processor, processor_chat_templates, with_default_template
from ..chat_templates import TEMPLATE_EOS
from ..configuration_tinyllava import TinyLlavaConfig
from ..gguf_parts import check_gguf_architecture, resolve_llm
from ..lm_chat_template import adapt_lm_chat_template
from ..modeling_tinyllava import TinyLlavaForConditionalGeneration
from ..processing_tinyllava import TinyLlavaProcessor
from .arguments import ModelArguments

__all__ = [
    "NON_LLM_MODULES",
    "build_checkpoint",
    "build_from_parts",
    "llm_load_kwargs",
    "load_training_start",
    "load_pretrained",
    "quantization_config_for",
    "set_default_template",
]

logger = logging.getLogger(__name__)

# Module prefixes that stay in full precision under QLoRA: only the LM's decoder layers are quantised.
NON_LLM_MODULES = (
    "model.vision_tower",
    "model.vision_tower_aux",
    "model.audio_tower",
    "model.connector",
    "model.audio_connector",
    "lm_head",
)
# Dual-encoder checkpoints whose vision half is the tower.
_DUAL_ENCODERS = ("clip", "siglip")


def torch_dtype(name: str) -> torch.dtype | str:
    return "auto" if name == "auto" else getattr(torch, name)


def _vision_config(path: str) -> PreTrainedConfig:
    config = AutoConfig.from_pretrained(path)
    # A full CLIP/SigLIP checkpoint: the tower is its vision half.
    return config.vision_config if config.model_type in _DUAL_ENCODERS else config


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token is None:
        # Upstream TinyLLaVA pads llama with unk; padding is masked out of attention and labels either way.
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token


def _template_eos_ids(tokenizer: PreTrainedTokenizerBase, template: str | None) -> list[int]:
    """Id of the template's end-of-answer text when it is one token (e.g. qwen2_instruct's <|im_end|>)."""
    text = TEMPLATE_EOS.get(template or "", "")
    if not text:
        return []
    ids = tokenizer.convert_tokens_to_ids([text])
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def _load_tower_weights(tower: torch.nn.Module, path: str, config: PreTrainedConfig) -> None:
    """Load a tower folder's weights into `tower` (same class), strict: every tensor must match."""
    loaded = type(tower).from_pretrained(path, config=config)
    tower.load_state_dict(loaded.state_dict(), strict=True)


@contextmanager
def _outside_zero3():
    """Build whole models even when a DeepSpeed ZeRO-3 config is active.

    Under ZeRO-3, transformers creates models inside `deepspeed.zero.Init`, which partitions every parameter at
    construction: the part weights could then not be copied in with `load_state_dict`. Built whole on each rank,
    the model is partitioned by `deepspeed.initialize` when the trainer starts, like any model passed to it.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def build_from_parts(args: ModelArguments) -> tuple[TinyLlavaForConditionalGeneration, TinyLlavaProcessor]:
    """Assemble a model (pretrained LM and towers, fresh connector) and its processor from `args`' part folders."""
    with _outside_zero3():
        return _build_from_parts(args)


def llm_load_kwargs(llm: str, gguf_file: str | None = None) -> tuple[str, dict]:
    """`(source, kwargs)` such that `Auto*.from_pretrained(source, **kwargs)` loads the LM part named by `llm`
    (+ `gguf_file`): `{"gguf_file": name}` for a GGUF LM, whose architecture is checked first, else `{}`."""
    source, gguf_name = resolve_llm(llm, gguf_file)
    if gguf_name is None:
        return source, {}
    local = Path(source) / gguf_name
    if local.is_file():  # a Hub repo's file is checked by transformers once downloaded
        check_gguf_architecture(local)
    return source, {"gguf_file": gguf_name}


def _build_from_parts(args: ModelArguments) -> tuple[TinyLlavaForConditionalGeneration, TinyLlavaProcessor]:
    llm, llm_kwargs = llm_load_kwargs(args.llm, args.llm_gguf_file)
    text_config = AutoConfig.from_pretrained(llm, **llm_kwargs)
    vision_config = _vision_config(args.vision_tower)
    config_kwargs = dict(
        text_config=text_config,
        vision_config=vision_config,
        connector_type=args.connector,
        connector_num_queries=args.connector_num_queries,
        vision_feature_layer=args.vision_feature_layer,
        vision_feature_select_strategy=args.vision_feature_select_strategy,
    )
    if args.vision_tower_aux is not None:
        config_kwargs["vision_aux_config"] = _vision_config(args.vision_tower_aux)
    if args.audio_tower is not None:
        config_kwargs["audio_config"] = AutoConfig.from_pretrained(args.audio_tower)
        config_kwargs["audio_connector_type"] = args.audio_connector
        config_kwargs["audio_downsample_factor"] = args.audio_downsample_factor
    config = TinyLlavaConfig(**config_kwargs)

    tokenizer = AutoTokenizer.from_pretrained(llm, **llm_kwargs)
    _ensure_pad_token(tokenizer)
    # The LM's own template (`lm`) before <image> joins the special tokens: the adaptation renders with the LM's own.
    lm_template = adapt_lm_chat_template(getattr(tokenizer, "chat_template", None), tokenizer.special_tokens_map)
    processor = build_processor(
        config,  # gets the <image>/<audio> ids of the tokenizer
        tokenizer,
        AutoImageProcessor.from_pretrained(args.vision_tower),
        feature_extractor=AutoFeatureExtractor.from_pretrained(args.audio_tower) if args.audio_tower else None,
        template=args.template,
        chat_template=processor_chat_templates(args.template, lm_template),
        image_aspect_ratio=args.image_aspect_ratio or "square",
    )

    model = TinyLlavaForConditionalGeneration._from_config(config, attn_implementation=args.attn_implementation)
    # GGUF weights are dequantised to float32 here and cast to `args.dtype` with the whole model below.
    lm = AutoModelForCausalLM.from_pretrained(llm, dtype=torch.float32, **llm_kwargs)
    model.model.language_model.load_state_dict(lm.base_model.state_dict(), strict=True)
    if not config.tie_word_embeddings:
        model.lm_head.load_state_dict(lm.get_output_embeddings().state_dict(), strict=True)
    if lm.generation_config is not None:
        model.generation_config = GenerationConfig.from_dict(lm.generation_config.to_dict())
    del lm
    _load_tower_weights(model.model.vision_tower, args.vision_tower, config.vision_config)
    if args.vision_tower_aux is not None:
        _load_tower_weights(model.model.vision_tower_aux, args.vision_tower_aux, config.vision_aux_config)
    if args.audio_tower is not None:
        whisper = AutoModel.from_pretrained(args.audio_tower, dtype=torch.float32)
        model.model.audio_tower.load_state_dict(whisper.get_encoder().state_dict(), strict=True)
        del whisper

    if len(tokenizer) > config.text_config.vocab_size:
        # The new placeholder rows never reach the LM (tower features replace them), so their init is irrelevant.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.tie_weights()
    _sync_special_tokens(model, tokenizer, args.template)
    if args.dtype not in ("auto", "float32"):
        model.to(torch_dtype(args.dtype))
    return model, processor


def _sync_special_tokens(model: TinyLlavaForConditionalGeneration, tokenizer, template: str | None) -> None:
    """Make the model's configs agree with the tokenizer on pad, and stop generation at the template's eos."""
    model.config.text_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _add_template_eos(model.generation_config, tokenizer, template)


def _add_template_eos(generation: GenerationConfig, tokenizer, template: str | None) -> None:
    """Stop generation at the tokenizer's eos and at the template's end-of-answer token, keeping the stops it has."""
    eos = generation.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    for token_id in [tokenizer.eos_token_id, *_template_eos_ids(tokenizer, template)]:
        if token_id is not None and token_id not in eos:
            eos.append(token_id)
    generation.eos_token_id = eos[0] if len(eos) == 1 else eos


def quantization_config_for(args: ModelArguments) -> BitsAndBytesConfig | None:
    """bitsandbytes settings for `tune_llm=qlora`: the LM's linear layers only, towers/connectors/lm_head untouched."""
    if args.tune_llm != "qlora":
        return None
    if not torch.cuda.is_available() and importlib.util.find_spec("kernels") is None:
        logger.info(
            "QLoRA on CPU: bitsandbytes' optional fast 4-bit CPU kernel comes from the `kernels` package (not "
            "installed), so the 4-bit layers use its slower built-in path."
        )
    skip = list(NON_LLM_MODULES)
    if args.quant_bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    compute = torch.float32 if args.dtype in ("auto", "float32") else torch_dtype(args.dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        llm_int8_skip_modules=skip,
    )


def load_pretrained(
    path: str | Path, args: ModelArguments
) -> tuple[TinyLlavaForConditionalGeneration, TinyLlavaProcessor]:
    """Load a saved TinyLLaVA checkpoint (quantised for qlora) and its processor, with template/aspect overrides."""
    kwargs = {"dtype": torch_dtype(args.dtype)}
    if args.attn_implementation is not None:
        kwargs["attn_implementation"] = args.attn_implementation
    quantization = quantization_config_for(args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    processor = AutoProcessor.from_pretrained(path)
    if args.template is not None:
        # e.g. a pretrain-stage checkpoint (pretrain template) finetuned with its LM's conversation template.
        processor.chat_template = with_default_template(processor.chat_template, args.template)
        _sync_special_tokens(model, processor.tokenizer, args.template)
    if args.image_aspect_ratio is not None:
        processor.image_aspect_ratio = args.image_aspect_ratio
    return model, processor


def load_training_start(
    args: ModelArguments, base_model_dir: str | Path | None = None, is_main_process: bool = True
) -> tuple[TinyLlavaForConditionalGeneration, TinyLlavaProcessor]:
    """The model and processor a training run starts from.

    LoRA adapters must name a base checkpoint on disk (PEFT records its path, and `merge-lora` reloads it), and QLoRA
    quantises while loading, so with `tune_llm` lora/qlora a model built from parts is first saved to
    `base_model_dir` (by the main process; call under `main_process_first`) and, for qlora, reloaded from there.
    """
    if args.model_name_or_path is not None:
        return load_pretrained(args.model_name_or_path, args)
    model, processor = build_from_parts(args)
    if not args.uses_lora:
        return model, processor
    if base_model_dir is None:
        raise ValueError("LoRA on a model built from parts needs a base_model_dir to save the base checkpoint in.")
    base_model_dir = Path(base_model_dir).resolve()
    if is_main_process:
        model.save_pretrained(base_model_dir)
        processor.save_pretrained(base_model_dir)
        logger.info("Saved the base model for the LoRA adapter to %s", base_model_dir)
    if args.tune_llm == "qlora":
        del model
        return load_pretrained(base_model_dir, _without_template(args))
    # PEFT writes this path into adapter_config.json as the adapter's base model.
    model.config._name_or_path = str(base_model_dir)
    model.name_or_path = str(base_model_dir)
    return model, processor


def _without_template(args: ModelArguments) -> ModelArguments:
    """`args` for reloading a base checkpoint that already carries the template and aspect ratio."""
    reload_args = copy.copy(args)
    reload_args.template = None
    reload_args.image_aspect_ratio = None
    reload_args.dtype = "float32" if args.dtype == "auto" else args.dtype
    return reload_args


def build_checkpoint(args: ModelArguments, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Build a stage-0 model from `args`' parts (`build_from_parts`, exactly what a recipe's first stage starts from)
    and save it, with its processor, remote code and model card, to `out_dir`, atomically.

    The folder loads with `from_pretrained(out_dir, trust_remote_code=True)`, so any trainer can start from it, stock
    `trl sft --model_name_or_path out_dir` included.
    """
    from ..files import atomic_output_dir, check_destination
    from ..hub import write_checkpoint_card

    out_dir = Path(out_dir)
    check_destination(out_dir, overwrite)  # before the parts are loaded
    model, processor = build_from_parts(args)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    llm = args.llm if args.llm_gguf_file is None else f"{args.llm}/{args.llm_gguf_file}"
    parts = [llm, args.vision_tower, *(p for p in (args.vision_tower_aux, args.audio_tower) if p is not None)]
    write_checkpoint_card(
        out_dir,
        f"Built by `tinyllava-hf build` from the parts {' + '.join(map(str, parts))}, with a freshly initialised "
        f"{args.connector} connector and the `{args.template}` chat template: untrained, a stage-0 "
        "checkpoint to train from.",
        tags=["untrained"],
    )
    logger.info("Built %s from parts", out_dir)
    return out_dir


# Where `save_pretrained` keeps a processor's templates (transformers >= 4.50): the default one and the named ones.
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATES_DIR = "additional_chat_templates"


def set_default_template(model_dir: str | Path, name: str) -> list[str]:
    """Make `name` the default chat template of the checkpoint in `model_dir`, in place; returns the template names
    the folder then holds (every named template is kept, and every upstream one is added when missing).

    This is `load_pretrained`'s `template` override made permanent, for trainers that just load the folder (stock
    `trl sft` between the pretrain and finetune stages). The template's end-of-answer token joins
    `generation_config.json`'s eos ids, as when building with that template. Each file is replaced with one
    `os.replace`, named templates before the default, so a reader never sees a default that is not also listed.

    Raises:
        ValueError: an unknown template name, or a folder whose templates are not saved as `.jinja` files.
    """
    import os
    import tempfile

    model_dir = Path(model_dir)
    default = model_dir / CHAT_TEMPLATE_FILE
    if not default.is_file():
        raise ValueError(
            f"{model_dir} has no {CHAT_TEMPLATE_FILE}: give a checkpoint folder saved by this package (or re-save its "
            "processor with processor.save_pretrained, which writes the templates as .jinja files)"
        )
    current = {"default": default.read_text(encoding="utf-8")}
    for path in sorted((model_dir / CHAT_TEMPLATES_DIR).glob("*.jinja")):
        current[path.stem] = path.read_text(encoding="utf-8")
    templates = with_default_template(current, name)

    def replace(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)

    for key, text in templates.items():
        if key != "default" and current.get(key) != text:
            replace(model_dir / CHAT_TEMPLATES_DIR / f"{key}.jinja", text)
    if (model_dir / "generation_config.json").is_file() and (model_dir / "tokenizer_config.json").is_file():
        generation = GenerationConfig.from_pretrained(model_dir)
        before = generation.eos_token_id
        _add_template_eos(generation, AutoTokenizer.from_pretrained(model_dir), name)
        if generation.eos_token_id != before:
            replace(model_dir / "generation_config.json", generation.to_json_string(use_diff=True))
    replace(default, templates["default"])
    return sorted(key for key in templates if key != "default")
