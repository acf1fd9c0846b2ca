"""Assemble a TinyLLaVA processor (and the matching config ids) from parts: a tokenizer, an image processor and,
for audio models, a Whisper feature extractor."""

from collections.abc import Mapping

from transformers import PreTrainedTokenizerBase

from .chat_templates import get_chat_template, list_chat_templates
from .configuration_tinyllava import TinyLlavaConfig
from .constants import AUDIO_TOKEN, IMAGE_TOKEN
from .processing_tinyllava import TinyLlavaAudioProcessor, TinyLlavaProcessor


def add_placeholder_tokens(tokenizer: PreTrainedTokenizerBase, audio: bool = False) -> dict[str, int]:
    """Add `<image>` (and `<audio>`) as special tokens when missing; return their ids.

    Whoever builds the model must make its embedding matrix cover them (`model.resize_token_embeddings`).
    """
    wanted = [IMAGE_TOKEN, AUDIO_TOKEN] if audio else [IMAGE_TOKEN]
    missing = [token for token in wanted if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return {token: tokenizer.convert_tokens_to_ids(token) for token in wanted}


# Name under which the LM's own chat template (from its tokenizer), when it has one, is kept beside ours.
LM_TEMPLATE_NAME = "lm"


def processor_chat_templates(default: str, lm_chat_template: str | None = None) -> dict[str, str]:
    """Every upstream TinyLLaVA template by name, `default` selected, plus the LM's own template as `lm`.

    Saved with the processor as `chat_template.jinja` (the default) and `additional_chat_templates/<name>.jinja`, so
    `processor.apply_chat_template(messages, chat_template="phi")` selects one by name.
    """
    return with_default_template({LM_TEMPLATE_NAME: lm_chat_template} if lm_chat_template else {}, default)


def with_default_template(chat_template: str | Mapping[str, str] | None, name: str) -> dict[str, str]:
    """A processor's templates with the one named `name` as the default.

    Every upstream template stays selectable by name, and so does every named template `chat_template` already has
    (the LM's own `lm`, a user's own), so a checkpoint switched to another template (pretrain -> llama between the
    training stages) keeps the whole set. A single template string (a checkpoint saved without names) is replaced.
    """
    current = dict(chat_template) if isinstance(chat_template, Mapping) else {}
    templates = {template: get_chat_template(template) for template in list_chat_templates()}
    templates.update({key: value for key, value in current.items() if key != "default"})
    if name not in templates:
        raise ValueError(f"Unknown chat template {name!r}; known templates: {', '.join(templates)}.")
    return {"default": templates[name], **templates}


def build_processor(
    config: TinyLlavaConfig,
    tokenizer: PreTrainedTokenizerBase,
    image_processor,
    feature_extractor=None,
    template: str = "llama",
    chat_template: str | dict[str, str] | None = None,
    image_aspect_ratio: str = "square",
) -> TinyLlavaProcessor:
    """A processor whose placeholder counts come from `config`, and whose token ids `config` is updated to match.

    `template` names the default upstream chat template; all others (and the LM's own) stay selectable by name.
    `chat_template` overrides the whole set with the given template(s).
    """
    if chat_template is None:
        chat_template = processor_chat_templates(template, getattr(tokenizer, "chat_template", None))
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
