"""tinyllava-hf <-> native transformers `llava`: export, import, round trip and refusals.

The exported folders are loaded with transformers' own `LlavaForConditionalGeneration` and `AutoProcessor` (a
`LlavaProcessor`), without remote code, and must give the same placeholder count, input ids, pixel values and logits
as the tinyllava-hf model they came from.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

import tinyllava_hf  # noqa: F401  (registers the tinyllava Auto classes)
from tinyllava_hf import TinyLlavaForConditionalGeneration
from tinyllava_hf.builder import build_processor
from tinyllava_hf.chat_templates import get_chat_template, list_chat_templates, upstream_conversation_to_messages
from tinyllava_hf.cli import main as cli
from tinyllava_hf.convert import ConversionError, convert_upstream, export_llava, import_llava
from tinyllava_hf.convert.llava_export import check_llava_expressible
from tinyllava_hf.testing_utils import random_image, tiny_config, tiny_image_processor, tiny_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"

# (LM family, tower, strategy, feature layer(s), aspect ratio): the variants LLaVA can express.
EXPORTABLE = [
    ("llama", "siglip", "default", -2, "square"),
    ("qwen2", "clip", "default", -2, "pad"),
    ("gemma", "siglip", "full", [-2, -1], "pad"),
    ("stablelm", "clip", "full", -1, "square"),
    ("llama", "clip", "default", [0, -2], "square"),
]


def _save_tinyllava(folder: Path, family: str, tower: str, strategy: str, layer, aspect: str, seed: int = 0) -> Path:
    """A tiny random tinyllava-hf folder (model + processor), as `save_pretrained` writes it."""
    config = tiny_config(
        family, tower, "mlp2x_gelu", vision_feature_select_strategy=strategy, vision_feature_layer=layer
    )
    torch.manual_seed(seed)
    model = TinyLlavaForConditionalGeneration(config).eval()
    processor = build_processor(
        config,
        tiny_tokenizer(),
        tiny_image_processor(tower),
        chat_template=get_chat_template("llama"),
        image_aspect_ratio=aspect,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _messages(image) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "text", "text": "What is shown?"}, {"type": "image", "image": image}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
    ]


def _inputs(processor, image):
    return processor.apply_chat_template(_messages(image), tokenize=True, return_dict=True, return_tensors="pt")


def _assert_native(folder: Path) -> None:
    """No code files and no `auto_map` anywhere: loads without trust_remote_code."""
    assert not list(folder.glob("*.py"))
    for path in folder.glob("*.json"):
        assert "auto_map" not in path.read_text(), path.name
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llava"


@pytest.mark.parametrize(("family", "tower", "strategy", "layer", "aspect"), EXPORTABLE)
def test_export_matches_tinyllava(tmp_path: Path, family: str, tower: str, strategy: str, layer, aspect: str):
    src = _save_tinyllava(tmp_path / "src", family, tower, strategy, layer, aspect)
    dst = export_llava(src, tmp_path / "llava")
    _assert_native(dst)

    ours_processor = AutoProcessor.from_pretrained(src)
    ours = AutoModelForImageTextToText.from_pretrained(src).eval()
    llava_processor = AutoProcessor.from_pretrained(dst)
    llava = LlavaForConditionalGeneration.from_pretrained(dst).eval()
    assert type(llava_processor) is LlavaProcessor

    image = random_image(3, size=(27, 17))  # non-square: resize, crop and pad all matter
    ours_inputs, llava_inputs = _inputs(ours_processor, image), _inputs(llava_processor, image)
    # LLaVA's `default` drops the first token for SigLIP too (a real patch), exactly as TinyLLaVA does; its
    # processor counts (S/p)^2 + [CLS] - 1 placeholders, the same number our model fills.
    count = int((llava_inputs["input_ids"] == llava.config.image_token_id).sum())
    grid = (16 // 8) ** 2
    assert count == ours.config.num_image_tokens == grid + (tower == "clip") - (strategy == "default")
    assert torch.equal(ours_inputs["input_ids"], llava_inputs["input_ids"])
    assert torch.equal(ours_inputs["pixel_values"], llava_inputs["pixel_values"])
    with torch.no_grad():
        ours_logits = ours(**ours_inputs).logits
        llava_logits = llava(**llava_inputs).logits
    torch.testing.assert_close(llava_logits, ours_logits, atol=1e-5, rtol=1e-5)
    assert llava.config.tie_word_embeddings == ours.config.tie_word_embeddings


def test_export_of_a_converted_upstream_checkpoint_matches_upstream(tmp_path: Path):
    """End to end: upstream checkpoint -> tinyllava-hf -> llava, against upstream's own recorded logits."""
    import numpy as np
    from PIL import Image

    case = FIXTURES / "case1_tinyllama_siglip_mlp2x_gelu"
    converted = convert_upstream(case / "checkpoint", tmp_path / "tinyllava")
    dst = export_llava(converted, tmp_path / "llava")
    processor = AutoProcessor.from_pretrained(dst)
    model = LlavaForConditionalGeneration.from_pretrained(dst).eval()
    sample = json.loads((case / "samples.json").read_text())["samples"][0]
    messages = upstream_conversation_to_messages(sample["conversations"])
    messages[0]["content"][0]["image"] = Image.open(case / "images" / "image0.png")
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    expected = torch.from_numpy(np.load(case / "expected" / "sample0.logits.npy"))
    with torch.no_grad():
        logits = model(**inputs).logits[..., : expected.shape[-1]]
    assert (logits - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("aspect", ["square", "pad"])
def test_round_trip_gives_identical_logits(tmp_path: Path, aspect: str):
    src = _save_tinyllava(tmp_path / "src", "qwen2", "siglip", "default", -2, aspect, seed=1)
    back = import_llava(export_llava(src, tmp_path / "llava"), tmp_path / "back")
    image = random_image(5, size=(19, 31))
    ours = AutoModelForImageTextToText.from_pretrained(src).eval()
    again = AutoModelForImageTextToText.from_pretrained(back).eval()
    ours_inputs = _inputs(AutoProcessor.from_pretrained(src), image)
    again_processor = AutoProcessor.from_pretrained(back)
    again_inputs = _inputs(again_processor, image)
    assert again_processor.image_aspect_ratio == aspect
    assert torch.equal(ours_inputs["input_ids"], again_inputs["input_ids"])
    assert torch.equal(ours_inputs["pixel_values"], again_inputs["pixel_values"])
    with torch.no_grad():
        assert torch.equal(ours(**ours_inputs).logits, again(**again_inputs).logits)
    for key, tensor in ours.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor), key


