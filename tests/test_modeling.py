"""Forward, backward, generate and save/load checks over the whole (LM family x vision tower x connector) matrix."""

import copy
import re

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from tinyllava_hf import TinyLlavaConfig, TinyLlavaForConditionalGeneration, TinyLlavaModel
from tinyllava_hf.configuration_tinyllava import CONNECTOR_NAMES
from tinyllava_hf.connectors_tinyllava import CONNECTORS, build_connector, list_connectors
from tinyllava_hf.testing_utils import (
    CONNECTOR_SETTINGS,
    TEXT_FAMILIES,
    VISION_TOWERS,
    tiny_config,
    tiny_tokenizer,
)

FAMILIES = list(TEXT_FAMILIES)
TOWERS = list(VISION_TOWERS)
CONNECTORS_UNDER_TEST = list(CONNECTOR_SETTINGS)
MATRIX = [(f, t, c) for f in FAMILIES for t in TOWERS for c in CONNECTORS_UNDER_TEST] + [
    (f, "clip+dinov2", "mof") for f in FAMILIES
]

# Tower parameters that cannot influence the output when features come from hidden_states[-2] of a 2-layer tower:
# the last encoder layer, the final norm, SigLIP's pooling head and DINOv2's mask token (used only for masked
# image modelling). Listed exactly so that any other parameter without a gradient fails the test.
UNUSED_TOWER_PARAMETERS = {
    "clip_vision_model": [r"encoder\.layers\.1\.", r"post_layernorm\."],
    "siglip_vision_model": [r"encoder\.layers\.1\.", r"post_layernorm\.", r"head\."],
    "dinov2": [r"encoder\.layer\.1\.", r"layernorm\.", r"embeddings\.mask_token$"],
}


def build(family, tower, connector, **overrides) -> TinyLlavaForConditionalGeneration:
    torch.manual_seed(0)
    config = tiny_config(family, tower.split("+")[0], connector, **overrides)
    return TinyLlavaForConditionalGeneration(config).eval()


def make_inputs(config: TinyLlavaConfig, num_images: int = 2, seed: int = 0) -> dict:
    """A batch of `num_images` rows, each: BOS, a few text tokens, the image placeholders, more text."""
    generator = torch.Generator().manual_seed(seed)
    tokenizer = tiny_tokenizer()
    rows = []
    for _ in range(num_images):
        before = torch.randint(10, 200, (3,), generator=generator).tolist()
        after = torch.randint(10, 200, (4,), generator=generator).tolist()
        rows.append([tokenizer.bos_token_id, *before, *[config.image_token_id] * config.num_image_tokens, *after])
    size = config.vision_config.image_size
    return dict(
        input_ids=torch.tensor(rows),
        attention_mask=torch.ones(len(rows), len(rows[0]), dtype=torch.long),
        pixel_values=torch.randn(num_images, 3, size, size, generator=generator),
    )


def expected_without_gradient(model: TinyLlavaForConditionalGeneration) -> set[str]:
    expected = set()
    towers = [("model.vision_tower.", model.config.vision_config)]
    if model.config.vision_aux_config is not None:
        towers.append(("model.vision_tower_aux.", model.config.vision_aux_config))
    for prefix, tower_config in towers:
        patterns = [
            re.compile(re.escape(prefix) + pattern) for pattern in UNUSED_TOWER_PARAMETERS[tower_config.model_type]
        ]
        for name, _ in model.named_parameters():
            if any(pattern.match(name) for pattern in patterns):
                expected.add(name)
    return expected


@pytest.mark.parametrize(("family", "tower", "connector"), MATRIX)
def test_forward_backward(family, tower, connector):
    model = build(family, tower, connector).train()
    config = model.config
    inputs = make_inputs(config)
    outputs = model(**inputs, labels=inputs["input_ids"])

    batch, length = inputs["input_ids"].shape
    assert outputs.logits.shape == (batch, length, config.text_config.vocab_size)
    assert outputs.image_hidden_states.shape == (2, config.num_image_tokens, config.text_config.hidden_size)
    assert torch.isfinite(outputs.loss)
    # The features really sit at the placeholders.
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    spliced = model.model._scatter_features(
        inputs["input_ids"], embeds, outputs.image_hidden_states, config.image_token_id, "image"
    )
    assert torch.equal(
        spliced[inputs["input_ids"] == config.image_token_id], outputs.image_hidden_states.flatten(0, 1)
    )

    outputs.loss.backward()
    without_grad = {
        name
        for name, param in model.named_parameters()
        if param.requires_grad and (param.grad is None or not param.grad.any())
    }
    assert without_grad == expected_without_gradient(model)


