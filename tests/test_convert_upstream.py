"""Upstream TinyLLaVA Factory checkpoints -> tinyllava-hf: parity with upstream's own recorded outputs.

`tests/fixtures/upstream/<case>/` holds, per case, a checkpoint exactly as upstream TinyLLaVA Factory (53f12c7) saved
it (`checkpoint/`), the image processor of the stand-in vision "hub repo" it names (`tiny-random/<tower>/`), the input
images, and what upstream's own code produced from them (`expected/`: fp32 logits of the train and eval prompts, pixel
values, `upstream_outputs.json` with losses and greedy ids, `resolved_configs.json`). `samples.json` holds the
conversations, prompt strings and upstream's chunk-tokenized ids (`-200` = image) and labels.

Each case is converted once (module fixture); the converted folder is then used exactly as a user would: through
`AutoProcessor.from_pretrained(dst).apply_chat_template(...)` and `AutoModelForImageTextToText.from_pretrained(dst)`.
"""

import json
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

import tinyllava_hf  # noqa: F401  (registers the tinyllava Auto classes)
from tinyllava_hf import TinyLlavaConfig, TinyLlavaForConditionalGeneration
from tinyllava_hf.chat_templates import get_chat_template, list_chat_templates, upstream_conversation_to_messages
from tinyllava_hf.cli import main as cli
from tinyllava_hf.constants import IGNORE_INDEX
from tinyllava_hf.convert import ConversionError, convert_upstream
from tinyllava_hf.convert.upstream import (
    TEXT_CONFIG_DEFAULTS_440,
    VISION_CONFIG_DEFAULTS_440,
    is_config_loadable_by_transformers,
    read_state_dict,
    resolve_sub_config,
)

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"
IMAGE_TOKEN_INDEX = -200  # upstream marks <image> in input ids with this id
# case -> (chat template upstream used, Q-Former heads of the tiny stand-in BERT (not stored upstream), whether
# `<image>` needs a new LM vocabulary row: the llama tokenizers fill the LM vocabulary, phi/qwen2 have padding rows).
CASES = {
    "case1_tinyllama_siglip_mlp2x_gelu": ("llama", None, True),
    "case2_phi_clip_mlp2x_gelu": ("phi", None, False),
    "case3_qwen2_siglip_resampler": ("qwen2_base", None, False),
    "case4_tinyllama_clip_qformer": ("llama", 4, True),
}
LOGIT_ATOL = 1e-4  # fp32, different transformers version and kernels than the recording (README: <= 1e-4)
LOSS_ATOL = 1e-5

# transformers-4.40 PretrainedConfig fields that describe generation, labels or bookkeeping, not the network.
GENERIC_CONFIG_KEYS = {
    "_name_or_path", "add_cross_attention", "architectures", "bad_words_ids", "begin_suppress_tokens",
    "chunk_size_feed_forward", "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty",
    "do_sample", "early_stopping", "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty",
    "finetuning_task", "forced_bos_token_id", "forced_eos_token_id", "id2label", "is_decoder", "is_encoder_decoder",
    "label2id", "length_penalty", "max_length", "min_length", "no_repeat_ngram_size", "num_beam_groups", "num_beams",
    "num_return_sequences", "output_attentions", "output_hidden_states", "output_scores", "prefix", "problem_type",
    "pruned_heads", "remove_invalid_values", "repetition_penalty", "return_dict", "return_dict_in_generate",
    "sep_token_id", "suppress_tokens", "task_specific_params", "temperature", "tf_legacy_loss", "tie_encoder_decoder",
    "tokenizer_class", "top_k", "top_p", "torch_dtype", "torchscript", "transformers_version", "typical_p",
    "use_bfloat16", "model_name_or_path", "model_name_or_path2",
}  # fmt: skip
# Text-model fields every 4.40 config carried; a transformers-5 vision config no longer has them (they never mattered).
VISION_TEXT_ONLY_KEYS = {"tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"}


# ------------------------------------------------------------------------------------------------------- helpers


def _samples(case: str) -> list[dict]:
    return json.loads((FIXTURES / case / "samples.json").read_text())["samples"]


