"""Training data: LLaVA / ShareGPT4V JSON and TRL `messages` datasets, turned into one normalised `datasets.Dataset`.

Every row of the result holds

    id             str        the sample's id (its index when the file has none), used in every error message
    messages_json  str        transformers chat messages (JSON), media as `{"type": "image"}` / `{"type": "audio"}`
                              blocks in order, ready for the processor's chat template
    images         list[str]  absolute image paths, one per image block, in order
    audios         list[str]  absolute audio paths, one per audio block, in order

Media are only checked for existence here (cheap); they are decoded by the collator, batch by batch, unless
`verify_media` asks for an upfront decode. The messages are stored as JSON because content blocks of different types
do not fit one Arrow struct without gaining `None` keys that the chat template would see.

A missing or corrupt file raises `BadSampleError` naming the file and the sample id, or, with `skip_bad_samples`, the
sample is dropped and the drops are counted in the log.
"""

import json
import logging
import os
import wave
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from PIL import Image

from ..chat_templates import upstream_conversation_to_messages
from ..constants import AUDIO_TOKEN, IMAGE_TOKEN

__all__ = [
    "BadSampleError",
    "DataFileError",
    "load_audio",
    "load_dataset_files",
    "load_image",
    "normalize_sample",
    "read_records",
]

logger = logging.getLogger(__name__)

# Whisper's feature extractors all run at 16 kHz.
DEFAULT_SAMPLING_RATE = 16000


class BadSampleError(ValueError):
    """A sample that cannot be used: missing/corrupt media, or media markers that do not match its files."""

    def __init__(self, sample_id: str, message: str, path: str | None = None):
        self.sample_id = sample_id
        self.path = path
        super().__init__(f"Sample {sample_id!r}: {message}")


# ------------------------------------------------------------------------------------------------------ media loading


def load_image(path: str | os.PathLike, sample_id: str = "?") -> Image.Image:
    """Open and fully decode an image as RGB; any failure is a `BadSampleError` naming the file and the sample."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file must fail here, not inside the image processor
            return image.convert("RGB")
    except FileNotFoundError:
        raise BadSampleError(sample_id, f"image file not found: {path}", str(path)) from None
    except Exception as error:  # PIL raises several unrelated types for broken files
        raise BadSampleError(sample_id, f"cannot read image {path}: {error}", str(path)) from error


def _read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """PCM WAV with the standard library (used when `soundfile` is not installed)."""
    with wave.open(str(path), "rb") as handle:
        width, channels, rate = handle.getsampwidth(), handle.getnchannels(), handle.getframerate()
        raw = handle.readframes(handle.getnframes())
    if width not in (1, 2, 4):
        raise ValueError(f"unsupported WAV sample width {width}")
    dtype = {1: np.uint8, 2: "<i2", 4: "<i4"}[width]
    data = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    data = (data - 128.0) / 128.0 if width == 1 else data / float(2 ** (8 * width - 1))
    return data.reshape(-1, channels), rate


def load_audio(
    path: str | os.PathLike, sample_id: str = "?", sampling_rate: int = DEFAULT_SAMPLING_RATE
) -> np.ndarray:
    """Read an audio file as a mono float32 waveform at `sampling_rate` (linear resampling when needed).

    Uses `soundfile` when installed (any format it reads), else the standard library's WAV reader.
    """
    if not os.path.isfile(path):
        raise BadSampleError(sample_id, f"audio file not found: {path}", str(path))
    try:
        try:
            import soundfile
        except ImportError:
            data, rate = _read_wav(path)
        else:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        if data.size == 0:
            raise ValueError("no audio samples")
    except BadSampleError:
        raise
    except Exception as error:
        raise BadSampleError(sample_id, f"cannot read audio {path}: {error}", str(path)) from error
    mono = data.mean(axis=1)
    if rate != sampling_rate:
        duration = mono.shape[0] / rate
        targets = np.arange(int(round(duration * sampling_rate))) / sampling_rate
        mono = np.interp(targets, np.arange(mono.shape[0]) / rate, mono)
    return mono.astype(np.float32)


# ------------------------------------------------------------------------------------------------------ sample parsing


class DataFileError(ValueError):
    """A data file that cannot be read as samples (missing, empty, malformed JSON, no usable sample)."""


def _json_error(path: Path, error: json.JSONDecodeError, line: int | None = None) -> DataFileError:
    """Name the file, the line and column in the file, and the line's text: a JSON error alone names none."""
    lines = error.doc.splitlines()
    text = lines[error.lineno - 1] if error.lineno <= len(lines) else ""
    # A long line (a whole .json file on one line) is shown around the error only.
    start = max(error.colno - 60, 0)
    excerpt = text[start : start + 120]
    line = error.lineno if line is None else line
    return DataFileError(f"{path}, line {line} column {error.colno}: not valid JSON ({error.msg}): {excerpt!r}")


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a `.json` file (a list of samples) or a `.jsonl` file (one sample per line).

    Raises:
        DataFileError: a missing or empty file, or malformed JSON (naming the file, line, column and line text).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"Data file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataFileError(f"Data file {path} is empty: it needs a JSON list of samples (or .jsonl, one per line).")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise _json_error(path, error, line=number) from None
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise _json_error(path, error) from None
    if not isinstance(records, list):
        raise DataFileError(f"{path} must hold a JSON list of samples (or use .jsonl, one sample per line).")
    return records


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _split_markers(text: str) -> list[dict[str, str]]:
    """Content blocks for a string with literal `<image>` / `<audio>` markers (TRL `messages` datasets).

    The conversion is the one used for upstream data, so both formats render identically.
    """
    return upstream_conversation_to_messages([{"from": "human", "value": text}])[0]["content"]


