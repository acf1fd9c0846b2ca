"""Audio through the processor and the model, the transformers way: chat `audio` blocks (files, arrays at any
sampling rate), alone or with images, several per conversation, batched with left padding; and clear errors."""

import json

import numpy as np
import pytest
import soundfile
import torch

from tinyllava_hf.modeling_tinyllava import TinyLlavaForConditionalGeneration
from tinyllava_hf.processing_tinyllava import TinyLlavaAudioProcessor, TinyLlavaProcessor, resample_audio
from tinyllava_hf.testing_utils import random_audio, random_image, scramble, tiny_config, tiny_processor

CHAT = {"tokenize": True, "return_dict": True, "return_tensors": "pt", "add_generation_prompt": True}
LEFT_PADDED = {"processor_kwargs": {"padding": True, "padding_side": "left"}}


@pytest.fixture(scope="module")
def model_and_processor():
    """The model with an untrimmed processor: whole-window placeholders, the layout of processors saved before
    `trim_audio_padding` existed (still loaded that way)."""
    config = tiny_config("llama", "siglip", "mlp2x_gelu", audio=True)
    torch.manual_seed(0)
    model = scramble(TinyLlavaForConditionalGeneration(config).eval(), std=0.5)
    processor = tiny_processor(config)
    processor.trim_audio_padding = False
    return model, processor


@pytest.fixture
def trimming_processor(model_and_processor):
    _, processor = model_and_processor
    processor.trim_audio_padding = True
    yield processor
    processor.trim_audio_padding = False


def test_saved_processors_without_the_trim_setting_load_untrimmed(model_and_processor, tmp_path):
    model, _ = model_and_processor
    processor = tiny_processor(model.config)
    processor.trim_audio_padding = True
    processor.save_pretrained(tmp_path)
    config_file = tmp_path / "processor_config.json"
    saved = json.loads(config_file.read_text())
    assert saved["trim_audio_padding"] is True
    assert TinyLlavaProcessor.from_pretrained(tmp_path).trim_audio_padding is True
    del saved["trim_audio_padding"]  # as saved before the setting existed
    config_file.write_text(json.dumps(saved))
    assert TinyLlavaAudioProcessor.from_pretrained(tmp_path).trim_audio_padding is False
    assert TinyLlavaProcessor.from_pretrained(tmp_path).trim_audio_padding is False
    assert TinyLlavaAudioProcessor.from_pretrained(tmp_path, trim_audio_padding=True).trim_audio_padding is True


@pytest.fixture(scope="module")
def wav_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "q.wav"
    soundfile.write(path, random_audio(0), 16000, subtype="FLOAT")  # lossless: equal to the array
    return path


def user(*content):
    return [{"role": "user", "content": list(content)}]


def text(value):
    return {"type": "text", "text": value}


def audio_array(seed, seconds=0.6, rate=16000):
    return {"type": "audio", "audio": resample_audio(random_audio(seed, seconds), 16000, rate), "sampling_rate": rate}


def count(inputs, token_id):
    return (inputs["input_ids"] == token_id).sum(-1).tolist()