def _outputs(case: str) -> list[dict]:
    return json.loads((FIXTURES / case / "expected" / "upstream_outputs.json").read_text())["samples"]


def _expected(case: str, index: int, kind: str) -> torch.Tensor:
    return torch.from_numpy(np.load(FIXTURES / case / "expected" / f"sample{index}.{kind}.npy"))


def _image(case: str, index: int) -> Image.Image:
    return Image.open(FIXTURES / case / "images" / f"image{index}.png")


def _with_image(messages: list[dict], image: Image.Image) -> list[dict]:
    """Attach the PIL image to the (single) image block, as `apply_chat_template` expects it."""
    for message in messages:
        for block in message["content"]:
            if block["type"] == "image":
                block["image"] = image
    return messages


def _collapse(ids: list[int], labels: list[int] | None, token_id: int) -> tuple[list[int], list[int] | None]:
    """Upstream's view of our sequence: each run of `<image>` placeholders becomes one -200 (label -100)."""
    out_ids, out_labels = [], []
    for position, token in enumerate(ids):
        if token == token_id:
            if out_ids and out_ids[-1] == IMAGE_TOKEN_INDEX:
                continue
            out_ids.append(IMAGE_TOKEN_INDEX)
            out_labels.append(IGNORE_INDEX)
        else:
            out_ids.append(token)
            out_labels.append(labels[position] if labels is not None else 0)
    return out_ids, (out_labels if labels is not None else None)


def _convert(case: str, dst: Path, **kwargs) -> Path:
    _, heads, _ = CASES[case]
    return convert_upstream(FIXTURES / case / "checkpoint", dst, qformer_heads=heads, **kwargs)


@pytest.fixture(scope="module")
def converted_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("converted")


@cache
def _load(folder: str):
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return processor, model


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, converted_root: Path):
    """(case name, converted folder, processor, model)."""
    name = request.param
    folder = converted_root / name
    if not folder.exists():
        _convert(name, folder)
    processor, model = _load(str(folder))
    return name, folder, processor, model


def _eval_inputs(processor, case_name: str, index: int, sample: dict):
    # Built like upstream's run_tiny_llava.py: one user turn "<image>\n" + query, no answer.
    conversation = [{"from": "human", "value": "<image>\n" + sample["query"]}, {"from": "gpt", "value": None}]
    messages = _with_image(upstream_conversation_to_messages(conversation), _image(case_name, index))
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    return text, inputs


def _train_inputs(processor, case_name: str, index: int, sample: dict):
    messages = _with_image(upstream_conversation_to_messages(sample["conversations"]), _image(case_name, index))
    inputs = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    # Labels from our assistant mask: the answers (and their eos text) are trained, everything else is not.
    labels = torch.where(inputs.pop("assistant_masks").bool(), inputs["input_ids"], IGNORE_INDEX)
    return inputs, labels


# ------------------------------------------------------------------------------------------------- config parity


def _config_value(config, key: str):
    """A 4.40 config field's value in a transformers-5 config (rope settings moved into `rope_parameters`)."""
    if key in ("rope_theta", "partial_rotary_factor"):
        return config.rope_parameters[key]
    if key == "rope_scaling":
        return None if config.rope_parameters.get("rope_type", "default") == "default" else config.rope_parameters
    return getattr(config, key)


@pytest.mark.parametrize("name", list(CASES))
def test_sub_configs_resolve_like_transformers_440(name: str):
    """Every network-shaping field equals what upstream's live objects held under transformers 4.40."""
    upstream = json.loads((FIXTURES / name / "checkpoint" / "config.json").read_text())
    expected = json.loads((FIXTURES / name / "expected" / "resolved_configs.json").read_text())
    for field, defaults in (("text_config", TEXT_CONFIG_DEFAULTS_440), ("vision_config", VISION_CONFIG_DEFAULTS_440)):
        resolved = resolve_sub_config(upstream[field], defaults, field)
        compared = 0
        for key, value in expected[field].items():
            if key in GENERIC_CONFIG_KEYS or (field == "vision_config" and key in VISION_TEXT_ONLY_KEYS):
                continue
            if key == "sliding_window" and not resolved.use_sliding_window:
                continue  # unused without sliding attention; transformers 5 stores None then
            assert _config_value(resolved, key) == value, f"{name} {field}.{key}"
            compared += 1
        assert compared >= 10