@pytest.mark.parametrize(("family", "tower", "connector"), MATRIX)
def test_generate_with_cache_equals_without(family, tower, connector):
    model = build(family, tower, connector)
    inputs = make_inputs(model.config, num_images=1)
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=tiny_tokenizer().pad_token_id)
    with_cache = model.generate(**inputs, use_cache=True, **settings)
    without_cache = model.generate(**inputs, use_cache=False, **settings)
    assert with_cache.shape == (1, inputs["input_ids"].shape[1] + 4)
    assert torch.equal(with_cache, without_cache)


@pytest.mark.parametrize(("family", "tower", "connector"), MATRIX)
def test_save_load_round_trip(family, tower, connector, tmp_path):
    model = build(family, tower, connector)
    inputs = make_inputs(model.config)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(reloaded) is TinyLlavaForConditionalGeneration
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reloaded(**inputs).logits)
    for name in ("configuration_tinyllava.py", "connectors_tinyllava.py", "modeling_tinyllava.py"):
        assert (tmp_path / name).is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_and_eager_attention_agree(family):
    torch.manual_seed(0)
    config = tiny_config(family, "clip", "mlp2x_gelu")
    # Each model gets its own config copy: the attention choice is recorded on the (sub-)configs.
    sdpa = TinyLlavaForConditionalGeneration._from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    eager = TinyLlavaForConditionalGeneration._from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.model.language_model.config._attn_implementation == "sdpa"
    assert eager.model.language_model.config._attn_implementation == "eager"
    assert eager.model.vision_tower.config._attn_implementation == "eager"
    inputs = make_inputs(config)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(**inputs).logits, eager(**inputs).logits, atol=1e-5, rtol=1e-5)


def test_default_attention_is_sdpa():
    model = build("llama", "siglip", "mlp2x_gelu")
    assert model.config._attn_implementation == "sdpa"
    assert model.model.language_model.config._attn_implementation == "sdpa"


def test_placeholder_feature_mismatch_is_a_clear_error():
    model = build("llama", "siglip", "mlp2x_gelu")
    inputs = make_inputs(model.config)
    inputs["input_ids"][0, -1] = model.config.image_token_id  # one placeholder too many
    with pytest.raises(ValueError, match=r"Image features and image tokens do not match: the input holds 7 <image>"):
        model(**inputs)
    inputs = make_inputs(model.config)
    with pytest.raises(ValueError, match="2 image\\(s\\) give 6 feature vectors"):
        model(input_ids=inputs["input_ids"][:1], pixel_values=inputs["pixel_values"])


def test_labels_at_placeholders_are_ignored():
    model = build("llama", "siglip", "mlp2x_gelu")
    inputs = make_inputs(model.config)
    labels = inputs["input_ids"].clone()
    masked = labels.masked_fill(labels == model.config.image_token_id, -100)
    with torch.no_grad():
        loss_raw = model(**inputs, labels=labels).loss
        loss_masked = model(**inputs, labels=masked).loss
    assert torch.equal(loss_raw, loss_masked)
    # ...while a label at an ordinary position does count.
    masked[0, -1] = -100
    with torch.no_grad():
        assert not torch.equal(model(**inputs, labels=masked).loss, loss_masked)


def test_text_only_batch_needs_no_image():
    model = build("llama", "siglip", "mlp2x_gelu")
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        out = model(input_ids=ids)
    assert out.logits.shape == (1, 4, model.config.text_config.vocab_size)
    assert out.image_hidden_states is None


def test_gradient_checkpointing_gives_same_loss_and_gradients():
    model = build("llama", "clip", "mlp2x_gelu").train()
    inputs = make_inputs(model.config)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.language_model.gradient_checkpointing
    checkpointed = model(**inputs, labels=inputs["input_ids"]).loss
    checkpointed.backward()
    torch.testing.assert_close(checkpointed, loss)
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5)


def test_resize_token_embeddings_keeps_model_working():
    model = build("llama", "siglip", "mlp2x_gelu")
    old = model.config.text_config.vocab_size
    model.resize_token_embeddings(old + 10)
    assert model.config.text_config.vocab_size == old + 10
    assert model.get_input_embeddings().weight.shape[0] == old + 10
    assert model.lm_head.weight.shape[0] == old + 10
    with torch.no_grad():
        assert model(**make_inputs(model.config)).logits.shape[-1] == old + 10


def test_tied_word_embeddings_follow_the_lm(tmp_path):
    tied = build("qwen2", "siglip", "mlp2x_gelu")
    assert tied.config.tie_word_embeddings
    assert tied.lm_head.weight.data_ptr() == tied.get_input_embeddings().weight.data_ptr()
    tied.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    untied = build("llama", "siglip", "mlp2x_gelu")
    assert not untied.config.tie_word_embeddings
    assert untied.lm_head.weight.data_ptr() != untied.get_input_embeddings().weight.data_ptr()


def test_phi_head_has_a_bias_like_phi2():
    assert build("phi", "siglip", "linear").lm_head.bias is not None
    assert build("llama", "siglip", "linear").lm_head.bias is None


