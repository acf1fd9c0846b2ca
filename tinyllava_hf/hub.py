"""Model cards: render `model_card_template.md` (a huggingface_hub `ModelCard` Jinja template) from a saved
checkpoint's own configuration, the recipes that trained it and measured results, so that nothing in a card is typed
by hand."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import huggingface_hub
import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_tinyllava import TinyLlavaConfig
from .files import packaged_file, write_text_atomic

# The template's one copy is `model_card_template.md` at the repository root; the package ships it as a resource.
DEFAULT_TEMPLATE = "model_card_template.md"
# Anything left looking like a Jinja placeholder or a Python None in a rendered card is a bug.
_UNFILLED = re.compile(r"\{\{|\{%|\bNone\b")


@dataclass
class TrainingStage:
    """One row of the card's training table."""

    name: str
    recipe: str
    trainable: str
    data: str
    steps: int
    learning_rate: float
    batch_size: int
    wall_time: str
    precision: str = "fp32"


@dataclass
class EvaluationEntry:
    """One measured result: shown in the card's table and written to the `model-index` metadata."""

    dataset: str  # display name, e.g. "easy-VQA"
    dataset_type: str  # e.g. "easy-vqa"
    split: str  # e.g. "test (seeded sample of 2,000 questions)"
    metric: str  # e.g. "accuracy"
    value: float
    prompt: str
    scorer: str


@dataclass
class CardInfo:
    """Everything a card needs beyond the checkpoint itself."""

    model_name: str
    repo_id: str
    summary: str
    training_summary: str
    training_stages: list[TrainingStage]
    evaluation: list[EvaluationEntry]
    evaluation_notes: str
    limitations: str
    datasets: list[str]
    license: str = "apache-2.0"
    base_model: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    example_image: str = "image.png"
    example_question: str = "What is in the picture?"
    example_max_new_tokens: int = 16


def _describe_config(config: TinyLlavaConfig) -> dict[str, str]:
    text, vision = config.text_config, config.vision_config
    layers = config.vision_feature_layers
    description = {
        "llm": f"{text.model_type} ({text.num_hidden_layers} layers, hidden {text.hidden_size}, "
        f"vocabulary {text.vocab_size})",
        "vision_tower": f"{vision.model_type} ({vision.num_hidden_layers} layers, hidden {vision.hidden_size}, "
        f"{vision.image_size}px images, {vision.patch_size}px patches)",
        "connector": config.connector_type,
        "vision_features": f"hidden state(s) {layers}, strategy `{config.vision_feature_select_strategy}`",
        "placeholders": f"{config.num_image_tokens} `<image>` tokens per image",
        "audio_tower": "",
    }
    if config.audio_config is not None:
        description["audio_tower"] = f"Whisper encoder ({config.audio_config.encoder_layers} layers)"
        description["placeholders"] += f", {config.num_audio_tokens} `<audio>` tokens per clip"
    return description


