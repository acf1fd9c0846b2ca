"""Tune modes: which parameters of a TinyLLaVA model train, per part.

    LM            frozen | full | lora | qlora   (qlora: LoRA on a 4-bit NF4 / 8-bit bitsandbytes LM, see build.py)
    vision tower  frozen | full | partial        (partial: the k deepest layers that feed the connector)
    connector     frozen | full
    audio tower   frozen | full
    audio conn.   frozen | full

`full` on the LM covers its decoder, input embeddings and `lm_head`. LoRA adapts only linear layers inside
`model.language_model` (the towers have `q_proj`/`k_proj`/`v_proj` too, so targets are an anchored regex over full
module names, never bare suffixes). Under LoRA, every other part that trains (connector, tower layers) is listed in
PEFT's `modules_to_save`, so it trains fully and is saved with the adapter.
"""

import logging
import re

import torch
from torch import nn

from ..modeling_tinyllava import TinyLlavaForConditionalGeneration
from .arguments import ModelArguments

__all__ = ["apply_tune_modes", "lora_config_for", "lora_target_regex", "tower_layers", "trainable_parameter_names"]

logger = logging.getLogger(__name__)

LM_PREFIX = "model.language_model."


def tower_layers(tower: nn.Module) -> nn.ModuleList:
    """The encoder layer list of a vision tower (CLIP/SigLIP `encoder.layers`, DINOv2 `encoder.layer`)."""
    num_layers = tower.config.num_hidden_layers
    for _, module in tower.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise ValueError(f"Cannot find the {num_layers} encoder layers of {type(tower).__name__}.")


def _partial_layer_indices(num_layers: int, feature_layers: list[int], k: int) -> list[int]:
    """Indices of the k layers ending at the deepest one whose output the connector reads.

    `hidden_states[i]` is the output of layer `i - 1` (`hidden_states[0]` is the embeddings), so with the usual
    `vision_feature_layer=-2` the last layer never gets a gradient and "the last k layers" means the k before it.
    """
    deepest = max(layer % (num_layers + 1) for layer in feature_layers) - 1
    if k > deepest + 1:
        raise ValueError(f"Cannot train {k} vision tower layers: only {deepest + 1} feed the connector.")
    return list(range(deepest - k + 1, deepest + 1))


def _trainable_module_names(model: TinyLlavaForConditionalGeneration, args: ModelArguments) -> list[str]:
    """Full names of the non-LM modules that train completely."""
    inner = model.model
    names: list[str] = []
    towers = [("model.vision_tower", inner.vision_tower)]
    if inner.vision_tower_aux is not None:
        towers.append(("model.vision_tower_aux", inner.vision_tower_aux))
    for prefix, tower in towers:
        if args.tune_vision_tower == "full":
            names.append(prefix)
        elif args.tune_vision_tower == "partial":
            layers = tower_layers(tower)
            layer_prefix = next(name for name, module in tower.named_modules() if module is layers)
            indices = _partial_layer_indices(
                len(layers), model.config.vision_feature_layers, args.vision_tower_train_layers
            )
            names += [f"{prefix}.{layer_prefix}.{i}" for i in indices]
    if args.tune_connector == "full":
        names.append("model.connector")
    if inner.audio_tower is not None:
        if args.tune_audio_tower == "full":
            names.append("model.audio_tower")
        if args.tune_audio_connector == "full":
            names.append("model.audio_connector")
    return names


def lora_target_regex(model: nn.Module, target_modules: list[str] | None = None) -> str:
    """An anchored regex matching the LM's linear layers (all of them, or those named in `target_modules`).

    PEFT full-matches a string `target_modules` against each module's full name, so towers and connectors, whose
    names do not start with `model.language_model.`, can never be adapted even when they share leaf names.
    """
    leaf_names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if name.startswith(LM_PREFIX) and isinstance(module, nn.Linear)
        }
    )
    if target_modules:
        unknown = sorted(set(target_modules) - set(leaf_names))
        if unknown:
            raise ValueError(f"lora_target_modules {unknown} are not linear layers of the LM; it has {leaf_names}.")
        leaf_names = sorted(set(target_modules))
    if not leaf_names:
        raise ValueError("The LM has no linear layers to put LoRA adapters on.")
    return rf"{re.escape(LM_PREFIX)}.*\.({'|'.join(map(re.escape, leaf_names))})"


def lora_config_for(model: TinyLlavaForConditionalGeneration, args: ModelArguments):
    """The PEFT `LoraConfig` of `args` for `model`: LM linears adapted, trainable non-LM modules saved in full."""
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=lora_target_regex(model, args.lora_target_modules),
        # PEFT matches modules_to_save by string suffix; full names keep `model.connector` from also catching
        # `model.audio_connector`.
        modules_to_save=_trainable_module_names(model, args) or None,
        task_type="CAUSAL_LM",
    )


def apply_tune_modes(model: TinyLlavaForConditionalGeneration, args: ModelArguments) -> nn.Module:
    """Set `requires_grad` per `args`' tune modes; with lora/qlora return the `PeftModel` wrapping `model`.

    Raises:
        ValueError: qlora on a model that was not loaded quantised, lora on a quantised one, or nothing to train.
    """
    quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    if args.tune_llm == "qlora" and not quantized:
        raise ValueError("tune_llm=qlora needs a model loaded with a bitsandbytes quantization_config (see build.py).")
    if args.tune_llm != "qlora" and quantized:
        raise ValueError(f"A quantised model can only be trained with tune_llm=qlora, not {args.tune_llm!r}.")

    model.requires_grad_(False)
    if args.uses_lora:
        from peft import get_peft_model

        if quantized:
            _prepare_quantized(model)
        peft_model = get_peft_model(model, lora_config_for(model, args))
        _check_trainable(peft_model)
        return peft_model

    if args.tune_llm == "full":
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    for name in _trainable_module_names(model, args):
        model.get_submodule(name).requires_grad_(True)
    _check_trainable(model)
    return model


def _prepare_quantized(model: nn.Module) -> None:
    """What PEFT's `prepare_model_for_kbit_training` does, minus its fp32 upcast of every non-quantised weight.

    Upcasting would silently turn a bf16 run's towers into fp32; layer norms are already kept in fp32 by the model
    when it matters. Gradient checkpointing needs the inputs to require grad for the adapters to receive any.
    """
    model.enable_input_require_grads()


def _check_trainable(model: nn.Module) -> None:
    names = trainable_parameter_names(model)
    if not names:
        raise ValueError("Every part is frozen: nothing would train. Set at least one tune_* mode to full/lora.")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))


def trainable_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that require grad."""
    return {name for name, param in model.named_parameters() if param.requires_grad}


def restore_trainable_dtypes(model: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """Put trainable non-LoRA parameters back in the dtypes recorded before `SFTTrainer.__init__`.

    For quantised models TRL casts every trainable parameter to bf16 (the QLoRA paper's advice for adapters). That is
    right for the LoRA matrices but would leave a connector or tower layer in bf16 while the rest of its module runs
    in fp32, so those get their dtype back.
    """
    for name, param in model.named_parameters():
        if name in dtypes and "lora_" not in name and param.dtype != dtypes[name]:
            param.data = param.data.to(dtypes[name])