def test_audio_only_image_audio_and_text_only_conversations(model_and_processor, wav_file):
    model, processor = model_and_processor
    config = model.config
    conversations = {
        "audio": user({"type": "audio", "path": str(wav_file)}, text("What is said?")),
        "image+audio": user({"type": "image", "image": random_image(1)}, audio_array(1), text("Describe both.")),
        "text": user(text("Just text.")),
    }
    for name, conversation in conversations.items():
        inputs = processor.apply_chat_template(conversation, **CHAT)
        has_audio, has_image = "audio" in name, "image" in name
        assert count(inputs, config.audio_token_id) == [config.num_audio_tokens if has_audio else 0]
        assert count(inputs, config.image_token_id) == [config.num_image_tokens if has_image else 0]
        assert ("input_features" in inputs) == has_audio and ("pixel_values" in inputs) == has_image
        with torch.no_grad():
            outputs = model(**inputs)
        assert (outputs.audio_hidden_states is not None) == has_audio
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_path_block_equals_array_block(model_and_processor, wav_file):
    _, processor = model_and_processor
    from_path = processor.apply_chat_template(user({"type": "audio", "path": str(wav_file)}, text("Hi")), **CHAT)
    from_array = processor.apply_chat_template(user(audio_array(0), text("Hi")), **CHAT)
    assert torch.equal(from_path["input_ids"], from_array["input_ids"])
    torch.testing.assert_close(from_path["input_features"], from_array["input_features"])


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_array_at_another_sampling_rate_is_resampled(model_and_processor, rate):
    _, processor = model_and_processor
    reference = processor.apply_chat_template(user(audio_array(2), text("Hi")), **CHAT)["input_features"]
    resampled = processor.apply_chat_template(user(audio_array(2, rate=rate), text("Hi")), **CHAT)["input_features"]
    # 8 kHz keeps only the band below 4 kHz: compare the mel bins under it (about the lower 2/3 of Whisper's 80).
    bins = slice(0, 50) if rate == 8000 else slice(None)
    torch.testing.assert_close(resampled[:, bins], reference[:, bins], atol=0.05, rtol=0)
    # The same through `processor(...)` with `sampling_rate=`.
    prompt = processor.apply_chat_template(user({"type": "audio"}, text("Hi")), add_generation_prompt=True)
    direct = processor(
        text=prompt, audio=[audio_array(2, rate=rate)["audio"]], sampling_rate=rate, return_tensors="pt"
    )
    torch.testing.assert_close(direct["input_features"], resampled)


def test_resample_audio_keeps_a_tone():
    seconds, frequency = 0.5, 440.0

    def tone(rate):
        return np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate).astype(np.float32)

    for source_rate in (8000, 22050, 44100, 48000):
        resampled = resample_audio(tone(source_rate), source_rate, 16000)
        assert resampled.dtype == np.float32 and resampled.shape == (8000,)
        np.testing.assert_allclose(resampled[400:-400], tone(16000)[400:-400], atol=2e-2)


def test_several_clips_per_conversation(model_and_processor):
    model, processor = model_and_processor
    config = model.config
    conversation = user(audio_array(0), text("and"), audio_array(1, seconds=0.3), text("Same speaker?"))
    inputs = processor.apply_chat_template(conversation, **CHAT)
    assert inputs["input_features"].shape[0] == 2
    assert count(inputs, config.audio_token_id) == [2 * config.num_audio_tokens]
    # Clip order follows the conversation: swapping the clips changes the answer's logits.
    swapped = processor.apply_chat_template(
        user(audio_array(1, seconds=0.3), text("and"), audio_array(0), text("Same speaker?")), **CHAT
    )
    torch.testing.assert_close(swapped["input_features"], inputs["input_features"].flip(0))
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits[0, -1], model(**swapped).logits[0, -1])


def _batched_equals_one_by_one(model, processor, conversations, max_new_tokens=4):
    batch = processor.apply_chat_template(conversations, **CHAT, **LEFT_PADDED)
    assert (batch["attention_mask"][:, 0] == 0).any()  # really left-padded
    batched = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)[:, -max_new_tokens:]
    with torch.no_grad():
        batched_logits = model(**batch).logits[:, -1]
    for row, conversation in enumerate(conversations):
        single = processor.apply_chat_template(conversation, **CHAT)
        expected = model.generate(**single, max_new_tokens=max_new_tokens, do_sample=False)[0, -max_new_tokens:]
        assert batched[row].tolist() == expected.tolist(), row
        with torch.no_grad():
            torch.testing.assert_close(batched_logits[row], model(**single).logits[0, -1], atol=1e-4, rtol=1e-4)
    return batch


CONVERSATIONS = [
    user(audio_array(0), text("What is said?")),
    user(text("A longer text-only question, so that the others are padded on the left.")),
    user({"type": "image", "image": random_image(2)}, audio_array(3, seconds=0.2), text("Both?")),
    user(audio_array(4, seconds=0.9), text("One"), audio_array(5, seconds=0.4), text("two")),
]


def test_batched_generation_with_audio_equals_one_by_one(model_and_processor):
    model, processor = model_and_processor
    batch = _batched_equals_one_by_one(model, processor, CONVERSATIONS)
    assert batch["input_features"].shape[0] == 4