def test_several_feature_layers_are_concatenated():
    model = build("llama", "clip", "mlp2x_gelu", vision_feature_layer=[-2, -1])
    assert model.model.connector.layers[0].in_features == 2 * model.config.vision_config.hidden_size
    inputs = make_inputs(model.config)
    with torch.no_grad():
        assert model(**inputs).image_hidden_states.shape[1] == model.config.num_image_tokens


def test_auto_classes_resolve_tinyllava():
    config = tiny_config()
    assert type(AutoModel.from_config(config)) is TinyLlavaModel
    assert type(AutoModelForImageTextToText.from_config(config)) is TinyLlavaForConditionalGeneration
    assert type(AutoModelForCausalLM.from_config(config)) is TinyLlavaForConditionalGeneration


def test_connector_registry_is_exact():
    assert list_connectors() == sorted(CONNECTOR_NAMES)
    assert set(CONNECTORS) == set(CONNECTOR_NAMES)
    for bad in ("mlp2x", "mlp0x_gelu", "MLP2x_gelu", "mlp2x_gelu_extra", "qformer2", "perceiver"):
        with pytest.raises(ValueError, match="Valid connector types: identity, linear, mlp{N}x_gelu"):
            build_connector(bad, tiny_config(), 8, 8)
    with pytest.raises(ValueError, match="Unknown connector type 'perceiver'"):
        tiny_config(connector="perceiver")


def test_mlp_depth_follows_the_name():
    for depth in (1, 2, 5):
        connector = build_connector(f"mlp{depth}x_gelu", tiny_config(), 8, 16)
        linears = [m for m in connector.modules() if isinstance(m, torch.nn.Linear)]
        assert len(linears) == depth


@pytest.mark.parametrize(
    ("tower", "strategy", "connector", "expected"),
    [
        # 16 px images, 8 px patches: a 2x2 grid of 4 patches.
        ("clip", "default", "mlp2x_gelu", 4),  # CLS dropped
        ("clip", "full", "mlp2x_gelu", 5),
        ("siglip", "default", "mlp2x_gelu", 3),  # no CLS: upstream drops a real patch
        ("siglip", "full", "linear", 4),
        ("dinov2", "default", "identity", 4),
        ("dinov2", "full", "mlp2x_gelu", 5),
        ("clip", "default", "qformer", 4),  # connector_num_queries
        ("siglip", "full", "resampler", 4),
        ("clip", "default", "mof", 8),  # two towers interleaved
    ],
)
def test_num_image_tokens(tower, strategy, connector, expected):
    config = tiny_config("llama", tower, connector, vision_feature_select_strategy=strategy)
    assert config.num_image_tokens == expected
    model = TinyLlavaForConditionalGeneration(config).eval()
    pixels = torch.randn(2, 3, config.vision_config.image_size, config.vision_config.image_size)
    with torch.no_grad():
        assert model.get_image_features(pixels).shape == (2, expected, config.text_config.hidden_size)


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="needs a second vision tower"):
        tiny_config(connector="mof", vision_aux_config=None)
    with pytest.raises(ValueError, match="Unsupported vision tower 'vit'"):
        tiny_config(vision_config=dict(model_type="vit", hidden_size=32, num_attention_heads=4))
    with pytest.raises(ValueError, match="identity' connector needs the tower width"):
        TinyLlavaForConditionalGeneration(tiny_config(connector="identity", vision_feature_layer=[-1, -2]))
    with pytest.raises(ValueError, match="audio_downsample_factor=3 must divide"):
        tiny_config(audio=True, audio_downsample_factor=3)


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config("gemma", "dinov2", "qformer", vision_feature_layer=[-3, -2])
    config.save_pretrained(tmp_path)
    reloaded = TinyLlavaConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.text_config.model_type == "gemma"
    assert reloaded.num_image_tokens == config.num_image_tokens


def test_placeholder_ids_are_never_embedded():
    """A placeholder id may lie past the LM vocabulary (tokenizers that fill it): it is never looked up."""
    inside = build("llama", "siglip", "mlp2x_gelu")
    outside = build("llama", "siglip", "mlp2x_gelu", image_token_id=inside.config.text_config.vocab_size + 7)
    outside.load_state_dict(inside.state_dict())
    inputs = make_inputs(inside.config)
    moved = dict(
        inputs,
        input_ids=inputs["input_ids"].masked_fill(
            inputs["input_ids"] == inside.config.image_token_id, outside.config.image_token_id
        ),
    )
    with torch.no_grad():
        assert torch.equal(inside(**inputs).logits, outside(**moved).logits)
        # Changing the placeholder's own embedding row changes nothing either.
        inside.get_input_embeddings().weight[inside.config.image_token_id] += 1.0
        assert torch.equal(inside(**inputs).logits, outside(**moved).logits)
