"""Bad inputs and faults on the model side (issue 14): each either gives the correct result or a clear error that
names the problem and the fix. One test (or parametrised group) per guarded input, so this file is the list."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig, T5Config

from tinyllava_hf import TinyLlavaConfig, TinyLlavaForConditionalGeneration, TinyLlavaModel
from tinyllava_hf.builder import build_processor
from tinyllava_hf.testing_utils import (
    random_audio,
    random_image,
    scramble,
    tiny_config,
    tiny_image_processor,
    tiny_processor,
    tiny_tokenizer,
)


def _pad_processor(tower: str = "siglip"):
    config = tiny_config("llama", tower)
    return build_processor(
        config, tiny_tokenizer(), tiny_image_processor(tower), image_aspect_ratio="pad"
    ), tiny_processor(config, tower=tower)


def _pixels(processor, image) -> torch.Tensor:
    return processor(text="<image>", images=image, return_tensors="pt")["pixel_values"]


def _on_white(image: Image.Image) -> Image.Image:
    """What the image processors' RGB conversion makes of transparency: composited onto white."""
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _image_in_mode(mode: str) -> Image.Image:
    rgb = random_image(3, size=(24, 14))  # non-square, so pad mode pads
    if mode == "P":
        return rgb.quantize(16)
    if mode == "P+transparency":
        image = rgb.quantize(16)
        image.info["transparency"] = 0
        return image
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L"), dtype="<u2") * 3)
    if mode in ("RGBA", "LA"):
        image = rgb.convert(mode)
        alpha = Image.fromarray(np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (14, 1)))
        image.putalpha(alpha)
        return image
    return rgb.convert(mode)


# 1. Pad mode and non-RGB PIL images.
@pytest.mark.parametrize("mode", ["P", "L", "CMYK", "I;16", "RGBA", "LA", "P+transparency"])
@pytest.mark.parametrize("tower", ["siglip", "clip"])
def test_pad_mode_converts_non_rgb_images_like_the_square_path(mode, tower):
    pad, square = _pad_processor(tower)
    image = _image_in_mode(mode)
    has_alpha = mode in ("RGBA", "LA", "P+transparency")
    expected_rgb = _on_white(image) if has_alpha else image.convert("RGB")
    torch.testing.assert_close(_pixels(pad, image), _pixels(pad, expected_rgb), rtol=0, atol=0)
    # Transparency is handled as the square path (the image processor's own RGB conversion) handles it.
    torch.testing.assert_close(_pixels(square, image), _pixels(square, expected_rgb), rtol=0, atol=0)


def test_pad_mode_pads_cmyk_with_the_mean_colour_not_black():
    pad, _ = _pad_processor()
    image = Image.new("CMYK", (24, 12), (0, 0, 0, 0))  # white in CMYK
    pixels = _pixels(pad, image)[0]
    # SigLIP normalises with mean 0.5, so the mean-colour padding is ~0 and black would be -1.
    assert pixels[:, 0, 0].abs().max() < 0.05
    assert pixels[:, 8, 8].min() > 0.9  # the white image itself


def test_pad_mode_accepts_channels_first_arrays():
    pad, _ = _pad_processor()
    image = random_image(4, size=(24, 14))
    array = np.asarray(image).transpose(2, 0, 1).copy()
    torch.testing.assert_close(_pixels(pad, array), _pixels(pad, image), rtol=0, atol=0)


# 2. Silent config defaults.
def test_missing_text_config_is_refused_not_a_7b_llama():
    vision = tiny_config().vision_config
    with pytest.raises(ValueError, match="no text_config.*7B Llama"):
        TinyLlavaConfig(vision_config=vision, image_token_id=4)


def test_missing_vision_config_is_refused():
    with pytest.raises(ValueError, match="no vision_config"):
        TinyLlavaConfig(text_config=tiny_config().text_config, image_token_id=4)


def test_bare_default_config_still_builds_and_serialises_but_builds_no_model():
    # transformers (and `AutoConfig.for_model`) may build the class default: keep it working as a config.
    config = TinyLlavaConfig()
    assert config.text_config.model_type == "llama"
    assert "_default_sub_configs" not in config.to_json_string()
    assert TinyLlavaConfig.from_dict(config.to_dict()).text_config.hidden_size == config.text_config.hidden_size
    with pytest.raises(ValueError, match="without text_config and vision_config"):
        TinyLlavaModel(config)
    # A real sub-config assigned afterwards lifts the refusal for that sub-config.
    config.text_config = tiny_config().text_config
    assert config.defaulted_sub_configs() == ["vision_config"]


@pytest.mark.parametrize("layer", [7, -4, [-2, 3], []])
def test_vision_feature_layer_out_of_range_fails_at_config_time(layer):
    # The tiny SigLIP has 2 layers: hidden states -3..2.
    with pytest.raises(ValueError, match=r"vision_feature_layer.*\[-3, 2\]|empty list"):
        tiny_config(vision_feature_layer=layer)


def test_vision_feature_layer_is_checked_against_the_mof_aux_tower_too():
    config = tiny_config(connector="mof")
    aux = {k: v for k, v in config.vision_aux_config.to_dict().items() if k not in ("out_features", "out_indices")}
    aux.update(num_hidden_layers=1, stage_names=["stem", "stage1"])
    with pytest.raises(ValueError, match="out of range for vision_aux_config"):
        tiny_config(connector="mof", vision_feature_layer=-3, vision_aux_config=aux)


@pytest.mark.parametrize("factor", [0, -2])
def test_audio_downsample_factor_must_be_positive(factor):
    with pytest.raises(ValueError, match="audio_downsample_factor must be a positive integer"):
        tiny_config(audio=True, audio_downsample_factor=factor)