def test_trimmed_placeholders_follow_the_clip_length(trimming_processor, model_and_processor):
    """Placeholders for the clip's real length, not the window's padding (`trim_audio_padding`)."""
    model, processor = model_and_processor
    config = model.config
    inputs = processor.apply_chat_template(CONVERSATIONS, **CHAT, **LEFT_PADDED)
    frames = inputs["feature_attention_mask"].sum(-1).tolist()
    # 10 ms log-mel frames; the tiny tower's 1 s window = 100 frames = 25 tokens, so 4 frames a token.
    assert frames == [60, 20, 90, 40]
    assert count(inputs, config.audio_token_id) == [15, 0, 5, 23 + 10]
    assert processor.audio_token_count(100) == config.num_audio_tokens and processor.audio_token_count(1) == 1
    assert "feature_attention_mask" in processor.model_input_names


def test_trim_setting_is_saved(model_and_processor, trimming_processor, tmp_path):
    trimming_processor.save_pretrained(tmp_path)
    reloaded = TinyLlavaAudioProcessor.from_pretrained(tmp_path)
    assert reloaded.trim_audio_padding is True


def test_trimmed_batched_generation_equals_one_by_one(trimming_processor, model_and_processor):
    model, processor = model_and_processor
    batch = _batched_equals_one_by_one(model, processor, CONVERSATIONS)
    with torch.no_grad():
        kept = model(**batch).audio_hidden_states
    assert kept.shape == (15 + 5 + 23 + 10, model.config.text_config.hidden_size)


def test_trimmed_features_are_the_untrimmed_ones_cut(trimming_processor, model_and_processor):
    """Trimming keeps each clip's first tokens unchanged: the encoder still sees the whole window."""
    model, processor = model_and_processor
    inputs = processor.apply_chat_template(CONVERSATIONS[3], **CHAT)
    with torch.no_grad():
        full = model.get_audio_features(inputs["input_features"])
        trimmed = model.get_audio_features(inputs["input_features"], inputs["feature_attention_mask"])
    torch.testing.assert_close(trimmed, torch.cat([full[0, :23], full[1, :10]]))


def test_mismatched_trimmed_inputs_are_a_clear_error(trimming_processor, model_and_processor):
    model, processor = model_and_processor
    inputs = processor.apply_chat_template(CONVERSATIONS[0], **CHAT)
    with torch.no_grad(), pytest.raises(ValueError, match="feature_attention_mask together"):
        model(
            **{key: value for key, value in inputs.items() if key != "feature_attention_mask"}
            | {"feature_attention_mask": torch.ones_like(inputs["feature_attention_mask"])}
        )


@pytest.mark.parametrize(
    "block, error, message",
    [
        ({"type": "audio", "path": "no/such/q.wav"}, FileNotFoundError, "Audio file not found: 'no/such/q.wav'"),
        ({"type": "audio", "audio": np.zeros((2, 800), np.float32)}, ValueError, r"1-D \(mono\)"),
        ({"type": "audio", "audio": np.zeros(0, np.float32)}, ValueError, r"non-empty 1-D"),
        ({"type": "audio", "audio": random_audio(0), "sampling_rate": 0}, ValueError, "invalid sampling_rate 0"),
        ({"type": "audio", "audio": random_audio(0), "sampling_rate": "16k"}, ValueError, "invalid sampling_rate"),
        ({"type": "audio", "audio": random_audio(0), "path": "x.wav"}, ValueError, "exactly one of audio, url"),
        ({"type": "audio", "audio": random_audio(0, seconds=1.5)}, ValueError, r"lasts 1.50 s, longer than .* 1 s"),
    ],
)
def test_bad_audio_is_a_clear_error(model_and_processor, block, error, message):
    _, processor = model_and_processor
    with pytest.raises(error, match=message):
        processor.apply_chat_template(user(block, text("Hi")), **CHAT)


def test_unreadable_audio_file_is_a_clear_error(model_and_processor, tmp_path):
    _, processor = model_and_processor
    path = tmp_path / "notes.wav"
    path.write_text("not audio")
    with pytest.raises(ValueError, match=f"Cannot read audio '{path}'"):
        processor.apply_chat_template(user({"type": "audio", "path": str(path)}, text("Hi")), **CHAT)


def test_long_clip_through_processor_call_is_an_error(model_and_processor):
    _, processor = model_and_processor
    with pytest.raises(ValueError, match="split it into clips"):
        processor(text="<audio> hi", audio=[random_audio(0, seconds=2.0)], return_tensors="pt")


