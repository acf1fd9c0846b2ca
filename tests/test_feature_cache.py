"""Vision feature cache (`tinyllava_hf.train.feature_cache`): a hit equals recomputation bitwise, a changed image or
tower is recomputed, a trainable tower is refused, and the option reaches a training run."""

import pytest
import torch

from tinyllava_hf import TinyLlavaForConditionalGeneration
from tinyllava_hf.testing_utils import random_image, tiny_config, tiny_processor
from tinyllava_hf.train.feature_cache import (
    TowerNotFrozenError,
    disable_vision_feature_cache,
    enable_vision_feature_cache,
)


@pytest.fixture
def model_and_pixels():
    config = tiny_config()
    torch.manual_seed(0)
    model = TinyLlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.requires_grad_(False)
    processor = tiny_processor(config)
    pixels = processor.image_processor(images=[random_image(i) for i in range(3)], return_tensors="pt")
    return model, pixels["pixel_values"]


def features(model, pixel_values):
    with torch.no_grad():
        return model.get_image_features(pixel_values)


@pytest.mark.parametrize("on_disk", [False, True])
def test_hit_equals_recomputation_bitwise(model_and_pixels, tmp_path, on_disk):
    model, pixels = model_and_pixels
    expected = features(model, pixels)
    cache = enable_vision_feature_cache(model, cache_dir=tmp_path if on_disk else None)
    first = features(model, pixels)
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 3)
    second = features(model, pixels)
    assert (cache.hits, cache.misses) == (3, 3)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    # A batch mixing a cached and a new image: only the new one is computed.
    mixed = torch.stack([pixels[1], pixels[0] * 0.5])
    assert torch.equal(features(model, mixed)[0], expected[1])
    assert cache.misses == 4
    disable_vision_feature_cache(model)
    assert torch.equal(features(model, pixels), expected)


def test_changed_image_is_recomputed(model_and_pixels):
    model, pixels = model_and_pixels
    cache = enable_vision_feature_cache(model)
    features(model, pixels)
    changed = pixels.clone()
    changed[0, 0, 0, 0] += 0.25  # one pixel
    result = features(model, changed)
    assert cache.misses == 4 and cache.hits == 2
    disable_vision_feature_cache(model)
    assert torch.equal(result, features(model, changed))


def test_tower_change_invalidates(model_and_pixels, tmp_path):
    model, pixels = model_and_pixels
    cache = enable_vision_feature_cache(model, cache_dir=tmp_path)
    before = features(model, pixels)
    with torch.no_grad():  # in place, as loading other weights would
        model.model.vision_tower.encoder.layers[0].mlp.fc1.weight.mul_(2.0)
    after = features(model, pixels)
    assert cache.misses == 6 and cache.hits == 0
    assert not torch.equal(after, before)
    disable_vision_feature_cache(model)
    assert torch.equal(after, features(model, pixels))
    # The feature layer is part of the key as well.
    model.config.vision_feature_layer = -1
    cache = enable_vision_feature_cache(model, cache_dir=tmp_path)
    features(model, pixels)
    assert cache.misses == 3


def test_trainable_tower_is_refused(model_and_pixels):
    model, pixels = model_and_pixels
    model.model.vision_tower.encoder.layers[-1].requires_grad_(True)
    with pytest.raises(TowerNotFrozenError, match="frozen vision tower"):
        enable_vision_feature_cache(model)
    model.model.vision_tower.requires_grad_(False)
    enable_vision_feature_cache(model)
    model.model.vision_tower.encoder.layers[0].requires_grad_(True)  # unfrozen after the cache was turned on
    with pytest.raises(TowerNotFrozenError):
        features(model, pixels)


def test_dropout_in_training_mode_is_refused(model_and_pixels):
    model, _ = model_and_pixels
    model.model.vision_tower.config.attention_dropout = 0.1
    model.train()
    with pytest.raises(TowerNotFrozenError, match="dropout"):
        enable_vision_feature_cache(model)


def test_cache_option_needs_a_frozen_tower():
    from tinyllava_hf.train.arguments import ModelArguments

    with pytest.raises(ValueError, match="cache_vision_features"):
        ModelArguments(
            llm="x", vision_tower="y", template="pretrain", cache_vision_features=True, tune_vision_tower="full"
        )
    args = ModelArguments(llm="x", vision_tower="y", template="pretrain", cache_vision_features=True)
    assert args.cache_vision_features and args.vision_feature_cache_dir is None


def test_training_run_with_the_cache(parts, tmp_path):
    """Two epochs of stage 1 with the cache: the second epoch is all hits, and the run trains what it would without."""
    from trl import SFTConfig

    from tinyllava_hf.train.arguments import DataArguments, ModelArguments
    from tinyllava_hf.train.trainer import run_training

    def train(output_dir, cache):
        config = SFTConfig(
            output_dir=str(output_dir),
            num_train_epochs=2,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            max_length=256,
            bf16=False,
            use_cpu=True,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=3,
            dataloader_num_workers=0,
        )
        args = ModelArguments(
            llm=str(parts["llm"]),
            vision_tower=str(parts["siglip"]),
            template="pretrain",
            tune_llm="frozen",
            cache_vision_features=cache,
        )
        data = DataArguments(data_path=[str(parts["pretrain"])], image_folder=str(parts["data"]), max_samples=8)
        return run_training(args, data, config)

    plain = train(tmp_path / "plain", False)
    cached = train(tmp_path / "cached", True)
    cache = cached.model.model._vision_feature_cache
    assert cache.misses == 8 and cache.hits == 8  # 8 images, 2 epochs
    losses = [[entry["loss"] for entry in t.state.log_history if "loss" in entry] for t in (plain, cached)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)