def _normalize_messages(messages: Sequence[Mapping[str, Any]], num_images: int, sample_id: str) -> list[dict]:
    """TRL-style messages -> messages whose contents are block lists, media blocks stripped of any payload."""
    normalized = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            has_markers = IMAGE_TOKEN in content or AUDIO_TOKEN in content
            blocks = _split_markers(content) if message["role"] == "user" and has_markers else None
            blocks = blocks or [{"type": "text", "text": content}]
        else:
            blocks = []
            for block in content:
                if block.get("type") in ("image", "audio"):
                    # The payload (path, PIL image...) lives in the sample's images/audios lists, in block order.
                    blocks.append({"type": block["type"]})
                elif block.get("type") == "text":
                    blocks.append({"type": "text", "text": block["text"]})
                else:
                    raise BadSampleError(sample_id, f"unsupported content block type {block.get('type')!r}")
        normalized.append({"role": message["role"], "content": blocks})
    # TRL's convention for datasets whose text carries no image markers: the images go before the first user text.
    if num_images and not _count_blocks(normalized, "image"):
        first_user = next((m for m in normalized if m["role"] == "user"), None)
        if first_user is None:
            raise BadSampleError(sample_id, "has images but no user message to attach them to")
        first_user["content"] = [{"type": "image"} for _ in range(num_images)] + first_user["content"]
    return normalized


def _count_blocks(messages: Iterable[Mapping[str, Any]], kind: str) -> int:
    return sum(1 for message in messages for block in message["content"] if block.get("type") == kind)


def _resolve(path: str, folder: Path) -> str:
    return str(Path(path) if os.path.isabs(path) else folder / path)