def test_missing_keys_take_440_defaults_not_current_ones():
    """A diff omitting rope_theta / eps / kv heads gets the 4.40 values, spelled out explicitly."""
    qwen2 = resolve_sub_config({"model_type": "qwen2", "num_attention_heads": 4}, TEXT_CONFIG_DEFAULTS_440, "text")
    assert qwen2.rope_parameters["rope_theta"] == 10000.0
    assert qwen2.num_key_value_heads == 32  # 4.40's Qwen2Config default, not "same as heads"
    llama = resolve_sub_config({"model_type": "llama", "num_attention_heads": 4}, TEXT_CONFIG_DEFAULTS_440, "text")
    assert llama.num_key_value_heads == 4 and llama.bos_token_id == 1 and llama.eos_token_id == 2
    assert llama.tie_word_embeddings is False and llama.rms_norm_eps == 1e-6
    phi = resolve_sub_config(
        {"model_type": "phi", "auto_map": {"AutoConfig": "microsoft/phi-2--configuration_phi.PhiConfig"}},
        TEXT_CONFIG_DEFAULTS_440,
        "text",
    )
    assert phi.rope_parameters["partial_rotary_factor"] == 0.5 and not hasattr(phi, "auto_map")
    # Gemma under 4.40: the tanh GELU unless hidden_activation says otherwise.
    gemma = resolve_sub_config({"model_type": "gemma", "hidden_act": "gelu"}, TEXT_CONFIG_DEFAULTS_440, "text")
    assert gemma.hidden_act == "gelu_pytorch_tanh"
    siglip = resolve_sub_config({"model_type": "siglip_vision_model"}, VISION_CONFIG_DEFAULTS_440, "vision")
    assert siglip.vision_use_head is True and siglip.layer_norm_eps == 1e-6


