"""Assemble a TinyLLaVA processor (and the matching config ids) from parts: a tokenizer, an image processor and,
for audio models, a Whisper feature extractor."""

from transformers import PreTrainedTokenizerBase

from .configuration_tinyllava import TinyLlavaConfig
from .processing_tinyllava import TinyLlavaAudioProcessor, TinyLlavaProcessor

IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<audio>"


def add_placeholder_tokens(tokenizer: PreTrainedTokenizerBase, audio: bool = False) -> dict[str, int]:
    """Add `<image>` (and `<audio>`) as special tokens when missing; return their ids.

    Whoever builds the model must make its embedding matrix cover them (`model.resize_token_embeddings`).
    """
    wanted = [IMAGE_TOKEN, AUDIO_TOKEN] if audio else [IMAGE_TOKEN]
    missing = [token for token in wanted if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return {token: tokenizer.convert_tokens_to_ids(token) for token in wanted}


def build_processor(
    config: TinyLlavaConfig,
    tokenizer: PreTrainedTokenizerBase,
    image_processor,
    feature_extractor=None,
    chat_template: str | None = None,
    image_aspect_ratio: str = "square",
) -> TinyLlavaProcessor:
    """A processor whose placeholder counts come from `config`, and whose token ids `config` is updated to match."""
    ids = add_placeholder_tokens(tokenizer, audio=config.audio_config is not None)
    config.image_token_id = ids[IMAGE_TOKEN]
    common = dict(
        tokenizer=tokenizer,
        image_processor=image_processor,
        chat_template=chat_template,
        num_image_tokens=config.num_image_tokens,
        image_aspect_ratio=image_aspect_ratio,
        image_token=IMAGE_TOKEN,
    )
    if config.audio_config is None:
        return TinyLlavaProcessor(**common)
    if feature_extractor is None:
        raise ValueError("This config has an audio tower: pass its Whisper feature extractor too.")
    config.audio_token_id = ids[AUDIO_TOKEN]
    return TinyLlavaAudioProcessor(
        feature_extractor=feature_extractor,
        num_audio_tokens=config.num_audio_tokens,
        audio_token=AUDIO_TOKEN,
        **common,
    )
