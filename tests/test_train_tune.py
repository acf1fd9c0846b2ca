"""Tune modes: for each mode, exactly which parameters train (and, for qlora, which layers are quantised)."""

import copy
import re

import pytest
import torch
from torch import nn

from tinyllava_hf.train.arguments import ModelArguments
from tinyllava_hf.train.build import build_from_parts, load_training_start
from tinyllava_hf.train.tune import apply_tune_modes, lora_target_regex, trainable_parameter_names


def make_args(parts, audio: bool = False, **modes) -> ModelArguments:
    extra = dict(audio_tower=str(parts["whisper"]), audio_downsample_factor=5) if audio else {}
    return ModelArguments(
        llm=str(parts["llm"]), vision_tower=str(parts["siglip"]), template="llama", lora_r=4, **extra, **modes
    )


@pytest.fixture(scope="module")
def base_model(parts):
    """One model (with an audio tower) built from parts; tests tune deep copies of it."""
    model, _ = build_from_parts(make_args(parts, audio=True))
    return model


def tuned(base_model, parts, **modes):
    args = make_args(parts, audio=True, **modes)
    return apply_tune_modes(copy.deepcopy(base_model), args)


def names_under(model: nn.Module, *prefixes: str) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.startswith(prefixes)}


def test_pretrain_modes_train_only_the_connectors(base_model, parts):
    model = tuned(base_model, parts, tune_llm="frozen", tune_vision_tower="frozen", tune_connector="full")
    assert trainable_parameter_names(model) == names_under(model, "model.connector.", "model.audio_connector.")


def test_full_llm_trains_decoder_embeddings_and_head(base_model, parts):
    model = tuned(base_model, parts, tune_llm="full", tune_connector="frozen", tune_audio_connector="frozen")
    expected = names_under(model, "model.language_model.", "lm_head.")
    assert trainable_parameter_names(model) == expected
    assert "model.language_model.embed_tokens.weight" in expected and "lm_head.weight" in expected


def test_vision_tower_full(base_model, parts):
    model = tuned(base_model, parts, tune_llm="frozen", tune_vision_tower="full", tune_audio_connector="frozen")
    assert trainable_parameter_names(model) == names_under(model, "model.vision_tower.", "model.connector.")


@pytest.mark.parametrize(("k", "layers"), [(1, [1]), (2, [0, 1])])
def test_vision_tower_partial_trains_the_deepest_layers_that_feed_the_connector(base_model, parts, k, layers):
    # 3 encoder layers, features from hidden_states[-2] = the output of layer 1: layer 2 never gets a gradient.
    model = tuned(
        base_model,
        parts,
        tune_llm="frozen",
        tune_vision_tower="partial",
        vision_tower_train_layers=k,
        tune_connector="frozen",
        tune_audio_connector="frozen",
    )
    prefixes = tuple(f"model.vision_tower.encoder.layers.{i}." for i in layers)
    assert trainable_parameter_names(model) == names_under(model, *prefixes)


def test_vision_tower_partial_cannot_exceed_the_used_layers(base_model, parts):
    with pytest.raises(ValueError, match="only 2 feed the connector"):
        tuned(base_model, parts, tune_vision_tower="partial", vision_tower_train_layers=3)


def test_audio_tower_and_audio_connector_modes(base_model, parts):
    audio_only = dict(tune_llm="frozen", tune_connector="frozen", tune_audio_connector="full")
    model = tuned(base_model, parts, tune_audio_tower="full", **audio_only)
    assert trainable_parameter_names(model) == names_under(model, "model.audio_tower.", "model.audio_connector.")
    model = tuned(base_model, parts, **audio_only)
    assert trainable_parameter_names(model) == names_under(model, "model.audio_connector.")


def test_everything_frozen_is_an_error(base_model, parts):
    with pytest.raises(ValueError, match="nothing would train"):
        tuned(base_model, parts, tune_llm="frozen", tune_connector="frozen", tune_audio_connector="frozen")