def test_converted_config(case):
    name, folder, processor, model = case
    template, heads, past_vocab = CASES[name]
    config = model.config
    upstream = json.loads((FIXTURES / name / "checkpoint" / "config.json").read_text())
    assert config.vision_feature_select_strategy == "default"  # upstream 'patch'
    assert config.vision_feature_layer == -2
    assert config.num_image_tokens == _outputs(name)[0]["num_image_tokens"]
    assert processor.num_image_tokens == config.num_image_tokens
    assert processor.image_aspect_ratio == upstream["image_aspect_ratio"]
    assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert config.text_config.vocab_size == upstream["text_config"]["vocab_size"]
    # Llama/Gemma tokenizers fill the vocabulary: <image> then lies past it (it is never looked up).
    assert (config.image_token_id >= config.text_config.vocab_size) == past_vocab
    saved = json.loads((folder / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForImageTextToText"] == "modeling_tinyllava.TinyLlavaForConditionalGeneration"
    assert (folder / "modeling_tinyllava.py").is_file()
    assert json.loads((folder / "tinyllava_conversion.json").read_text())["chat_template"] == template
    if heads is not None:
        assert config.connector_num_heads == heads and config.qformer_hidden_size == 48
        assert config.connector_num_layers == 2 and config.qformer_intermediate_size == 80


# ------------------------------------------------------------------------------------------- processor parity


def test_prompts_ids_labels_and_pixels(case):
    """Same prompt text, same ids once placeholders are collapsed, same labels, same pixel values."""
    name, _, processor, model = case
    token_id = model.config.image_token_id
    for index, sample in enumerate(_samples(name)):
        text, inputs = _eval_inputs(processor, name, index, sample)
        # Upstream's prompt text has no BOS (its tokenizer adds one); our templates write it themselves, where the
        # tokenizer has a BOS distinct from its EOS, so the ids below match upstream's BOS included.
        tokenizer = processor.tokenizer
        bos = tokenizer.bos_token if tokenizer.bos_token and tokenizer.bos_token != tokenizer.eos_token else ""
        assert text == bos + sample["eval_prompt"]
        ids = inputs["input_ids"][0].tolist()
        assert _collapse(ids, None, token_id)[0] == sample["eval_input_ids"]
        assert ids.count(token_id) == model.config.num_image_tokens
        # HF PIL image processors reproduce upstream's (4.40, PIL) preprocessing exactly.
        torch.testing.assert_close(inputs["pixel_values"], _expected(name, index, "pixel_values"), atol=1e-6, rtol=0)

        train, labels = _train_inputs(processor, name, index, sample)
        collapsed_ids, collapsed_labels = _collapse(train["input_ids"][0].tolist(), labels[0].tolist(), token_id)
        assert collapsed_ids == sample["train_input_ids"]
        assert collapsed_labels == sample["train_labels"]
        assert len(train["input_ids"][0]) == _outputs(name)[index]["expanded_length"]


# ----------------------------------------------------------------------------------------------- model parity


def test_logits_and_loss(case):
    """fp32 logits of the train and eval prompts within 1e-4 of upstream's; the same loss."""
    name, _, processor, model = case
    for index, sample in enumerate(_samples(name)):
        upstream_loss = _outputs(name)[index]["loss"]
        train, labels = _train_inputs(processor, name, index, sample)
        with torch.no_grad():
            out = model(**train, labels=labels)
        expected = _expected(name, index, "logits")
        vocab = expected.shape[-1]
        logits = out.logits[..., :vocab]
        assert (logits - expected).abs().max().item() <= LOGIT_ATOL
        # The same loss function on the upstream vocabulary gives upstream's loss.
        loss_on_upstream_vocab = model.loss_function(logits=logits, labels=labels, vocab_size=vocab)
        assert abs(loss_on_upstream_vocab.item() - upstream_loss) <= LOSS_ATOL
        # Logits and loss over all columns are upstream's: `<image>` adds no row (see test_converted_config).
        assert out.logits.shape[-1] == vocab
        assert abs(out.loss.item() - upstream_loss) <= LOSS_ATOL

        _, inputs = _eval_inputs(processor, name, index, sample)
        with torch.no_grad():
            prompt_logits = model(**inputs).logits[..., :vocab]
        assert (prompt_logits - _expected(name, index, "prompt_logits")).abs().max().item() <= LOGIT_ATOL


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation(case, use_cache: bool):
    """upstream's 8 greedy tokens (it generated with the cache); without the cache on one sample to keep this fast."""
    name, _, processor, model = case
    samples = _samples(name) if use_cache else _samples(name)[:1]
    for index, sample in enumerate(samples):
        _, inputs = _eval_inputs(processor, name, index, sample)
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=use_cache)
        assert generated[0, inputs["input_ids"].shape[1] :].tolist() == _outputs(name)[index]["generated_ids"]


# ------------------------------------------------------------------------------------- formats and local lookups


def _checkpoint_copy(case_name: str, root: Path) -> Path:
    """A writable copy of a fixture case (checkpoint + stand-ins), so that tests can alter it."""
    case_copy = root / case_name
    shutil.copytree(FIXTURES / case_name, case_copy, ignore=shutil.ignore_patterns("expected", "images"))
    return case_copy / "checkpoint"


def test_pytorch_bin_checkpoint_converts_to_the_same_weights(tmp_path: Path, converted_root: Path):
    name = "case1_tinyllama_siglip_mlp2x_gelu"
    src = _checkpoint_copy(name, tmp_path)
    weights = load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    torch.save(weights, src / "pytorch_model.bin")
    dst = convert_upstream(src, tmp_path / "out")
    reference = converted_root / name
    if not reference.exists():
        _convert(name, reference)
    assert read_state_dict(dst).keys() == read_state_dict(reference).keys()
    for key, tensor in read_state_dict(dst).items():
        assert torch.equal(tensor, read_state_dict(reference)[key]), key


def test_image_processor_is_never_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src = _checkpoint_copy("case1_tinyllama_siglip_mlp2x_gelu", tmp_path)
    shutil.rmtree(src.parent / "tiny-random")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConversionError, match="never downloads"):
        convert_upstream(src, tmp_path / "out")
    # ...and an explicit folder works.
    explicit = tmp_path / "siglip"
    shutil.copytree(FIXTURES / "case1_tinyllama_siglip_mlp2x_gelu" / "tiny-random" / "siglip-tiny-random", explicit)
    assert convert_upstream(src, tmp_path / "out", image_processor=explicit).is_dir()