def normalize_sample(
    record: Mapping[str, Any],
    index: int,
    image_folder: Path,
    audio_folder: Path,
    data_format: str = "auto",
) -> dict[str, Any]:
    """One raw record (LLaVA/ShareGPT4V or TRL messages) -> a normalised row (see the module docstring).

    Raises:
        BadSampleError: unknown format, or a number of `<image>`/`<audio>` markers that differs from the files.
    """
    sample_id = str(record.get("id", index))
    fmt = data_format
    if fmt == "auto":
        fmt = "llava" if "conversations" in record else "messages" if "messages" in record else None
    if fmt == "llava":
        if "conversations" not in record:
            raise BadSampleError(sample_id, "has no 'conversations' (LLaVA format)")
        images = _as_list(record.get("image", record.get("images")))
        audios = _as_list(record.get("audio", record.get("audios")))
        try:
            messages = upstream_conversation_to_messages(record["conversations"])
        except (KeyError, ValueError) as error:
            raise BadSampleError(sample_id, f"bad conversation: {error}") from error
        if images and not _count_blocks(messages, "image"):
            # Some LLaVA-style files carry an image without the marker; upstream puts it before the question.
            first_user = next((m for m in messages if m["role"] == "user"), None)
            if first_user is not None:
                first_user["content"] = [{"type": "image"} for _ in images] + first_user["content"]
    elif fmt == "messages":
        if "messages" not in record:
            raise BadSampleError(sample_id, "has no 'messages' (TRL format)")
        images = _as_list(record.get("images", record.get("image")))
        audios = _as_list(record.get("audios", record.get("audio")))
        messages = _normalize_messages(record["messages"], len(images), sample_id)
    else:
        raise BadSampleError(sample_id, f"unknown sample format (keys: {sorted(record)}); expected LLaVA or messages")

    for kind, files in (("image", images), ("audio", audios)):
        markers = _count_blocks(messages, kind)
        if markers != len(files):
            raise BadSampleError(sample_id, f"has {markers} <{kind}> marker(s) but {len(files)} {kind} file(s)")
    if not any(message["role"] == "assistant" for message in messages):
        raise BadSampleError(sample_id, "has no assistant answer to train on")
    for name in images + audios:
        if not isinstance(name, str):
            raise BadSampleError(sample_id, f"media entries must be file paths, got {type(name).__name__}")
    return {
        "id": sample_id,
        "messages_json": json.dumps(messages, ensure_ascii=False),
        "images": [_resolve(name, image_folder) for name in images],
        "audios": [_resolve(name, audio_folder) for name in audios],
    }


def _check_media(row: Mapping[str, Any], decode: bool) -> None:
    for path in row["images"]:
        if decode:
            load_image(path, row["id"])
        elif not os.path.isfile(path):
            raise BadSampleError(row["id"], f"image file not found: {path}", path)
    for path in row["audios"]:
        if decode:
            load_audio(path, row["id"])
        elif not os.path.isfile(path):
            raise BadSampleError(row["id"], f"audio file not found: {path}", path)


def load_dataset_files(
    paths: Sequence[str | os.PathLike],
    image_folder: str | os.PathLike | None = None,
    audio_folder: str | os.PathLike | None = None,
    data_format: str = "auto",
    skip_bad_samples: bool = False,
    verify_media: bool = False,
    max_samples: int | None = None,
) -> tuple[Dataset, Counter]:
    """Read, normalise and check every sample of `paths`.

    Args:
        paths: JSON / JSONL files, concatenated in order.
        image_folder / audio_folder: folders that relative media paths are resolved against (default: the image
            folder, else the data file's folder).
        data_format: `auto`, `llava` or `messages`.
        skip_bad_samples: drop (and count) bad samples instead of raising.
        verify_media: decode every image and audio now instead of only checking that the files exist.
        max_samples: keep the first N usable samples.

    Returns:
        The dataset and a counter of skipped samples by reason.
    """
    rows: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    for path in paths:
        path = Path(path)
        images_in = Path(image_folder) if image_folder is not None else path.parent
        audios_in = Path(audio_folder) if audio_folder is not None else images_in
        for index, record in enumerate(read_records(path)):
            try:
                row = normalize_sample(record, index, images_in, audios_in, data_format)
                _check_media(row, decode=verify_media)
            except BadSampleError as error:
                if not skip_bad_samples:
                    raise
                reason = "missing_or_corrupt_media" if error.path else "malformed"
                skipped[reason] += 1
                logger.warning("Skipping %s (in %s)", error, path)
                continue
            rows.append(row)
            if max_samples is not None and len(rows) >= max_samples:
                break
        if max_samples is not None and len(rows) >= max_samples:
            break
    if skipped:
        logger.warning(
            "Skipped %d bad sample(s) of %d: %s",
            sum(skipped.values()),
            sum(skipped.values()) + len(rows),
            dict(skipped),
        )
    if not rows:
        reasons = f" ({sum(skipped.values())} skipped as bad: {dict(skipped)})" if skipped else ""
        raise DataFileError(f"No usable samples in {', '.join(str(p) for p in paths)}{reasons}.")
    return Dataset.from_list(rows), skipped