def lora_layer_names(model: nn.Module) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {name for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def assert_lora_only_in_lm_with_full_connector(model: nn.Module, lm_linears: int) -> None:
    lora_layers = lora_layer_names(model)
    assert len(lora_layers) == lm_linears
    assert all(name.startswith("base_model.model.model.language_model.layers.") for name in lora_layers)
    trainable = trainable_parameter_names(model)
    lora_params = {n for n in trainable if ".lora_A." in n or ".lora_B." in n}
    assert lora_params and all(".language_model." in n for n in lora_params)
    # The connector trains fully as a PEFT modules_to_save copy (saved with the adapter); nothing else trains.
    connector = {n for n in trainable if n.startswith("base_model.model.model.connector.modules_to_save.default.")}
    original = {n for n, _ in model.named_parameters() if n.startswith("base_model.model.model.connector.original")}
    assert len(connector) == len(original) == 4
    assert trainable == lora_params | connector


def test_lora_adapts_only_the_lm_and_trains_the_connector_fully(base_model, parts):
    model = tuned(base_model, parts, tune_llm="lora", tune_audio_connector="frozen")
    # 2 decoder layers x (q, k, v, o, gate, up, down); the towers' q/k/v/out projections are untouched.
    assert_lora_only_in_lm_with_full_connector(model, lm_linears=14)


def test_lora_target_modules_restrict_the_lm_layers(base_model, parts):
    model = tuned(base_model, parts, tune_llm="lora", lora_target_modules=["q_proj", "v_proj"])
    assert {name.rsplit(".", 1)[-1] for name in lora_layer_names(model)} == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match=r"\['fc1'\] are not linear layers of the LM"):
        lora_target_regex(base_model, ["fc1"])  # a vision-tower layer name


def test_lora_target_regex_never_matches_towers(base_model):
    pattern = re.compile(lora_target_regex(base_model))
    matched = {name for name, _ in base_model.named_modules() if pattern.fullmatch(name)}
    assert matched and all(name.startswith("model.language_model.layers.") for name in matched)
    assert not any(pattern.fullmatch(name) for name in ("model.vision_tower.encoder.layers.0.self_attn.q_proj",))


@pytest.mark.parametrize(("bits", "layer_class"), [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_qlora_quantises_only_the_lm_layers(parts, tmp_path, bits, layer_class):
    import bitsandbytes as bnb

    args = make_args(parts, tune_llm="qlora", quant_bits=bits)
    model, _ = load_training_start(args, base_model_dir=tmp_path / "base")
    assert (tmp_path / "base" / "config.json").is_file()  # the full-precision base the adapter will refer to
    quantized_type = getattr(bnb.nn, layer_class)
    quantized = {name for name, module in model.named_modules() if isinstance(module, quantized_type)}
    lm_linears = {
        name
        for name, module in model.named_modules()
        if name.startswith("model.language_model.layers.") and isinstance(module, nn.Linear)
    }
    assert quantized == lm_linears and len(quantized) == 14
    if bits == 4:
        weight = model.model.language_model.layers[0].self_attn.q_proj.weight
        assert weight.quant_type == "nf4" and weight.dtype == torch.uint8
    # Towers, connector and lm_head stay ordinary full-precision layers.
    for prefix in ("model.vision_tower", "model.connector", "lm_head"):
        for name, module in model.named_modules():
            if name.startswith(prefix):
                assert not isinstance(module, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt), name
    assert model.lm_head.weight.dtype == torch.float32

    peft_model = apply_tune_modes(model, args)
    assert_lora_only_in_lm_with_full_connector(peft_model, lm_linears=14)


def test_quantised_model_needs_qlora_mode(parts, tmp_path):
    model, _ = load_training_start(make_args(parts, tune_llm="qlora"), base_model_dir=tmp_path)
    with pytest.raises(ValueError, match="only be trained with tune_llm=qlora"):
        apply_tune_modes(model, make_args(parts, tune_llm="lora"))


def test_argument_validation():
    with pytest.raises(ValueError, match="needs --vision_tower_train_layers"):
        ModelArguments(llm="a", vision_tower="b", template="llama", tune_vision_tower="partial")
    with pytest.raises(ValueError, match="Give --model_name_or_path"):
        ModelArguments(llm="a", template="llama")
    with pytest.raises(ValueError, match="needs --template"):
        ModelArguments(llm="a", vision_tower="b")
    with pytest.raises(ValueError, match="excludes"):
        ModelArguments(model_name_or_path="m", llm="a")