# --------------------------------------------------------------------------------- strictness and clear refusals


def _edit_config(src: Path, **changes) -> None:
    config = json.loads((src / "config.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    (src / "config.json").write_text(json.dumps(config))


def _assert_refused(src: Path, dst: Path, match: str, **kwargs) -> None:
    with pytest.raises(ConversionError, match=match):
        convert_upstream(src, dst, **kwargs)
    # Atomic: neither the destination nor a temporary folder is left behind.
    assert not dst.exists()
    assert not [path for path in dst.parent.iterdir() if path.name.startswith(f".{dst.name}.")]


def test_unconsumed_and_missing_keys_are_named(tmp_path: Path):
    src = _checkpoint_copy("case1_tinyllama_siglip_mlp2x_gelu", tmp_path)
    weights = load_file(src / "model.safetensors")
    save_file({**weights, "language_model.value_head.weight": torch.zeros(2, 2)}, src / "model.safetensors")
    _assert_refused(src, tmp_path / "out", r"no conversion rule for key\(s\) 'language_model\.value_head\.weight'")
    # A key a rule renames, but to something the model does not have: named by its converted name.
    save_file({**weights, "connector._connector.3.weight": torch.zeros(2, 2)}, src / "model.safetensors")
    _assert_refused(src, tmp_path / "out", r"unexpected \['model\.connector\.layers\.3\.weight'\]")
    del weights["vision_tower._vision_tower.vision_model.post_layernorm.weight"]
    save_file(weights, src / "model.safetensors")
    _assert_refused(src, tmp_path / "out", r"missing \['model\.vision_tower\.post_layernorm\.weight'\]")
    weights["vision_tower._vision_tower.vision_model.post_layernorm.weight"] = torch.ones(7)
    save_file(weights, src / "model.safetensors")
    _assert_refused(src, tmp_path / "out", r"shape mismatch \['model\.vision_tower\.post_layernorm\.weight")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"text_config": {"model_type": "openelm"}}, r"text_config\.model_type='openelm': OpenELM"),
        ({"vision_config": {"model_type": "dinov2"}}, r"vision_config\.model_type='dinov2' is not supported"),
        ({"connector_type": "mof_mlp"}, r"MoF checkpoints"),
        ({"connector_type": "mlp2x_relu"}, r"connector_type='mlp2x_relu'"),
        ({"vision_feature_select_strategy": "cls"}, r"vision_feature_select_strategy='cls'"),
        ({"image_aspect_ratio": "anyres"}, r"image_aspect_ratio='anyres'"),
        ({"model_type": "llava"}, r"model_type='llava'"),
    ],
)
def test_unconvertible_configs_are_refused(tmp_path: Path, changes: dict, match: str):
    src = _checkpoint_copy("case1_tinyllama_siglip_mlp2x_gelu", tmp_path)
    _edit_config(src, **changes)
    _assert_refused(src, tmp_path / "out", match)


def test_existing_destination_needs_overwrite(tmp_path: Path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="already exists"):
        _convert("case1_tinyllama_siglip_mlp2x_gelu", dst)
    _convert("case1_tinyllama_siglip_mlp2x_gelu", dst, overwrite=True)
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").is_file()


def test_qformer_heads_must_divide_the_width(tmp_path: Path):
    src = FIXTURES / "case4_tinyllama_clip_qformer" / "checkpoint"
    _assert_refused(
        src, tmp_path / "out", r"qformer hidden size 48 is not divisible by qformer heads=5", qformer_heads=5
    )


# ---------------------------------------------------------------------------- Qwen2 checkpoints like Zhang199/...