def _format_value(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_model_card(model_dir: str | os.PathLike, info: CardInfo, template_path: str | os.PathLike | None = None):
    """Render a `ModelCard` for the checkpoint in `model_dir` (config, processor files) from `info`.

    Raises:
        ValueError: if the rendered card still holds an unfilled placeholder.
    """
    model_dir = Path(model_dir)
    check_evaluation(info.evaluation)
    config = TinyLlavaConfig.from_pretrained(model_dir)
    template_path = Path(template_path) if template_path is not None else packaged_file(DEFAULT_TEMPLATE)
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template not found: {template_path}")
    templates = sorted(p.stem for p in (model_dir / "additional_chat_templates").glob("*.jinja"))
    num_parameters = _count_parameters(model_dir)

    card_data = ModelCardData(
        model_name=info.model_name,
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license=info.license,
        datasets=info.datasets or None,
        base_model=info.base_model or None,
        tags=sorted({"tinyllava", "custom_code", "image-text-to-text", "vision-language", *info.tags}),
        eval_results=[
            EvalResult(
                task_type="visual-question-answering",
                dataset_type=entry.dataset_type,
                dataset_name=entry.dataset,
                dataset_split=entry.split,
                metric_type=entry.metric,
                metric_value=entry.value,
            )
            for entry in info.evaluation
        ]
        or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=info.model_name,
        repo_id=info.repo_id,
        summary=info.summary,
        chat_template=default_template_name(model_dir),
        other_templates=", ".join(f"`{name}`" for name in templates) or "none",
        num_parameters=f"{num_parameters / 1e6:.2f} M",
        training_summary=info.training_summary,
        training_stages=[asdict(stage) for stage in info.training_stages],
        framework_versions=(
            f"transformers {transformers.__version__}, torch {torch.__version__}, "
            f"huggingface_hub {huggingface_hub.__version__}{_optional_versions()}"
        ),
        evaluation=[{**asdict(entry), "value": _format_value(entry.value)} for entry in info.evaluation],
        evaluation_notes=info.evaluation_notes,
        limitations=info.limitations,
        example_image=info.example_image,
        example_question=info.example_question,
        example_max_new_tokens=info.example_max_new_tokens,
        **_describe_config(config),
    )
    body = card.content.split("---", 2)[-1]
    if match := _UNFILLED.search(body):
        line = body[: match.start()].count("\n") + 1
        raise ValueError(f"The rendered model card has an unfilled placeholder near line {line}: {match.group()!r}")
    return card


def check_evaluation(entries: list[EvaluationEntry]) -> None:
    """Refuse a result the card could not stand behind: every row of the evaluation table is a measured number with
    the split it was measured on and the scorer that produced it, so that a reader can reproduce it.

    Raises:
        ValueError: naming the first entry without a split, a scorer or a finite value.
    """
    for entry in entries:
        missing = [name for name in ("dataset", "split", "metric", "scorer") if not str(getattr(entry, name)).strip()]
        value = entry.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            missing.append(f"a measured value (got {value!r})")
        if missing:
            raise ValueError(f"Evaluation entry {entry.dataset!r} {entry.metric!r} has no {', '.join(missing)}")


def write_model_card(model_dir: str | os.PathLike, info: CardInfo, template_path=None) -> Path:
    """Render and write `README.md` into `model_dir` atomically; returns its path."""
    card = render_model_card(model_dir, info, template_path)
    return write_text_atomic(Path(model_dir) / "README.md", str(card))


# The tune_* recipe keys, the part each one trains, and whether the part exists only in audio models.
_TUNED_PARTS: tuple[tuple[str, str, bool], ...] = (
    ("tune_llm", "LM", False),
    ("tune_vision_tower", "vision tower", False),
    ("tune_connector", "connector", False),
    ("tune_audio_tower", "audio tower", True),
    ("tune_audio_connector", "audio connector", True),
)


def recipe_settings(recipe: str | os.PathLike) -> dict:
    """A recipe's values with `tinyllava-hf train`'s defaults filled in for the tune_* keys it leaves out."""
    import yaml

    from .train.arguments import ModelArguments  # dataclasses only: no training stack is imported

    values = yaml.safe_load(Path(recipe).read_text(encoding="utf-8")) or {}
    defaults = {item.name: item.default for item in fields(ModelArguments) if item.name.startswith("tune_")}
    return {**defaults, **values}


def trained_parts(settings: dict, has_audio: bool) -> str:
    """What a stage trained, from its tune_* settings: e.g. `LM (full), connector (full)`, or `nothing`."""
    parts = [
        f"{part} ({settings[key]})"
        for key, part, audio_only in _TUNED_PARTS
        if settings.get(key, "frozen") != "frozen" and (has_audio or not audio_only)
    ]
    return ", ".join(parts) or "nothing"


def training_precision(settings: dict) -> str:
    """The precision a stage trained in, from the recipe's TrainingArguments flags."""
    if settings.get("bf16"):
        return "bf16 mixed precision"
    if settings.get("fp16"):
        return "fp16 mixed precision"
    return "fp32"


def training_stage(
    name: str, recipe_name: str, recipe: str | os.PathLike, run_dir: str | os.PathLike, data: str, wall_time: str
) -> TrainingStage:
    """The card row of one finished `tinyllava-hf train` run: what trained and how, read from the recipe it ran
    (`recipe`, shown as `recipe_name`), the config it saved and the steps in its `trainer_state.json`."""
    run_dir = Path(run_dir)
    settings = recipe_settings(recipe)
    config = TinyLlavaConfig.from_pretrained(run_dir)
    state_files = [run_dir / "trainer_state.json", *sorted(run_dir.glob("checkpoint-*/trainer_state.json"))]
    steps = max((json.loads(path.read_text())["global_step"] for path in state_files if path.is_file()), default=0)
    return TrainingStage(
        name=name,
        recipe=recipe_name,
        trainable=trained_parts(settings, has_audio=config.audio_config is not None),
        data=data,
        steps=steps,
        learning_rate=settings.get("learning_rate"),
        batch_size=settings.get("per_device_train_batch_size", 8) * settings.get("gradient_accumulation_steps", 1),
        wall_time=wall_time,
        precision=training_precision(settings),
    )


def default_template_name(model_dir: str | os.PathLike) -> str:
    """The name of the checkpoint's default chat template: the named template identical to it, `none` without a
    default, `custom` when no named one matches."""
    default_file = Path(model_dir) / "chat_template.jinja"
    if not default_file.is_file():
        return "none"
    default = default_file.read_text()
    for path in sorted((Path(model_dir) / "additional_chat_templates").glob("*.jinja")):
        if path.read_text() == default:
            return path.stem
    return "custom"


def _count_parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def _optional_versions() -> str:
    # Read from the installed distributions' metadata: importing peft would pull in bitsandbytes and its warnings.
    versions = []
    for name in ("trl", "peft", "accelerate", "datasets"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "".join(f", {version}" for version in versions)


def describe_checkpoint(model_dir: str | os.PathLike) -> str:
    """One sentence naming a checkpoint's parts, from its saved config."""
    config = TinyLlavaConfig.from_pretrained(model_dir)
    text, vision = config.text_config, config.vision_config
    parts = (
        f"a {text.num_hidden_layers}-layer {text.model_type} LM (hidden {text.hidden_size}) and a "
        f"{vision.num_hidden_layers}-layer {vision.model_type.removesuffix('_vision_model')} vision tower, joined by "
        f"an `{config.connector_type}` connector"
    )
    if config.audio_config is not None:
        parts += f", with a {config.audio_config.encoder_layers}-layer Whisper audio tower"
    return parts


def checkpoint_card_info(
    model_dir: str | os.PathLike,
    origin: str,
    training_stages: list[TrainingStage] | None = None,
    base_model: list[str] | None = None,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    repo_id: str | None = None,
) -> CardInfo:
    """The `CardInfo` of a checkpoint that a command produced (see `write_checkpoint_card`).

    `repo_id` is what the quick start loads: the Hub id when the card is rendered for a push, the folder's name
    otherwise (a local card has no Hub id yet; `tinyllava-hf push` renders or retargets it for the real one).
    """
    model_dir = Path(model_dir)
    repo_id = repo_id or model_dir.name
    return CardInfo(
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        summary=f"A TinyLLaVA vision-language model: {describe_checkpoint(model_dir)}.",
        training_summary=origin,
        training_stages=list(training_stages or []),
        evaluation=[],
        evaluation_notes="No evaluation results are recorded for this checkpoint (`tinyllava-hf eval` measures them).",
        limitations="Not evaluated: check it on your task before relying on it.",
        datasets=list(datasets or []),
        base_model=list(base_model or []),
        tags=list(tags or []),
    )


def write_checkpoint_card(model_dir: str | os.PathLike, origin: str, **details) -> Path:
    """Write the project's card for a checkpoint that a command (train, merge-lora, convert, import-llava) produced.

    `origin` says in a sentence or two how it was made (the recipe and stage, or the converted source), and is shown
    as the card's training summary; everything else comes from the checkpoint. No evaluation is claimed: the
    evaluation section says none was recorded until a measured result is added. `details` are
    `checkpoint_card_info`'s keywords (training_stages, base_model, datasets, tags).
    """
    return write_model_card(model_dir, checkpoint_card_info(model_dir, origin, **details))


# The quick start's loading calls: `from_pretrained("<id>"` with either quote.
_FROM_PRETRAINED = re.compile(r"""(\.from_pretrained\(\s*)(["'])[^"']*\2""")


def retarget_quick_start(card_text: str, repo_id: str) -> str:
    """`card_text` with every `from_pretrained("...")` of its `## Quick start` section loading `repo_id`.

    A card written before a push names the folder it was saved in; on the Hub the quick start must load the
    repository it is read in. Other sections (and cards without a quick start) are left as they are.
    """
    start = card_text.find("\n## Quick start")
    if start < 0:
        return card_text
    end = card_text.find("\n## ", start + 1)
    end = len(card_text) if end < 0 else end
    section = _FROM_PRETRAINED.sub(lambda match: f'{match.group(1)}"{repo_id}"', card_text[start:end])
    return card_text[:start] + section + card_text[end:]


def quick_start_code(card_text: str) -> str | None:
    """The python code block of a card's `## Quick start` section (what a reader copies), or None without one."""
    match = re.search(r"\n## Quick start\s*\n(?:(?!\n## ).)*?```python\n(.*?)```", card_text, flags=re.DOTALL)
    return match.group(1) if match else None