CURRENT_LAYOUT = (
    ("vision_tower.", "model.vision_tower.vision_model."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
)


def test_import_reads_the_current_key_layout_too(tmp_path: Path):
    """llava folders saved with `model.`-prefixed keys (transformers >= 4.52 layout) import to the same weights."""
    src = _save_tinyllava(tmp_path / "src", "llama", "clip", "default", -2, "square")
    llava = export_llava(src, tmp_path / "llava")
    weights = load_file(llava / "model.safetensors")
    renamed = {}
    for key, tensor in weights.items():
        for old, new in CURRENT_LAYOUT:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = tensor
    save_file(renamed, llava / "model.safetensors", metadata={"format": "pt"})
    back = import_llava(llava, tmp_path / "back")
    ours = TinyLlavaForConditionalGeneration.from_pretrained(src)
    again = TinyLlavaForConditionalGeneration.from_pretrained(back)
    for key, tensor in ours.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor), key


@pytest.mark.parametrize(
    ("family", "tower", "connector", "overrides", "match"),
    [
        ("phi", "clip", "mlp2x_gelu", {}, r"phi LM head has a bias"),
        ("llama", "clip", "qformer", {}, r"connector_type='qformer'"),
        ("llama", "siglip", "resampler", {}, r"connector_type='resampler'"),
        ("llama", "clip", "mof", {}, r"MoF needs two vision towers.*second vision tower"),
        ("llama", "clip", "linear", {}, r"one linear layer cannot be expressed without inventing a second"),
        ("llama", "clip", "identity", {"text_config": None}, r"connector_type='identity'"),
        ("llama", "clip", "mlp3x_gelu", {}, r"exactly two Linear layers"),
        ("llama", "dinov2", "mlp2x_gelu", {}, r"vision tower 'dinov2'"),
        ("llama", "clip", "mlp2x_gelu", {"audio": True}, r"audio tower"),
    ],
)
def test_inexpressible_variants_are_refused(family, tower, connector, overrides, match):
    overrides = dict(overrides)
    audio = overrides.pop("audio", False)
    overrides.pop("text_config", None)
    config = tiny_config(family, tower, connector, audio=audio, **overrides)
    with pytest.raises(ConversionError, match=match):
        check_llava_expressible(config)


def test_export_refusal_writes_nothing(tmp_path: Path):
    src = _save_tinyllava(tmp_path / "src", "phi", "clip", "default", -2, "square")
    with pytest.raises(ConversionError, match="bias"):
        export_llava(src, tmp_path / "llava")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]


def test_cli_export_and_import(tmp_path: Path, capsys: pytest.CaptureFixture):
    src = _save_tinyllava(tmp_path / "src", "llama", "siglip", "default", -2, "pad")
    assert cli(["export-llava", str(src), str(tmp_path / "llava")]) == 0
    assert cli(["import-llava", str(tmp_path / "llava"), str(tmp_path / "back")]) == 0
    assert "wrote llava checkpoint" in capsys.readouterr().out
    # The imported checkpoint keeps every named template (the llava processor's own as `llava`) and gets our card.
    saved = {path.stem for path in (tmp_path / "back" / "additional_chat_templates").glob("*.jinja")}
    assert {"llava", *list_chat_templates()} <= saved
    assert (
        "tinyllava-hf import-llava" in (tmp_path / "back" / "README.md").read_text()
        or "llava" in (tmp_path / "back" / "README.md").read_text()
    )
    assert cli(["import-llava", str(tmp_path / "llava"), str(tmp_path / "back")]) == 1  # exists
    assert "already exists" in capsys.readouterr().err
    assert cli(["export-llava", str(tmp_path / "back"), str(tmp_path / "llava2"), "--overwrite"]) == 0