def _parameters_to_bf16(module: torch.nn.Module) -> torch.nn.Module:
    """Cast parameters only: `.to(bfloat16)` would also round the rotary `inv_freq` buffer (loading keeps it fp32)."""
    for parameter in module.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    return module


def _qwen2_like_checkpoint(root: Path) -> tuple[Path, TinyLlavaForConditionalGeneration]:
    """A tiny checkpoint shaped like Zhang199/TinyLLaVA-Qwen2-0.5B-SigLIP / -Qwen2.5-3B-SigLIP.

    Their config.json says model_type "tinyllava" with no `auto_map` and no code files (so plain transformers cannot
    even build the config), stores a qwen2 text_config diff with tie_word_embeddings / rope_theta 1e6 /
    sliding_window / max_window_layers and torch_dtype, names its parts by hub id, and the 3B one is sharded
    (model.safetensors.index.json). Weights in bfloat16, the lm_head left out (tied).
    """
    tokenizer_dir = FIXTURES / "case3_qwen2_siglip_resampler" / "tokenizer"
    eos = 512  # <|endoftext|> of the qwen2-like fixture tokenizer
    text = dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], _name_or_path="Qwen/Qwen2-0.5B",
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, max_window_layers=24, rope_theta=1000000.0, sliding_window=512,
        use_sliding_window=False, tie_word_embeddings=True, torch_dtype="bfloat16", vocab_size=576,
        bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    vision = dict(
        model_type="siglip_vision_model", architectures=["SiglipVisionModel"], hidden_size=48, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
        model_name_or_path="google/siglip-so400m-patch14-384", model_name_or_path2="",
    )  # fmt: skip
    # The reference model is built from explicit configs (rms_norm_eps 1e-6 and rope_theta spelled out), not from the
    # converter's resolution, so a wrong default would show up in the logits.
    reference_config = TinyLlavaConfig(
        text_config=Qwen2Config(**{k: v for k, v in text.items() if k not in ("_name_or_path", "torch_dtype")},
                                rms_norm_eps=1e-6),
        vision_config=SiglipVisionConfig(**{k: v for k, v in vision.items() if not k.startswith("model_name")}),
        connector_type="mlp2x_gelu",
        image_token_id=515,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = _parameters_to_bf16(TinyLlavaForConditionalGeneration(reference_config).eval())
    upstream_weights = {}
    for key, tensor in reference.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied: upstream's save_pretrained drops the alias
        key = key.replace("model.language_model.", "language_model.model.", 1)
        key = key.replace("model.vision_tower.", "vision_tower._vision_tower.vision_model.", 1)
        key = key.replace("model.connector.layers.", "connector._connector.", 1)
        upstream_weights[key] = tensor.clone().contiguous()

    src = root / "TinyLLaVA-Qwen2-0.5B-SigLIP"
    src.mkdir()
    keys = sorted(upstream_weights)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for shard, shard_keys in shards.items():
        save_file({key: upstream_weights[key] for key in shard_keys}, src / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {key: shard for shard, ks in shards.items() for key in ks}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "architectures": ["TinyLlavaForConditionalGeneration"], "model_type": "tinyllava",
        "connector_type": "mlp2x_gelu", "hidden_size": 64, "image_aspect_ratio": "square", "image_token_index": -200,
        "llm_model_name_or_path": "Qwen/Qwen2-0.5B", "tokenizer_name_or_path": "Qwen/Qwen2-0.5B",
        "vision_model_name_or_path": "google/siglip-so400m-patch14-384", "vision_model_name_or_path2": "",
        "num_queries": 128, "num_resampler_layers": 3, "resampler_hidden_size": 768, "pad_token": "<|endoftext|>",
        "pad_token_id": eos, "text_config": text, "vision_config": vision, "vision_feature_layer": -2,
        "vision_feature_select_strategy": "patch", "vision_hidden_size": 48, "vocab_size": 576,
        "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right", "tokenizer_use_fast": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.39.3",
    }  # fmt: skip
    (src / "config.json").write_text(json.dumps(config))
    for file in tokenizer_dir.iterdir():
        shutil.copyfile(file, src / file.name)
    # The vision tower's image processor, where a local mirror of the hub id would sit next to the checkpoint.
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(
        root / "google" / "siglip-so400m-patch14-384"
    )
    return src, reference


def test_qwen2_checkpoints_without_remote_code_convert(tmp_path: Path):
    src, reference = _qwen2_like_checkpoint(tmp_path)
    upstream = json.loads((src / "config.json").read_text())
    # Why plain transformers cannot load these repos: model_type "tinyllava" with nothing telling it where the code is.
    assert not is_config_loadable_by_transformers(upstream)

    dst = convert_upstream(src, tmp_path / "converted")
    processor, model = AutoProcessor.from_pretrained(dst), AutoModelForImageTextToText.from_pretrained(dst).eval()
    assert model.dtype == torch.bfloat16  # kept as stored
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.config.text_config.rope_parameters["rope_theta"] == 1000000.0
    assert model.config.text_config.rms_norm_eps == 1e-6
    assert model.config.image_token_id == 515 and model.config.text_config.vocab_size == 576  # a spare row was used
    assert "qwen2_base" in processor.chat_template and processor.image_aspect_ratio == "square"
    for key, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key

    messages = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (40, 24), "red")},
                                             {"type": "text", "text": "What color?"}]}]  # fmt: skip
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference(**inputs).logits)
        # The LM alone, through plain transformers, from the converted weights.
        lm = _parameters_to_bf16(Qwen2ForCausalLM(model.config.text_config).eval())
        lm.model.load_state_dict(model.model.language_model.state_dict())
        lm.tie_weights()
        text_ids = torch.tensor([[512, 20, 30, 40, 50]])
        torch.testing.assert_close(lm(text_ids).logits, model(input_ids=text_ids).logits, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------- CLI


def test_cli_convert(tmp_path: Path, capsys: pytest.CaptureFixture):
    src = FIXTURES / "case4_tinyllama_clip_qformer" / "checkpoint"
    assert cli(["convert", str(src), str(tmp_path / "out"), "--qformer-heads", "4", "--template", "llama"]) == 0
    assert "wrote tinyllava-hf checkpoint" in capsys.readouterr().out
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "out").config.connector_num_heads == 4
    # Every named template travels with the converted checkpoint, the chosen one as default.
    saved = {path.stem for path in (tmp_path / "out" / "additional_chat_templates").glob("*.jinja")}
    assert set(list_chat_templates()) <= saved
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == get_chat_template("llama")
    assert ModelCard.load(tmp_path / "out" / "README.md").data.library_name == "transformers"
    assert cli(["convert", str(src), str(tmp_path / "bad"), "--template", "vicuna"]) == 1
    assert "error: Unknown TinyLLaVA chat template 'vicuna'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# Why llama.cpp (libmtmd) cannot run each upstream case as it is: every one meets at least one refusal of
# `export-gguf`, which is checked before anything is written.
GGUF_REFUSALS = {
    "case1_tinyllama_siglip_mlp2x_gelu": ["drops the first patch"],
    "case2_phi_clip_mlp2x_gelu": ["a CLIP tower", "phi LM head has a bias"],
    "case3_qwen2_siglip_resampler": ["connector_type='resampler'", "LM 'qwen2'"],
    "case4_tinyllama_clip_qformer": ["connector_type='qformer'", "a CLIP tower"],
}


@pytest.mark.parametrize("case_name", list(CASES))
def test_export_gguf_refuses_each_upstream_case_with_its_reasons(case_name: str, converted_root: Path, tmp_path):
    from tinyllava_hf.convert.gguf_export import export_gguf

    folder = converted_root / case_name
    if not folder.exists():
        _convert(case_name, folder)
    with pytest.raises(ConversionError, match="Cannot export to GGUF") as refusal:
        export_gguf(folder, tmp_path / "gguf", outtype="f32")
    for reason in GGUF_REFUSALS[case_name]:
        assert reason in str(refusal.value)
    assert not (tmp_path / "gguf").exists()