def test_audio_block_to_vision_only_checkpoint_is_an_error(wav_file):
    processor = tiny_processor(tiny_config("llama", "siglip", "mlp2x_gelu"))
    with pytest.raises(ValueError, match="no audio tower"):
        processor.apply_chat_template(user({"type": "audio", "path": str(wav_file)}, text("Hi")), **CHAT)


def _training_row(sample_id, wav, answer):
    messages = [
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is said?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    return {"id": sample_id, "messages_json": json.dumps(messages), "images": [], "audios": [str(wav)]}


@pytest.mark.parametrize("packing", [False, True])
def test_collator_follows_the_trimming_processor(trimming_processor, model_and_processor, tmp_path, packing):
    """Per-clip placeholder counts in the training collator: measured without decoding, carried with
    `feature_attention_mask` (in packed order too), and accepted by the model."""
    from tinyllava_hf.train.collator import TinyLlavaCollator

    model, processor = model_and_processor
    rows = []
    for seed, seconds in ((0, 0.6), (1, 0.25)):
        wav = tmp_path / f"clip{seed}.wav"
        soundfile.write(wav, random_audio(seed, seconds), 16000, subtype="FLOAT")
        rows.append(_training_row(f"s{seed}", wav, "a tone"))
    collator = TinyLlavaCollator(processor, packing=packing)
    batch = collator(rows)
    assert sorted(batch["feature_attention_mask"].sum(-1).tolist()) == [25, 60]
    assert count(batch, model.config.audio_token_id) == ([15 + 7] if packing else [15, 7])
    for row in rows:
        single = collator.encode(row)
        assert collator.measure(row).length == single["input_ids"].shape[0]
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_collator_dummy_audio_with_the_trimming_processor(trimming_processor, model_and_processor):
    from tinyllava_hf.train.collator import TinyLlavaCollator

    model, processor = model_and_processor
    text_row = {
        "id": "t",
        "messages_json": json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
        "images": [],
        "audios": [],
    }
    batch = TinyLlavaCollator(processor, dummy_media=True)([text_row])
    assert batch["feature_attention_mask"].shape[0] == batch["input_features"].shape[0] == 1
    assert count(batch, model.config.audio_token_id) == [processor.audio_token_count(10)]
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_audio_feature_cache_changes_nothing(model_and_processor, trimming_processor, monkeypatch):
    """`TINYLLAVA_HF_AUDIO_FEATURE_CACHE=1`: log-mel features and tower outputs computed once per distinct clip,
    equal to the uncached ones (a repeated clip, batched, trimmed)."""
    from tinyllava_hf import modeling_tinyllava, processing_tinyllava

    model, processor = model_and_processor
    conversations = [*CONVERSATIONS, CONVERSATIONS[0]]  # 4 distinct clips, one of them twice
    expected = processor.apply_chat_template(conversations, **CHAT, **LEFT_PADDED)
    with torch.no_grad():
        expected_logits = model(**expected).logits
    monkeypatch.setenv("TINYLLAVA_HF_AUDIO_FEATURE_CACHE", "1")
    monkeypatch.setattr(processing_tinyllava, "_FEATURE_CACHE", {})
    monkeypatch.setattr(modeling_tinyllava, "_ENV_AUDIO_FEATURE_CACHE", {})
    # As loaded by from_pretrained: every parameter requires grad; under no_grad (generation) the cache serves.
    assert model.model.audio_tower.layers[0].fc1.weight.requires_grad
    for _ in range(2):  # filling, then hitting the caches
        cached = processor.apply_chat_template(conversations, **CHAT, **LEFT_PADDED)
        assert cached.keys() == expected.keys()
        for key in expected:
            assert torch.equal(cached[key], expected[key]), key
        with torch.no_grad():
            torch.testing.assert_close(model(**cached).logits, expected_logits)
    assert len(processing_tinyllava._FEATURE_CACHE) == len(modeling_tinyllava._ENV_AUDIO_FEATURE_CACHE) == 4
    # With gradients on and a trainable tower it must be bypassed: a cached output would carry no gradient.
    modeling_tinyllava._ENV_AUDIO_FEATURE_CACHE.clear()
    model(**cached).logits.sum().backward()
    assert not modeling_tinyllava._ENV_AUDIO_FEATURE_CACHE
    assert model.model.audio_tower.layers[0].fc1.weight.grad.any()
    model.zero_grad()
