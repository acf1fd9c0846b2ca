"""Batched, resumable benchmark inference: question file in, LLaVA-style answer file (PRED.jsonl) out.

Each line of the answer file is ``{"question_id", "prompt", "text", "model_id", "metadata"}`` like the answer files of
LLaVA's ``model_vqa_loader.py`` (minus the random ``answer_id``, so reruns are byte-identical); ``metadata`` holds the
run's ``fingerprint`` id, whose components are in ``<output>.meta.json`` (:mod:`~tinyllava_hf.eval.fingerprint`).
Generation is greedy with left padding, so a batch gives the same answers as one question at a time.

A run can be interrupted at any point: every finished batch is appended, flushed and fsynced, so a killed run loses
at most the batch in flight. Rerunning the same command skips the questions already answered; a half-written last
line (the process died mid-write) is dropped with a warning. When every selected question is answered, the file is
rewritten (atomically) in question-file order, so an interrupted-and-resumed run ends with the same file as an
uninterrupted one. Only the same run resumes: another model (weights or config), chat template, task or generation
setting is refused with what differs, and so is a file with two answers to one question.

Typical use::

    from tinyllava_hf.eval.runner import run_eval

    run_eval(model, processor, "gqa", "gqa/llava_gqa_testdev_balanced.jsonl", "answers/gqa.jsonl",
             image_folder="gqa/images", batch_size=16)
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..files import write_text_atomic
from .fingerprint import check_resume, read_sidecar, run_fingerprint, write_sidecar
from .loaders import EvalDataError, PathLike
from .tasks import EvalQuestion, TaskSpec, get_task, load_task_questions

# Marker added to the model id of a blind run, so its answers are never mixed with (or reported as) real ones.
BLANK_IMAGE_TAG = "+blank-image"


class ImageLoadError(EvalDataError):
    """A question's image is missing or unreadable; the message names the file and the question id."""


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_eval` did.

    Attributes:
        output: the answer file.
        task: task name.
        model_id: the ``model_id`` written on every line.
        num_questions: questions selected for this run (after ``limit``).
        num_skipped: questions already answered in ``output`` before this run (resumed).
        num_generated: questions answered by this run.
        num_dropped_lines: truncated or corrupt trailing lines removed from ``output`` before resuming.
        questions_file: the question file answered.
    """

    output: Path
    task: str
    model_id: str
    num_questions: int
    num_skipped: int
    num_generated: int
    num_dropped_lines: int
    questions_file: Path


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Existing:
    """Lines already in an answer file: raw text (with newline) and parsed records, in file order."""

    lines: list[str]
    records: list[dict[str, Any]]
    dropped: int
    linenos: list[int] = field(default_factory=list)  # the file line of each record, for error messages


def read_answer_file(path: PathLike, *, repair: bool = True) -> _Existing:
    """Read an answer file written by :func:`run_eval`, tolerating a truncated last line.

    The last line is dropped (with a warning) when it lacks its newline or is not a JSON object: that is what a
    process killed mid-write leaves behind. With ``repair`` the file itself is truncated to its last good line, so
    appending continues from a clean state. A bad line anywhere else is not a crash artefact and raises
    :class:`~tinyllava_hf.eval.loaders.EvalDataError` naming the line.
    """
    path = Path(path)
    if not path.exists():
        return _Existing([], [], 0)
    if not path.is_file():
        raise EvalDataError(f"{path} is not a file; --output takes an answer file (e.g. answers/gqa.jsonl)")
    data = path.read_bytes()
    chunks = data.split(b"\n")
    # After the final newline split() yields b"" (complete file); anything else there is a partial last line.
    tail = chunks.pop()
    lines: list[str] = []
    records: list[dict[str, Any]] = []
    linenos: list[int] = []
    good_length = 0
    dropped = 0
    for index, chunk in enumerate(chunks):
        lineno = index + 1
        is_last = index == len(chunks) - 1 and not tail
        if not chunk.strip():
            good_length += len(chunk) + 1
            continue
        try:
            record = json.loads(chunk.decode("utf-8"))
            if not isinstance(record, dict) or "question_id" not in record or not isinstance(record.get("text"), str):
                raise ValueError("not an answer record")
        except (UnicodeDecodeError, ValueError) as err:
            if is_last:
                dropped += 1
                warnings.warn(
                    f"{path} line {lineno} is corrupt ({err}); dropping it, its answer is regenerated", stacklevel=2
                )
                break
            raise EvalDataError(
                f"{path} line {lineno} is not a JSON answer record ({err}); only a damaged last line is repaired "
                "automatically, fix or delete this file"
            ) from None
        lines.append(chunk.decode("utf-8") + "\n")
        records.append(record)
        linenos.append(lineno)
        good_length += len(chunk) + 1
    if tail.strip():
        dropped += 1
        warnings.warn(
            f"{path}: incomplete last line (an interrupted run) dropped, its answer is regenerated", stacklevel=2
        )
    if repair and good_length != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good_length)
            handle.flush()
            os.fsync(handle.fileno())
    return _Existing(lines, records, dropped, linenos)


def _answer_line(question: EvalQuestion, text: str, model_id: str, fingerprint: str) -> str:
    record = {
        "question_id": question.question_id,
        "prompt": question.text,
        "text": text,
        "model_id": model_id,
        # Every line names the run that wrote it, so a resume can never continue another model's file.
        "metadata": {"fingerprint": fingerprint},
    }
    return json.dumps(record, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# Images and prompts
# --------------------------------------------------------------------------------------------------------------------


def resolve_image(question: EvalQuestion, image_folder: PathLike | None) -> Path:
    """The file of ``question``'s image: ``image_folder / image`` (an absolute ``image`` is used as is)."""
    assert question.image is not None
    image = Path(question.image)
    return image if image.is_absolute() or image_folder is None else Path(image_folder) / image


def check_images(questions: Sequence[EvalQuestion], image_folder: PathLike | None) -> None:
    """Fail before any generation if an image file is missing, naming the file and question id.

    A full benchmark runs for hours; a stat per question is cheap, and finding a missing file at the end is not.
    """
    for question in questions:
        if question.image is None:
            continue
        path = resolve_image(question, image_folder)
        if not path.is_file():
            hint = "" if image_folder is not None else " (no --image-folder given: paths are relative to the cwd)"
            raise ImageLoadError(
                f"image file {path} not found for question_id {question.question_id!r} ({question.where}){hint}"
            )


def load_image(question: EvalQuestion, image_folder: PathLike | None) -> Image.Image:
    """Open ``question``'s image as RGB, raising :class:`ImageLoadError` naming the file and question id."""
    path = resolve_image(question, image_folder)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise ImageLoadError(f"image file {path} not found for question_id {question.question_id!r}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(
            f"image file {path} for question_id {question.question_id!r} cannot be read ({err})"
        ) from None


def blank_color(processor: Any) -> tuple[int, int, int]:
    """The image processor's mean colour (what normalises to ~0), truncated like upstream's pad background."""
    mean = getattr(getattr(processor, "image_processor", None), "image_mean", None) or (0.5, 0.5, 0.5)
    mean = list(mean) * 3 if len(mean) == 1 else list(mean)
    return tuple(int(m * 255) for m in mean[:3])  # type: ignore[return-value]


def blank_like(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """A uniform image of ``image``'s size: the same resize/crop/pad path, no visual content (blind baseline)."""
    return Image.new("RGB", image.size, color)


def build_conversation(text: str, image: Image.Image | None) -> list[dict[str, Any]]:
    """One user turn: the image first (upstream's ``"<image>\\n" + question``), then the question text."""
    content: list[dict[str, Any]] = []
    if image is not None:
        content.append({"type": "image", "image": image})
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


# --------------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------------


def _model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    try:
        parameter = next(model.parameters())
    except (StopIteration, AttributeError):
        return torch.device("cpu"), torch.float32
    return getattr(model, "device", parameter.device), getattr(model, "dtype", parameter.dtype)


class _LeftPadding:
    """Context manager: left padding (and a pad token) on the processor's tokenizer, restored afterwards.

    Decoder-only batched generation needs the prompts right-aligned; the caller's processor is left as it was.
    """

    def __init__(self, processor: Any) -> None:
        self.tokenizer = processor.tokenizer

    def __enter__(self) -> int:
        self.side = self.tokenizer.padding_side
        self.pad = self.tokenizer.pad_token
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            # Padding positions are masked out; any token will do, and EOS is what generate() pads with anyway.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        return self.tokenizer.pad_token_id

    def __exit__(self, *exc: object) -> None:
        self.tokenizer.padding_side = self.side
        if self.pad is None:
            self.tokenizer.pad_token = None


class ChatTemplateError(EvalDataError):
    """A chat template name the processor does not have (or a processor without any template); lists the known
    names."""


def chat_template_names(processor: Any) -> list[str]:
    """The template names a processor knows: the keys of ``processor.chat_template`` when it is a dict (the
    checkpoint's ``chat_template.jinja`` as ``default`` plus its ``additional_chat_templates/*.jinja``), else
    ``["default"]`` for a single template, ``[]`` for none."""
    templates = getattr(processor, "chat_template", None)
    if isinstance(templates, dict):
        return sorted(templates)
    return ["default"] if isinstance(templates, str) else []


def resolve_chat_template(processor: Any, chat_template: str | None = None) -> str:
    """The Jinja text that ``apply_chat_template(chat_template=...)`` should render.

    ``None`` is the processor's default; a name must be one of :func:`chat_template_names`; text holding Jinja tags
    (``{%``/``{{``) is a template itself. transformers renders an unknown name as the template text, i.e. the literal
    word ("phi") instead of a prompt, which here is a :class:`ChatTemplateError` listing the known names instead.
    """
    templates = getattr(processor, "chat_template", None)
    if chat_template is not None and ("{%" in chat_template or "{{" in chat_template):
        return chat_template
    name = "default" if chat_template is None else chat_template
    if isinstance(templates, dict) and name in templates:
        return templates[name]
    if isinstance(templates, str) and name == "default":
        return templates
    known = chat_template_names(processor)
    if not known:
        raise ChatTemplateError(
            "the processor has no chat template; save one with the checkpoint (chat_template.jinja) or pass "
            "--chat-template with the Jinja text"
        )
    if chat_template is None:
        raise ChatTemplateError(
            f"the processor has no default chat template; pass --chat-template, one of: {', '.join(known)}"
        )
    raise ChatTemplateError(
        f"unknown chat template {chat_template!r}; this checkpoint's templates: {', '.join(known)} "
        "(from its chat_template.jinja and additional_chat_templates/)"
    )


@torch.inference_mode()
def generate_batch(
    model: Any,
    processor: Any,
    conversations: Sequence[list[dict[str, Any]]],
    max_new_tokens: int,
    *,
    chat_template: str | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Generate one answer per conversation in a single left-padded batch; greedy unless ``generate_kwargs`` say
    otherwise. Returns the decoded new text of each row, special tokens removed and whitespace stripped.

    ``chat_template`` is a template name or Jinja text (see :func:`resolve_chat_template`); default: the processor's.
    """
    template = resolve_chat_template(processor, chat_template)
    with _LeftPadding(processor) as pad_token_id:
        inputs = processor.apply_chat_template(
            list(conversations),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
            chat_template=template,
        )
    device, dtype = _model_device_dtype(model)
    inputs = inputs.to(device, dtype)
    settings: dict[str, Any] = {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens}
    settings.update(generate_kwargs)
    if not settings["do_sample"]:
        # Greedy: clear sampling knobs a checkpoint's generation_config may set, which generate() warns about.
        settings.update(temperature=None, top_p=None, top_k=None)
    output = model.generate(**inputs, **settings, pad_token_id=pad_token_id)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def default_model_id(model: Any) -> str:
    """LLaVA's convention: the last path component of the checkpoint (``model.name_or_path``), else ``"model"``."""
    name = str(getattr(model, "name_or_path", "") or "")
    return Path(name.rstrip("/\\")).name or "model"


# --------------------------------------------------------------------------------------------------------------------
# run_eval
# --------------------------------------------------------------------------------------------------------------------


def _question_keys(questions: Sequence[EvalQuestion]) -> tuple[list[Any], bool]:
    """Resume keys: ``str(question_id)``, or ``(id, prompt)`` when ids repeat (LLaVA's MME file gives both questions
    of an image the same id). Raises if two questions are indistinguishable."""
    counts = Counter(str(q.question_id) for q in questions)
    by_prompt = any(count > 1 for count in counts.values())
    keys = [(str(q.question_id), q.text) if by_prompt else str(q.question_id) for q in questions]
    seen: dict[Any, EvalQuestion] = {}
    for key, question in zip(keys, questions):
        if key in seen:
            raise EvalDataError(
                f"{question.where}: question_id {question.question_id!r} with the same prompt also appears at "
                f"{seen[key].where}; answers could not be told apart"
            )
        seen[key] = question
    return keys, by_prompt


def _record_key(record: dict[str, Any], by_prompt: bool) -> Any:
    return (str(record["question_id"]), record.get("prompt")) if by_prompt else str(record["question_id"])


def run_eval(
    model: Any,
    processor: Any,
    task: str | TaskSpec,
    data: PathLike,
    output: PathLike,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    *,
    image_folder: PathLike | None = None,
    blank_image: bool = False,
    model_id: str | None = None,
    chat_template: str | None = None,
    progress: bool = True,
) -> RunResult:
    """Answer a benchmark's questions with ``model`` and append them to the answer file ``output`` (resumable).

    Args:
        model: a TinyLLaVA (or any image-text-to-text) model with ``generate``; put in eval mode here.
        processor: its processor (``apply_chat_template`` with image blocks, ``batch_decode``).
        task: exact task name (:func:`~tinyllava_hf.eval.tasks.list_tasks`) or a :class:`TaskSpec`.
        data: the task's question file (for the built-in ``easy_vqa`` data, written by
            :func:`tinyllava_hf.easy_vqa.write_easy_vqa_files`).
        output: answer file (JSON lines); created, or resumed when it exists.
        batch_size: questions per ``generate`` call.
        max_new_tokens: generation budget; defaults to the task's upstream value.
        limit: only the first ``limit`` questions.
        image_folder: folder the question file's ``image`` paths are relative to.
        blank_image: replace every image by a uniform mean-colour image of the same size (a "blind" baseline);
            the model id gets a ``+blank-image`` suffix so such answers are never mixed with real ones.
        model_id: ``model_id`` written on every line (default: last path component of the checkpoint).
        chat_template: name (or Jinja source) of the processor chat template; default: the processor's default.
            An unknown name is a :class:`ChatTemplateError` listing the checkpoint's names.
        progress: show a tqdm progress bar.

    The answer file records what produced it (:mod:`~tinyllava_hf.eval.fingerprint`): every line carries a run
    fingerprint id, and ``<output>.meta.json`` its components (weights and config hashes, chat template, task and
    prompt suffix, generation settings). Resuming with a different model or settings is refused, saying what differs.

    Raises:
        ImageLoadError: an image is missing or unreadable (message names the file and question id).
        EvalDataError: a malformed question file or answer file, or an answer file from another model, run or prompt.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    output = Path(output)
    questions = load_task_questions(spec, data)
    if limit is not None:
        questions = questions[:limit]
    keys, by_prompt = _question_keys(questions)
    new_tokens = max_new_tokens if max_new_tokens is not None else spec.max_new_tokens
    if new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {new_tokens}")
    model_id = model_id or default_model_id(model)
    if blank_image and not model_id.endswith(BLANK_IMAGE_TAG):
        model_id += BLANK_IMAGE_TAG

    template = resolve_chat_template(processor, chat_template)  # an unknown name fails before any hashing

    existing = read_answer_file(output)
    answered: dict[Any, int] = {}  # resume key -> index of its line in the existing file
    for index, record in enumerate(existing.records):
        if record.get("model_id") != model_id:
            raise EvalDataError(
                f"{output} holds answers of model_id {record.get('model_id')!r}, this run is {model_id!r}; "
                "write to another --output (or delete the file) instead of mixing models"
            )
        key = _record_key(record, by_prompt)
        if key in answered:
            # Which of two answers to keep is not ours to guess (a hand-merged file, or two runs concatenated).
            first = existing.linenos[answered[key]]
            raise EvalDataError(
                f"{output} lines {first} and {existing.linenos[index]} both answer question_id "
                f"{record['question_id']!r}; keep one of them (or delete the file) before resuming"
            )
        answered[key] = index
    for key, question in zip(keys, questions):
        if key in answered and existing.records[answered[key]].get("prompt") != question.text:
            raise EvalDataError(
                f"{output}: question_id {question.question_id!r} was answered with another prompt "
                f"({existing.records[answered[key]].get('prompt')!r}, now {question.text!r}); use another --output"
            )
    pending = [(key, q) for key, q in zip(keys, questions) if key not in answered]
    check_images([q for _, q in pending], image_folder)

    _, dtype = _model_device_dtype(model)
    fingerprint = run_fingerprint(
        model, spec, template, max_new_tokens=new_tokens, blank_image=blank_image, dtype=dtype
    )
    check_resume(output, existing.records, fingerprint)
    sidecar = read_sidecar(output)
    if sidecar is None or sidecar.get("fingerprint") != fingerprint.id:
        # A new file (or a lost sidecar of this same run): record what produced the answers before writing any.
        name_or_path = str(getattr(model, "name_or_path", "") or "")
        write_sidecar(output, fingerprint, model_id=model_id, model=name_or_path, task=spec.name)

    model.eval()
    color = blank_color(processor)
    output.parent.mkdir(parents=True, exist_ok=True)
    new_lines: dict[Any, str] = {}
    bar = tqdm(
        total=len(questions), initial=len(questions) - len(pending), desc=spec.name, unit="q", disable=not progress
    )
    try:
        with open(output, "a", encoding="utf-8", newline="") as handle:
            for batch in _batches(pending, batch_size):
                conversations = []
                for _, question in batch:
                    image = None
                    if question.image is not None:
                        image = load_image(question, image_folder)
                        if blank_image:
                            image = blank_like(image, color)
                    conversations.append(build_conversation(question.text, image))
                answers = generate_batch(model, processor, conversations, new_tokens, chat_template=template)
                lines = [
                    _answer_line(question, answer, model_id, fingerprint.id)
                    for (_, question), answer in zip(batch, answers)
                ]
                handle.write("".join(lines))
                # Durable before moving on: a crash later loses at most the next batch.
                handle.flush()
                os.fsync(handle.fileno())
                new_lines.update((key, line) for (key, _), line in zip(batch, lines))
                bar.update(len(batch))
    finally:
        bar.close()

    # Appending resumed answers at the end would make a resumed file differ from an uninterrupted one: rewrite it
    # with this run's questions in question-file order, then any other lines (e.g. beyond --limit) as they were.
    ordered = [new_lines[key] if key in new_lines else existing.lines[answered[key]] for key in keys]
    used = {answered[key] for key in keys if key in answered}
    others = [line for index, line in enumerate(existing.lines) if index not in used]
    text = "".join(ordered + others)
    if output.read_text(encoding="utf-8") != text:
        write_text_atomic(output, text)
    return RunResult(
        output=output,
        task=spec.name,
        model_id=model_id,
        num_questions=len(questions),
        num_skipped=len(questions) - len(pending),
        num_generated=len(pending),
        num_dropped_lines=existing.dropped,
        questions_file=Path(data),
    )