@pytest.mark.parametrize(
    ("connector", "field", "value"),
    [
        ("resampler", "connector_num_queries", 0),
        ("qformer", "connector_num_queries", 0),
        ("resampler", "connector_num_heads", 0),
        ("resampler", "connector_head_dim", 0),
        ("resampler", "connector_num_layers", -1),
        ("qformer", "qformer_cross_attention_freq", 0),
        ("qformer", "qformer_hidden_size", 0),
    ],
)
def test_connector_sizes_must_be_positive(connector, field, value):
    with pytest.raises(ValueError, match=f"{field} must be an integer >= "):
        tiny_config(connector=connector, **{field: value})


def test_qformer_width_must_split_into_heads_at_config_time():
    with pytest.raises(ValueError, match="qformer_hidden_size=18 must be divisible by connector_num_heads=4"):
        tiny_config(connector="qformer", qformer_hidden_size=18)


def test_an_image_too_small_for_one_patch_is_refused():
    vision = tiny_config().vision_config.to_dict()
    vision["image_size"] = 8  # one 8-pixel patch, which the `default` strategy drops
    with pytest.raises(ValueError, match="0 tokens per image"):
        tiny_config(vision_config=vision)
    vision["patch_size"] = 0
    with pytest.raises(ValueError, match="patch_size .* must be positive"):
        tiny_config(vision_config=vision)


@pytest.mark.parametrize(
    ("text_config", "kind"),
    [
        (BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64), "an encoder"),
        (T5Config(d_model=32, num_layers=1, num_heads=4, d_ff=64), "an encoder-decoder"),
    ],
)
def test_non_causal_lm_text_config_is_refused(text_config, kind):
    with pytest.raises(ValueError, match=f"text_config is {kind} model.*decoder-only language model"):
        tiny_config(text_config=text_config)


def test_tied_lm_head_follows_the_backbones_embedding_name():
    # GPT-2 names its input embeddings `wte`; tying used to look for `embed_tokens` and fail with AttributeError.
    text = dict(model_type="gpt2", n_embd=32, n_layer=1, n_head=4, vocab_size=384, tie_word_embeddings=True)
    model = TinyLlavaForConditionalGeneration(tiny_config(text_config=text))
    assert model.lm_head.weight is model.get_input_embeddings().weight


# 3. Wrong inputs accepted without a word.
def test_audio_block_to_a_vision_only_processor_is_refused():
    processor = tiny_processor(tiny_config())
    conversation = [
        {"role": "user", "content": [{"type": "audio", "audio": random_audio(0)}, {"type": "text", "text": "Hi"}]}
    ]
    with pytest.raises(ValueError, match="no audio tower"):
        processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
    with pytest.raises(ValueError, match="no audio tower"):
        processor(text="Hi", audio=random_audio(0))


def test_video_input_is_refused():
    processor = tiny_processor(tiny_config())
    with pytest.raises(ValueError, match="no video input"):
        processor(text="Hi", videos=[np.zeros((2, 16, 16, 3), dtype=np.uint8)])


def test_uint8_pixel_values_are_refused():
    config = tiny_config()
    processor = tiny_processor(config)
    model = scramble(TinyLlavaForConditionalGeneration(config)).eval()
    inputs = processor(text="<image> What?", images=random_image(0), return_tensors="pt")
    raw = (inputs["pixel_values"].clamp(-1, 1) * 127.5 + 127.5).to(torch.uint8)
    with pytest.raises(ValueError, match="pixel_values must be floating point, normalised by the processor"):
        model(**{**inputs, "pixel_values": raw})
    with pytest.raises(ValueError, match=r"shape \(num_images, channels, height, width\)"):
        model(**{**inputs, "pixel_values": inputs["pixel_values"][0]})


def test_integer_audio_features_are_refused():
    config = tiny_config(audio=True)
    model = TinyLlavaForConditionalGeneration(config).eval()
    with pytest.raises(ValueError, match="input_features must be floating-point"):
        model.get_audio_features(torch.zeros(1, 80, 100, dtype=torch.int64))


def test_missing_image_path_is_named(tmp_path):
    processor = tiny_processor(tiny_config())
    missing = str(tmp_path / "no_such_image.jpg")
    conversation = [
        {"role": "user", "content": [{"type": "image", "path": missing}, {"type": "text", "text": "What?"}]}
    ]
    with pytest.raises(FileNotFoundError, match="Image file not found: .*no_such_image.jpg"):
        processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
    with pytest.raises(FileNotFoundError, match="no_such_image.jpg"):
        processor(text="<image>", images=[missing])


def test_existing_image_path_still_loads(tmp_path):
    processor = tiny_processor(tiny_config())
    path = tmp_path / "image.png"
    random_image(0).save(path)
    conversation = [{"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": "?"}]}]
    inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
    torch.testing.assert_close(inputs["pixel_values"], _pixels(processor, random_image(0)))


# 4. Loading.
def test_num_image_tokens_in_config_json_is_accepted_when_it_agrees(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "num_image_tokens": config.num_image_tokens}))
    assert TinyLlavaConfig.from_pretrained(tmp_path).num_image_tokens == config.num_image_tokens
    path.write_text(json.dumps({**saved, "num_image_tokens": config.num_image_tokens + 2}))
    with pytest.raises(ValueError, match="config.num_image_tokens=5 disagrees.*remove `num_image_tokens`"):
        TinyLlavaConfig.from_pretrained(tmp_path)


def test_truncated_safetensors_names_the_file(tmp_path):
    TinyLlavaForConditionalGeneration(tiny_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"model\.safetensors: the file is truncated or corrupt.*Re-download"):
        TinyLlavaForConditionalGeneration.from_pretrained(tmp_path)
