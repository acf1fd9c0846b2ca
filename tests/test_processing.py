"""TinyLlavaProcessor: placeholder expansion from the config, pad/square preprocessing, errors, save/load, pipeline."""

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, pipeline

from tinyllava_hf import TinyLlavaAudioProcessor, TinyLlavaForConditionalGeneration, TinyLlavaProcessor
from tinyllava_hf.builder import build_processor
from tinyllava_hf.chat_templates import get_chat_template, list_chat_templates
from tinyllava_hf.processing_tinyllava import expand_to_square
from tinyllava_hf.testing_utils import (
    CONNECTOR_SETTINGS,
    VISION_TOWERS,
    random_audio,
    random_image,
    scramble,
    tiny_base_tokenizer,
    tiny_config,
    tiny_feature_extractor,
    tiny_image_processor,
    tiny_processor,
    tiny_tokenizer,
)


def image_turn(text: str = "What shape?", *images) -> dict:
    images = images or (random_image(0),)
    return {
        "role": "user",
        "content": [*({"type": "image", "image": im} for im in images), {"type": "text", "text": text}],
    }


@pytest.mark.parametrize("tower", list(VISION_TOWERS))
@pytest.mark.parametrize("connector", [*CONNECTOR_SETTINGS, "mof"])
@pytest.mark.parametrize("strategy", ["default", "full"])
def test_each_image_expands_to_the_models_token_count(tower, connector, strategy):
    config = tiny_config("llama", tower, connector, vision_feature_select_strategy=strategy)
    processor = tiny_processor(config, tower="siglip" if tower == "siglip" else "clip")
    inputs = processor.apply_chat_template(
        [image_turn("Two images?", random_image(0), random_image(1))],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    assert (inputs["input_ids"] == config.image_token_id).sum() == 2 * config.num_image_tokens
    # The model fills exactly these placeholders.
    model = TinyLlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        assert model(**inputs).image_hidden_states.shape[:2] == (2, config.num_image_tokens)


def test_audio_expands_to_the_models_frame_count():
    config = tiny_config("llama", "siglip", "mlp2x_gelu", audio=True)
    processor = tiny_processor(config)
    assert isinstance(processor, TinyLlavaAudioProcessor)
    conversation = [
        {"role": "user", "content": [{"type": "audio", "audio": random_audio(0)}, {"type": "text", "text": "Hi"}]}
    ]
    inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
    # By default a clip gets the tokens its own frames need (trim_audio_padding), at most one window's.
    frames = int(inputs["feature_attention_mask"].sum())
    count = processor.audio_token_count(frames)
    assert (inputs["input_ids"] == config.audio_token_id).sum() == count <= config.num_audio_tokens
    assert "pixel_values" not in inputs
    model = TinyLlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        assert model(**inputs).audio_hidden_states.shape[0] == count
    processor.trim_audio_padding = False  # the whole window
    inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
    assert (inputs["input_ids"] == config.audio_token_id).sum() == config.num_audio_tokens
    assert "feature_attention_mask" not in inputs


def test_vision_only_processor_needs_no_audio_settings(tmp_path):
    config = tiny_config()
    processor = tiny_processor(config)
    assert type(processor) is TinyLlavaProcessor
    processor.save_pretrained(tmp_path)
    saved = (tmp_path / "processor_config.json").read_text()
    assert "audio" not in saved and "feature_extractor" not in saved
    assert (
        not (tmp_path / "preprocessor_config.json").exists()
        or "Whisper" not in (tmp_path / "preprocessor_config.json").read_text()
    )


def test_placeholder_tokens_are_single_special_tokens():
    tokenizer = tiny_tokenizer()
    assert tokenizer.tokenize("<image><image>") == ["<image>", "<image>"]
    assert "<image>" in tokenizer.all_special_tokens


def test_builder_adds_missing_placeholder_tokens():
    tokenizer = tiny_base_tokenizer()
    assert "<image>" not in tokenizer.get_vocab()
    before = len(tokenizer)
    config = tiny_config(audio=True)
    config.image_token_id = config.audio_token_id = None
    build_processor(config, tokenizer, tiny_image_processor(), feature_extractor=tiny_feature_extractor())
    assert len(tokenizer) == before + 2
    assert tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id == before
    assert tokenizer.convert_tokens_to_ids("<audio>") == config.audio_token_id == before + 1


def test_audio_config_needs_a_feature_extractor():
    with pytest.raises(ValueError, match="pass its Whisper feature extractor"):
        build_processor(tiny_config(audio=True), tiny_base_tokenizer(), tiny_image_processor())


def test_pad_mode_expands_to_a_square_of_the_mean_colour():
    config = tiny_config("llama", "clip", "mlp2x_gelu")
    processor = tiny_processor(config, tower="clip")
    processor.image_aspect_ratio = "pad"
    image = random_image(5, size=(24, 12))  # wide: padded above and below
    inputs = processor(images=[image], text="<image>", return_tensors="pt")

    background = tuple(int(mean * 255) for mean in processor.image_processor.image_mean)
    padded = expand_to_square(image, background)
    assert padded.size == (24, 24)
    corner = np.asarray(padded)[0, 0]
    assert tuple(corner) == background  # (122, 116, 104) for CLIP's mean
    assert background == (122, 116, 104)
    expected = processor.image_processor(images=[padded], return_tensors="pt")["pixel_values"]
    assert torch.equal(inputs["pixel_values"], expected)
    square = tiny_processor(config, tower="clip")(images=[image], text="<image>", return_tensors="pt")
    assert not torch.equal(square["pixel_values"], expected)


def test_expand_to_square_centres_the_image():
    image = random_image(3, size=(10, 4))
    padded = np.asarray(expand_to_square(image, (1, 2, 3)))
    assert padded.shape == (10, 10, 3)
    np.testing.assert_array_equal(padded[3:7], np.asarray(image))  # offset (10 - 4) // 2 = 3
    assert (padded[:3] == (1, 2, 3)).all() and (padded[7:] == (1, 2, 3)).all()


def test_unknown_aspect_ratio_is_rejected():
    config = tiny_config()
    with pytest.raises(ValueError, match="image_aspect_ratio must be one of"):
        build_processor(config, tiny_tokenizer(), tiny_image_processor(), image_aspect_ratio="anyres")


def test_image_and_marker_counts_must_agree():
    processor = tiny_processor(tiny_config())
    with pytest.raises(ValueError, match="Found total 1 <image> tokens and 2 images"):
        processor(images=[random_image(0), random_image(1)], text="<image> two?")
    with pytest.raises(ValueError, match="Found 2 <image> tokens in the text but no images"):
        processor(text="<image><image> none?")
    with pytest.raises(ValueError, match="Found total 2 <image> tokens and 1 images"):
        processor(images=[random_image(0)], text="<image><image>")


def test_truncation_that_would_cut_placeholders_is_an_error():
    config = tiny_config()
    processor = tiny_processor(config)
    with pytest.raises(ValueError, match="Mismatch in `image` token count"):
        processor(images=[random_image(0)], text="Hello there <image> and more", truncation=True, max_length=5)


@pytest.mark.parametrize("template", list_chat_templates())
def test_named_templates_survive_save_and_load(template, tmp_path):
    config = tiny_config()
    processor = tiny_processor(config, template=template)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is TinyLlavaProcessor
    assert reloaded.num_image_tokens == config.num_image_tokens
    conversation = [image_turn()]
    # The default is the selected template; every other one is reachable by name.
    assert reloaded.apply_chat_template(conversation, add_generation_prompt=True) == processor.apply_chat_template(
        conversation, chat_template=get_chat_template(template), add_generation_prompt=True
    )
    for other in list_chat_templates():
        assert reloaded.apply_chat_template(conversation, chat_template=other, add_generation_prompt=True) == (
            processor.apply_chat_template(
                conversation, chat_template=get_chat_template(other), add_generation_prompt=True
            )
        )


def test_lm_chat_template_is_kept_as_lm(tmp_path):
    tokenizer = tiny_base_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    processor = build_processor(tiny_config(), tokenizer, tiny_image_processor())
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded.apply_chat_template([{"role": "user", "content": "hi"}], chat_template="lm") == "<|user|>hi"


def test_assistant_mask_covers_answer_and_eos():
    config = tiny_config()
    processor = tiny_processor(config)
    conversation = [image_turn(), {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]}]
    inputs = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True
    )
    ids, mask = inputs["input_ids"][0], inputs["assistant_masks"][0].bool()
    assert processor.decode(ids[mask]) == " a red circle</s>"
    assert not mask[ids == config.image_token_id].any()


def test_pipeline_image_text_to_text(tmp_path):
    config = tiny_config()
    processor = tiny_processor(config)
    torch.manual_seed(0)
    model = scramble(TinyLlavaForConditionalGeneration(config).eval(), std=0.3)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    pipe = pipeline("image-text-to-text", model=str(tmp_path), trust_remote_code=True)
    conversation = [image_turn()]
    result = pipe(text=conversation, max_new_tokens=4, return_full_text=False, do_sample=False)
    inputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert result[0]["generated_text"] == processor.decode(tokens, skip_special_tokens=True)
