"""TinyLLaVA processors: image processor + tokenizer (+ Whisper feature extractor for audio models).

Each `<image>` / `<audio>` in the text is expanded into exactly as many placeholder tokens as the model fills, a
number stored in `processor_config.json` when the processor is built from the model config (never guessed here).

Shipped as remote code: imports only transformers/PIL/numpy and its flat sibling `constants.py`, never `tinyllava_hf`.
"""

import base64
import binascii
import hashlib
import math
import os

import numpy as np
from PIL import Image
from transformers import BatchFeature, ProcessorMixin
from transformers.audio_utils import load_audio
from transformers.image_transforms import convert_to_rgb, to_pil_image
from transformers.image_utils import make_flat_list_of_images

from .constants import AUDIO_TOKEN, IMAGE_TOKEN

IMAGE_ASPECT_RATIOS = ("square", "pad")
# Opt-in per-clip log-mel cache (see `TinyLlavaAudioProcessor._cached_features`), turned on by the environment variable
# that also turns on the model's audio tower cache.
AUDIO_FEATURE_CACHE_ENV = "TINYLLAVA_HF_AUDIO_FEATURE_CACHE"
_FEATURE_CACHE: dict = {}


def expand_to_square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Paste `image` centred on a square canvas of its longer side, filled with `background` (LLaVA-1.5's pad mode)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def to_rgb_image(image) -> Image.Image:
    """Any image input as an RGB PIL image, converted the way the image processors' `do_convert_rgb` does.

    Padding draws a 3-channel background, so palette (`P`), grayscale (`L`, `LA`, `I;16`), `CMYK` and alpha images
    are converted first; transparency is composited onto white, as transformers' `convert_to_rgb` (and so the
    `square` path) does, while the padding itself stays the mean colour.
    """
    if not isinstance(image, Image.Image):
        image = to_pil_image(image)  # arrays and tensors, channels first or last, float or uint8
    return image if image.mode == "RGB" else Image.fromarray(convert_to_rgb(image, return_numpy=True))


def _missing_image_file(image) -> str | None:
    """`image` when it is a string that names no file and is neither a URL nor base64 data, else None.

    transformers tries base64 last, so a mistyped path fails with "Invalid base64-encoded string"; naming the path
    says what is actually wrong.
    """
    if not isinstance(image, str) or image.startswith(("http://", "https://", "data:image/")) or os.path.isfile(image):
        return None
    try:
        base64.b64decode("".join(image.split()), validate=True)
    except (binascii.Error, ValueError):
        return image
    return None


def _flatten(items) -> list:
    """Nested lists/tuples of images (one list per sample) as one flat list."""
    if not isinstance(items, (list, tuple)):
        return [items]
    return [leaf for item in items for leaf in _flatten(item)]


def resample_audio(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """`waveform` (1-D) resampled from `source_rate` to `target_rate` Hz, by band-limited (Fourier) interpolation.

    Plain numpy, because this file ships as remote code: the spectrum is cut (or zero-extended) at the new Nyquist
    frequency, which is the ideal low-pass for a clip treated as one period. Speech clips start and end near
    silence, so the wrap-around this assumes costs nothing audible.
    """
    if source_rate == target_rate:
        return waveform.astype(np.float32, copy=False)
    length = waveform.shape[0]
    new_length = max(1, round(length * target_rate / source_rate))
    spectrum = np.fft.rfft(waveform.astype(np.float64))
    kept = np.zeros(new_length // 2 + 1, dtype=spectrum.dtype)
    bins = min(kept.size, spectrum.size)
    kept[:bins] = spectrum[:bins]
    return (np.fft.irfft(kept, n=new_length) * (new_length / length)).astype(np.float32)


def as_mono_waveform(audio, where: str) -> np.ndarray:
    """A 1-D float32 array from an array-like clip; a multi-channel or empty clip is an error naming `where`."""
    waveform = np.asarray(audio)
    if waveform.ndim == 2 and 1 in waveform.shape:
        waveform = waveform.reshape(-1)
    if waveform.ndim != 1 or waveform.size == 0 or not np.issubdtype(waveform.dtype, np.number):
        raise ValueError(
            f"{where} must be a non-empty 1-D (mono) array of samples, got shape {waveform.shape} and dtype "
            f"{waveform.dtype}: average the channels of stereo audio first."
        )
    return waveform.astype(np.float32, copy=False)


def _check_sampling_rate(sampling_rate, where: str) -> int:
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float, np.number)) or sampling_rate <= 0:
        raise ValueError(f"{where} has an invalid sampling_rate {sampling_rate!r}: give the clip's rate in Hz.")
    if sampling_rate != int(sampling_rate):
        raise ValueError(f"{where} has a non-integer sampling_rate {sampling_rate!r}: give the clip's rate in Hz.")
    return int(sampling_rate)


def load_audio_file(source: str, sampling_rate: int, backend: str = "auto") -> np.ndarray:
    """Decode an audio file path, URL or base64 string at `sampling_rate`, with errors that name the source."""
    is_remote = source.startswith(("http://", "https://", "data:"))
    if not is_remote and not os.path.isfile(source) and _missing_image_file(source) is not None:
        raise FileNotFoundError(f"Audio file not found: {source!r} (resolved from {os.getcwd()}).")
    try:
        waveform = load_audio(source, sampling_rate=sampling_rate, backend=backend)
    except (OSError, RuntimeError, ValueError, TypeError) as error:
        shown = source if len(source) < 200 else source[:60] + "..."
        raise ValueError(f"Cannot read audio {shown!r}: {error}") from error
    return as_mono_waveform(waveform, f"Audio {source!r}")


def placeholder_token_id(tokenizer, token: str) -> int:
    """Id of a placeholder token, which must exist as a single (special) token of the tokenizer."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"The tokenizer has no {token!r} token; add it as a special token first.")
    return token_id


class TinyLlavaProcessor(ProcessorMixin):
    r"""
    Processor for vision-language TinyLLaVA checkpoints.

    Args:
        image_processor: the vision tower's own image processor (CLIP, SigLIP or DINOv2).
        tokenizer: the LM's tokenizer, holding `<image>` as a special token.
        chat_template (`str`, *optional*): the default Jinja chat template.
        num_image_tokens (`int`): placeholders per image (`TinyLlavaConfig.num_image_tokens`).
        image_aspect_ratio (`str`): `square` (the processor's own resize/crop) or `pad` (pad to a square of the mean
            colour first, as LLaVA-1.5 and upstream TinyLLaVA's `pad` mode do).
        image_token (`str`): the placeholder string in prompts.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        num_image_tokens: int = 1,
        image_aspect_ratio: str = "square",
        image_token: str = IMAGE_TOKEN,
        **kwargs,
    ):
        self._set_image_settings(tokenizer, num_image_tokens, image_aspect_ratio, image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def _set_image_settings(self, tokenizer, num_image_tokens: int, image_aspect_ratio: str, image_token: str):
        if image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio must be one of {IMAGE_ASPECT_RATIOS}, got {image_aspect_ratio!r}")
        self.num_image_tokens = num_image_tokens
        self.image_aspect_ratio = image_aspect_ratio
        self.image_token = image_token
        self.image_token_id = placeholder_token_id(tokenizer, image_token)

    def _pad_background(self) -> tuple[int, int, int]:
        # Upstream truncates (int()) rather than rounds the mean colour: (122, 116, 104) for CLIP.
        return tuple(int(mean * 255) for mean in self.image_processor.image_mean)

    def _process_images(self, images, **kwargs):
        if self.image_aspect_ratio == "pad":
            background = self._pad_background()
            images = [expand_to_square(to_rgb_image(image), background) for image in make_flat_list_of_images(images)]
        return super()._process_images(images, **kwargs)

    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        if images is not None:
            for image in _flatten(images):
                if (missing := _missing_image_file(image)) is not None:
                    raise FileNotFoundError(
                        f"Image file not found: {missing!r} (resolved from {os.getcwd()}). Give an existing image "
                        "path, an http(s) URL, base64 data or a PIL image."
                    )
        return super().prepare_inputs_layout(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        # ProcessorMixin silently skips a modality it has no sub-processor for, and the model would answer without
        # it; refuse instead.
        self._check_modalities(has_audio=audio is not None, has_video=videos is not None)
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def _check_modalities(self, has_audio: bool, has_video: bool):
        if has_audio and self._audio_processor is None:
            raise ValueError(
                "Audio input was given, but this checkpoint has no audio tower (its processor has no feature "
                "extractor): remove the audio, or use a TinyLLaVA checkpoint with an audio tower."
            )
        if has_video:
            raise ValueError("TinyLLaVA takes no video input: pass frames as images instead.")

    def apply_chat_template(self, conversation, *args, **kwargs):
        # Checked before transformers loads any media from the conversation (an audio block would be decoded first,
        # then dropped by a vision-only processor).
        # A transformers helper (5.x); without it the check falls back to `validate_inputs`, after loading.
        normalize = getattr(self, "_normalize_conversations", None)
        conversations = normalize(conversation)[0] if normalize is not None else []
        types = {
            block.get("type")
            for messages in conversations
            for message in messages
            if isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict)
        }
        self._check_modalities(has_audio="audio" in types, has_video="video" in types)
        return super().apply_chat_template(conversation, *args, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.num_image_tokens

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved processor; a folder that declares `num_audio_tokens` loads as `TinyLlavaAudioProcessor`.

        `AutoProcessor` maps the config class to one processor class and finds classes by the saved
        `processor_class` name only among registered ones, so both variants save `TinyLlavaProcessor` there and the
        variant is chosen here.
        """
        if cls is TinyLlavaProcessor:
            processor_dict, _ = cls.get_processor_dict(pretrained_model_name_or_path, **kwargs)
            if "num_audio_tokens" in processor_dict:
                return TinyLlavaAudioProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["processor_class"] = TinyLlavaProcessor.__name__  # see from_pretrained
        return output

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        names = list(self.tokenizer.model_input_names) + list(self.image_processor.model_input_names)
        return list(dict.fromkeys(names))


class TinyLlavaAudioProcessor(TinyLlavaProcessor):
    r"""
    Processor for TinyLLaVA checkpoints with an audio tower: adds a Whisper feature extractor and `<audio>`.

    Audio comes as `audio=` arrays (16 kHz, or any rate given as `sampling_rate=`, resampled) or, in chat
    messages, as `{"type": "audio", "path" | "url": ...}` or `{"type": "audio", "audio": array, "sampling_rate": sr}`
    blocks (an array without `sampling_rate` is taken to be at the feature extractor's rate, as transformers does).
    A clip longer than the Whisper window (30 s) is an error rather than silently truncated: split it into several
    clips, one `<audio>` each.

    Args:
        feature_extractor: a `WhisperFeatureExtractor` (30 s windows of log-mel features).
        num_audio_tokens (`int`): placeholders per audio clip (`TinyLlavaConfig.num_audio_tokens`): one window.
        audio_token (`str`): the audio placeholder string in prompts.
        trim_audio_padding (`bool`, default `True`): expand each `<audio>` into as many placeholders as the clip's
            real length needs (`audio_token_count`), not a whole window, and return `feature_attention_mask` (1 on
            the clip's log-mel frames) with which the model keeps only those features: the padding silence of a
            short question is then neither LM input nor sequence length. `False` gives every clip a whole window
            of placeholders. A saved processor without the setting (saved before it existed) loads with it off,
            the layout its model was trained on.
        Other arguments as `TinyLlavaProcessor`.
    """

    def __init__(
        self,
        image_processor=None,
        feature_extractor=None,
        tokenizer=None,
        chat_template: str | None = None,
        num_image_tokens: int = 1,
        image_aspect_ratio: str = "square",
        image_token: str = IMAGE_TOKEN,
        num_audio_tokens: int = 1,
        audio_token: str = AUDIO_TOKEN,
        trim_audio_padding: bool = True,
        **kwargs,
    ):
        self._set_image_settings(tokenizer, num_image_tokens, image_aspect_ratio, image_token)
        self.num_audio_tokens = num_audio_tokens
        self.audio_token = audio_token
        self.audio_token_id = placeholder_token_id(tokenizer, audio_token)
        self.trim_audio_padding = trim_audio_padding
        # ProcessorMixin takes every sub-processor in one call, so skip TinyLlavaProcessor.__init__ (two of them).
        ProcessorMixin.__init__(
            self, image_processor, feature_extractor, tokenizer, chat_template=chat_template, **kwargs
        )
        if trim_audio_padding and feature_extractor.nb_max_frames % num_audio_tokens:
            raise ValueError(
                f"trim_audio_padding needs num_audio_tokens ({num_audio_tokens}) to divide the window's "
                f"{feature_extractor.nb_max_frames} log-mel frames."
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """As `TinyLlavaProcessor.from_pretrained`; a saved processor that predates `trim_audio_padding` keeps
        whole-window placeholders (the layout its model was trained on)."""
        if "trim_audio_padding" not in kwargs:
            processor_dict, _ = cls.get_processor_dict(pretrained_model_name_or_path, **kwargs)
            if "trim_audio_padding" not in processor_dict:
                kwargs["trim_audio_padding"] = False
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate

    def audio_token_count(self, num_frames: int) -> int:
        """Placeholders for a clip of `num_frames` log-mel frames (`feature_attention_mask.sum()`), at most a window.

        Whisper's second convolution halves the frames and the connector stacks `audio_downsample_factor` encoder
        frames per token, so one token covers `nb_max_frames / num_audio_tokens` log-mel frames; a partly filled
        last token counts. The model must keep the same number: `ceil(ceil(num_frames / 2) / factor)` (equal).
        """
        frames_per_token = self.feature_extractor.nb_max_frames // self.num_audio_tokens
        return min(self.num_audio_tokens, max(1, math.ceil(int(num_frames) / frames_per_token)))

    def _load_block_audio(self, block: dict, where: str) -> dict:
        """An audio content block with its clip decoded/resampled to a 1-D array at the feature extractor's rate."""
        sources = [key for key in ("audio", "url", "path") if key in block]
        if len(sources) != 1:
            if not sources:  # a bare {"type": "audio"} marks where `audio=` clips go; nothing to load
                return block
            raise ValueError(f"{where} has {', '.join(sources)}: give exactly one of audio, url or path.")
        source = block[sources[0]]
        if isinstance(source, str):
            waveform = load_audio_file(source, self.sampling_rate)
        else:
            waveform = as_mono_waveform(source, where)
            rate = _check_sampling_rate(block.get("sampling_rate", self.sampling_rate), where)
            waveform = resample_audio(waveform, rate, self.sampling_rate)
        return {key: value for key, value in block.items() if key not in ("url", "path", "sampling_rate")} | {
            "audio": waveform
        }

    def apply_chat_template(self, conversation, *args, **kwargs):
        # transformers loads `path`/`url` blocks itself but passes arrays through without their `sampling_rate`
        # (and names no file when one is missing); resolve every audio block here first, on copies.
        normalize = getattr(self, "_normalize_conversations", None)
        if normalize is not None and conversation:
            conversations, is_batched = normalize(conversation)
            loaded = []
            for index, messages in enumerate(conversations):
                new_messages = []
                for message in messages:
                    content = message.get("content")
                    if isinstance(content, list):
                        content = [
                            self._load_block_audio(block, f"Audio block {position} of conversation {index}")
                            if isinstance(block, dict) and block.get("type") == "audio"
                            else block
                            for position, block in enumerate(content)
                        ]
                        message = {**message, "content": content}
                    new_messages.append(message)
                loaded.append(new_messages)
            conversation = loaded if is_batched else loaded[0]
        return super().apply_chat_template(conversation, *args, **kwargs)

    def _process_audio(self, audio, **kwargs):
        # Whisper's encoder expects full 30 s windows; the feature extractor pads to them by default.
        kwargs.pop("padding", None)
        kwargs.pop("truncation", None)
        kwargs.pop("max_length", None)
        rate = kwargs.pop("sampling_rate", None)
        rate = self.sampling_rate if rate is None else _check_sampling_rate(rate, "sampling_rate")
        clips = [as_mono_waveform(clip, f"Audio clip {i}") for i, clip in enumerate(audio)]
        clips = [resample_audio(clip, rate, self.sampling_rate) for clip in clips]
        window = self.feature_extractor.n_samples
        for i, clip in enumerate(clips):
            if clip.shape[0] > window:
                raise ValueError(
                    f"Audio clip {i} lasts {clip.shape[0] / self.sampling_rate:.2f} s, longer than the audio tower's "
                    f"{window / self.sampling_rate:g} s window: split it into clips of at most that length, one "
                    "<audio> each (the feature extractor would silently cut it)."
                )
        # The attention mask marks each clip's real log-mel frames; without trimming the encoder attends to the
        # whole window, as Whisper itself does, and the mask is not returned.
        kwargs["return_attention_mask"] = self.trim_audio_padding
        if os.environ.get(AUDIO_FEATURE_CACHE_ENV) == "1":
            processed = self._cached_features(clips, kwargs)
            replacements = [self.replace_audio_token(processed, audio_idx=i) for i in range(len(clips))]
        else:
            processed, replacements = super()._process_audio(clips, sampling_rate=self.sampling_rate, **kwargs)
        if self.trim_audio_padding:
            processed["feature_attention_mask"] = processed.pop("attention_mask")
        return processed, replacements

    def _cached_features(self, clips: list[np.ndarray], kwargs: dict) -> BatchFeature:
        """The feature extractor's output for `clips`, each clip's log-mel features computed once per process
        (`TINYLLAVA_HF_AUDIO_FEATURE_CACHE=1`, as the model's tower cache): a training set that repeats a few
        hundred clips thousands of times then pays the STFT once per clip. Each clip is padded to the window on its
        own, as in a batch, so the result equals the uncached one."""
        settings = {key: value for key, value in kwargs.items() if key != "return_tensors"}
        settings_key = repr(sorted(settings.items(), key=lambda item: item[0]))
        rows = []
        for clip in clips:
            key = (id(self.feature_extractor), settings_key, clip.shape[0], hashlib.blake2b(clip.tobytes()).digest())
            if key not in _FEATURE_CACHE:
                out = self.feature_extractor([clip], sampling_rate=self.sampling_rate, return_tensors="np", **settings)
                _FEATURE_CACHE[key] = {name: value[0] for name, value in out.items()}
            rows.append(_FEATURE_CACHE[key])
        data = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
        return BatchFeature(data, tensor_type=kwargs.get("return_tensors"))

    def replace_audio_token(self, audio_inputs: dict, audio_idx: int, **kwargs) -> str:
        if not self.trim_audio_padding:
            return self.audio_token * self.num_audio_tokens
        # Called inside `_process_audio`, before the mask is renamed `feature_attention_mask`.
        num_frames = audio_inputs["attention_mask"][audio_idx].sum()
        return self.audio_token * self.audio_token_count(num_frames)

    @property
    def model_input_names(self) -> list[str]:
        extra = ["input_features", "feature_attention_mask"] if self.trim_audio_padding else ["input_features"]
        return list(dict.fromkeys(super().model_input_names + extra))


__all__ = ["TinyLlavaAudioProcessor", "TinyLlavaProcessor"]
