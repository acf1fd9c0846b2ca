"""Generation through the processor: batched left-padded generation, mixed image/text batches, streaming, audio."""

from threading import Thread

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, TextIteratorStreamer

from tinyllava_hf import TinyLlavaAudioProcessor, TinyLlavaForConditionalGeneration
from tinyllava_hf.testing_utils import random_audio, random_image, scramble, tiny_config, tiny_processor

CONVERSATIONS = [
    [
        {
            "role": "user",
            "content": [{"type": "image", "image": random_image(0)}, {"type": "text", "text": "What shape?"}],
        }
    ],
    [{"role": "user", "content": [{"type": "text", "text": "Is there a triangle in the picture?"}]}],
    [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What color is it?"}, {"type": "image", "image": random_image(1)}],
        }
    ],
    [
        {"role": "user", "content": [{"type": "image", "image": random_image(2)}, {"type": "text", "text": "Shape?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "circle"}]},
        {"role": "user", "content": [{"type": "text", "text": "And the color?"}]},
    ],
]
GREEDY = dict(max_new_tokens=6, do_sample=False)


@pytest.fixture(scope="module")
def model_and_processor():
    config = tiny_config("llama", "siglip", "mlp2x_gelu")
    processor = tiny_processor(config)
    processor.tokenizer.padding_side = "left"
    torch.manual_seed(0)
    model = scramble(TinyLlavaForConditionalGeneration(config).eval(), std=0.3)
    return model, processor


def generate_one(model, processor, conversation) -> list[int]:
    inputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    output = model.generate(**inputs, **GREEDY, pad_token_id=processor.tokenizer.pad_token_id)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def test_batched_left_padded_generation_equals_one_by_one(model_and_processor):
    model, processor = model_and_processor
    one_by_one = [generate_one(model, processor, conversation) for conversation in CONVERSATIONS]
    # The comparison only means something if different prompts give different continuations.
    assert len({tuple(tokens) for tokens in one_by_one}) > 1

    batch = processor.apply_chat_template(
        CONVERSATIONS,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )
    assert batch["pixel_values"].shape[0] == 3  # the text-only row contributes no image
    assert (batch["attention_mask"][:, 0] == 0).any()  # left padding really happened
    output = model.generate(**batch, **GREEDY, pad_token_id=processor.tokenizer.pad_token_id)
    assert output[:, batch["input_ids"].shape[1] :].tolist() == one_by_one


def test_streamer_yields_the_generated_text(model_and_processor):
    model, processor = model_and_processor
    inputs = processor.apply_chat_template(
        CONVERSATIONS[0], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    # A timeout, so that a failing generate thread fails the test instead of blocking the iterator forever.
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    settings = dict(**inputs, **GREEDY, streamer=streamer, pad_token_id=processor.tokenizer.pad_token_id)
    thread = Thread(target=model.generate, kwargs=settings)
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    expected = processor.decode(generate_one(model, processor, CONVERSATIONS[0]), skip_special_tokens=True)
    assert streamed == expected
    assert streamed.strip()


def test_generation_prompt_ends_with_assistant_colon(model_and_processor):
    _, processor = model_and_processor
    prompt = processor.apply_chat_template(CONVERSATIONS[2], add_generation_prompt=True)
    assert prompt.endswith("USER: <image>\nWhat color is it? ASSISTANT:")


@pytest.fixture(scope="module")
def audio_model_and_processor():
    config = tiny_config("qwen2", "clip", "mlp2x_gelu", audio=True)
    processor = tiny_processor(config, tower="clip", template="qwen2_base")
    torch.manual_seed(0)
    return scramble(TinyLlavaForConditionalGeneration(config).eval(), std=0.3), processor


AUDIO_CONVERSATION = [
    {
        "role": "user",
        "content": [
            {"type": "audio", "audio": random_audio(0)},
            {"type": "image", "image": random_image(3)},
            {"type": "text", "text": "What is said?"},
        ],
    }
]


def test_audio_model_forward_backward_generate(audio_model_and_processor):
    model, processor = audio_model_and_processor
    assert isinstance(processor, TinyLlavaAudioProcessor)
    inputs = processor.apply_chat_template(AUDIO_CONVERSATION, tokenize=True, return_dict=True, return_tensors="pt")
    config = model.config
    assert inputs["input_features"].shape == (1, 80, 2 * config.audio_config.max_source_positions)
    # The clip's own tokens (trim_audio_padding, the default), fewer than the window's 25.
    count = processor.audio_token_count(int(inputs["feature_attention_mask"].sum()))
    assert (inputs["input_ids"] == config.audio_token_id).sum() == count < config.num_audio_tokens == 25
    assert (inputs["input_ids"] == config.image_token_id).sum() == config.num_image_tokens

    model.train()
    outputs = model(**inputs, labels=inputs["input_ids"])
    assert outputs.audio_hidden_states.shape == (count, config.text_config.hidden_size)
    outputs.loss.backward()
    assert all(p.grad is not None and p.grad.any() for p in model.model.audio_connector.parameters())
    assert model.model.audio_tower.layers[0].fc1.weight.grad.any()
    model.zero_grad()
    model.eval()

    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
    # The audio matters: another clip changes the logits.
    other = processor.apply_chat_template(
        [
            {
                **AUDIO_CONVERSATION[0],
                "content": [{"type": "audio", "audio": random_audio(1)}, *AUDIO_CONVERSATION[0]["content"][1:]],
            }
        ],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits, model(**other).logits)


def test_audio_model_and_processor_round_trip(audio_model_and_processor, tmp_path):
    model, processor = audio_model_and_processor
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded_processor, TinyLlavaAudioProcessor)
    assert reloaded_processor.num_audio_tokens == processor.num_audio_tokens
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    inputs = reloaded_processor.apply_chat_template(
        AUDIO_CONVERSATION, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reloaded(**inputs).logits)


def test_audio_without_audio_tower_is_a_clear_error(model_and_processor):
    model, _ = model_and_processor
    with pytest.raises(ValueError, match="no audio tower"):
        model.get_audio_features(torch.zeros(1, 80, 100))
