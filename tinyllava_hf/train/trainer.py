"""`run_training`: our model/data arguments + TRL's `SFTConfig` -> `SFTTrainer` with `TinyLlavaCollator`.

    tinyllava-hf train --config recipes/debug/pretrain/config_siglip_llama.yaml [--key value ...]

Arguments are parsed by `trl.TrlParser` (YAML recipe, then command-line overrides). The trainer always runs with
our collator, `remove_unused_columns=False` and `dataset_kwargs={"skip_prepare_dataset": True}`, the setup TRL
documents for custom vision-language collators. TRL refuses its `padding_free` for vision datasets, so our collator
does it instead (`tinyllava_hf.train.packing`: rows filled up to `packing_token_budget` tokens, position ids
restarting per sample; an SDPA language model switches to `varlen_sdpa`, which attends within each sample:
`tinyllava_hf.train.varlen_attention`); TRL's `packing` (dataset-level bin packing) is rejected.
`--group_by_modality_length` samples single-modality, length-grouped batches (`tinyllava_hf.train.sampler`).
`--cache_vision_features` reuses a frozen tower's features across epochs (`tinyllava_hf.train.feature_cache`).

The final model (or LoRA adapter) and processor are saved in `output_dir`, loadable with
`AutoModelForImageTextToText` / `AutoProcessor` and `trust_remote_code=True`. A LoRA run on a model built from parts
also saves its base model under `output_dir/base_model` (the adapter's `base_model_name_or_path`).

Resuming: `--resume_from_checkpoint PATH` resumes from PATH, `true` from the last `checkpoint-*` of `output_dir`;
by default a run whose `output_dir` already holds checkpoints resumes from the last one (`false` starts afresh).
"""

import logging
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from accelerate.utils import is_peft_model
from torch.utils.data import Dataset, Sampler
from transformers import set_seed
from transformers.integrations import is_deepspeed_zero3_enabled
from trl import SFTConfig, SFTTrainer, TrlParser

from ..loading import ModelLoadError, resolve_model_source
from .arguments import DataArguments, ModelArguments
from .build import load_training_start
from .checkpoints import checkpoint_problem, last_complete_checkpoint
from .collator import NothingToTrainError, OverlengthError, TinyLlavaCollator, filter_overlength
from .data import BadSampleError, DataFileError, load_dataset_files
from .feature_cache import TowerNotFrozenError, enable_vision_feature_cache
from .inputs import TrainInputError, check_train_argv, check_train_paths
from .lm_head import score_supervised_positions_only, supports_supervised_only_head
from .sampler import ModalityLengthGroupedSampler, add_length_columns
from .tune import apply_tune_modes, restore_trainable_dtypes
from .varlen_attention import use_varlen_attention

__all__ = ["TinyLlavaSFTTrainer", "make_parser", "parse_train_args", "resolve_resume_checkpoint", "run_training"]

logger = logging.getLogger(__name__)

BASE_MODEL_SUBDIR = "base_model"


def make_parser() -> TrlParser:
    """The `TrlParser` of `tinyllava-hf train`: ModelArguments, DataArguments, SFTConfig."""
    # A short usage line: argparse would otherwise print every one of the ~300 options with each usage error.
    return TrlParser(
        (ModelArguments, DataArguments, SFTConfig),
        prog="tinyllava-hf train",
        usage="tinyllava-hf train --config RECIPE.yaml [--key value ...]  (--help: the main options, --help-all: all)",
    )


def parse_train_args(argv: Sequence[str] | None = None) -> tuple[ModelArguments, DataArguments, SFTConfig]:
    """Parse `--config recipe.yaml` plus overrides; unknown keys (in the YAML or on the command line) are errors.

    Raises:
        TrainInputError: a missing recipe, an unknown key or option (naming the closest known one), or a value the
            argument classes refuse.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    check_train_argv(parser, argv)
    try:
        model_args, data_args, training_args = parser.parse_args_and_config(args=argv)
    except ValueError as error:
        # The argument classes' own checks (`__post_init__`): every key is known by now, so this is a bad value.
        raise TrainInputError(str(error).strip().splitlines()[0]) from None
    return model_args, data_args, training_args


class TinyLlavaSFTTrainer(SFTTrainer):
    """`SFTTrainer` that adds the collator's counters (dropped / truncated / skipped samples) to every log, with
    `group_by_modality_length=True` samples with `ModalityLengthGroupedSampler` (the train dataset needs the columns
    of `add_length_columns`), and on CPU projects only the labelled positions through the LM head
    (`tinyllava_hf.train.lm_head`; TRL does so only where Triton runs)."""

    def __init__(self, *args: Any, group_by_modality_length: bool = False, **kwargs: Any) -> None:
        self.group_by_modality_length = group_by_modality_length
        super().__init__(*args, **kwargs)
        # The model object TRL gave its fused head (the base model under a PEFT wrapper).
        model = self.model.get_base_model() if is_peft_model(self.model) else self.model
        if supports_supervised_only_head(model, self.args.device):
            score_supervised_positions_only(model)

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> Sampler | None:
        if not self.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        return ModalityLengthGroupedSampler.from_dataset(
            train_dataset if train_dataset is not None else self.train_dataset,
            batch_size=self._train_batch_size,
            world_size=self.args.world_size,
            seed=self.args.seed,
        )

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """TRL writes its generic card ("fine-tuned version of [None]") into `output_dir` at every checkpoint save;
        `run_training` writes the project's card (`tinyllava_hf.hub.write_checkpoint_card`) once the model is saved."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        collator = self.data_collator
        if isinstance(collator, TinyLlavaCollator) and "loss" in logs:
            for key in ("truncated", "dropped_overlength", "skipped_bad_media", "empty_batches"):
                if collator.stats.get(key):
                    logs[f"data/{key}"] = float(collator.stats[key])
        super().log(logs, start_time)


def _configure(training_args: SFTConfig) -> bool:
    """Settings our collator needs whatever the recipe says (the ones TRL's docs give for custom VLM collators).

    Returns whether to pack (`padding_free`), which our collator does: TRL refuses `padding_free` for vision datasets
    and with a custom collator, so it must not see it.
    """
    if training_args.packing:
        raise ValueError(
            "packing (TRL's dataset-level bin packing) is not supported for image/audio data; use padding_free: "
            "true, our padding-free packing of each batch into one row (see tinyllava_hf/train/packing.py)."
        )
    packing = training_args.padding_free
    training_args.padding_free = False
    training_args.remove_unused_columns = False  # the collator needs id/messages_json/images/audios
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    return packing


def resolve_resume_checkpoint(training_args: SFTConfig) -> str | None:
    """The checkpoint to resume from (see the module docstring), or None to start afresh.

    Only complete checkpoints count: one whose save was interrupted is skipped with a warning
    (`tinyllava_hf.train.checkpoints`).
    """
    value = training_args.resume_from_checkpoint
    if isinstance(value, str) and value.lower() in ("false", "no", "none"):
        return None
    completeness = dict(
        save_only_model=training_args.save_only_model, deepspeed=bool(getattr(training_args, "deepspeed", None))
    )
    last = last_complete_checkpoint(training_args.output_dir, **completeness)
    if value is None:
        if last is not None:
            logger.warning("Resuming from %s (pass --resume_from_checkpoint false to start afresh).", last)
        return last
    if isinstance(value, bool) or value.lower() in ("true", "yes", "last"):
        if last is None:
            raise TrainInputError(
                f"--resume_from_checkpoint {value}: no checkpoint-* in {training_args.output_dir} is complete."
            )
        return last
    if not os.path.isdir(value):
        raise TrainInputError(f"--resume_from_checkpoint {value}: no such checkpoint folder.")
    if problem := checkpoint_problem(value, **completeness):
        raise TrainInputError(
            f"--resume_from_checkpoint {value}: incomplete checkpoint ({problem}); give an earlier one, or `true` "
            "for the last complete one."
        )
    return value


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: SFTConfig,
    recipe: str | None = None,
    overrides: Sequence[str] = (),
) -> TinyLlavaSFTTrainer:
    """Train, save the final model/adapter + processor (and, for a whole model, the project's model card, naming
    `recipe` and the command-line `overrides`) to `output_dir`, and return the trainer.

    The trainer holds the trained model (`trainer.model`, a `PeftModel` under LoRA), the collator with its counters
    (`trainer.data_collator.stats`) and the logs (`trainer.state.log_history`).
    """
    check_train_paths(model_args, data_args, training_args)  # before anything heavy is loaded
    packing = _configure(training_args)
    started = time.monotonic()
    set_seed(training_args.seed)  # the connector's fresh init must be the same on every rank

    output_dir = Path(training_args.output_dir)
    # Under ZeRO-3, loading a checkpoint partitions its weights inside `deepspeed.zero.Init`, a collective every rank
    # must enter together: main_process_first (rank 0 alone, the others at a barrier) would deadlock. Only building
    # from parts, which runs outside zero.Init and may save a LoRA base model, needs rank 0 first.
    loads_partitioned = is_deepspeed_zero3_enabled() and model_args.model_name_or_path is not None
    building = nullcontext() if loads_partitioned else training_args.main_process_first(desc="building the model")
    with building:
        model, processor = load_training_start(
            model_args,
            base_model_dir=output_dir / BASE_MODEL_SUBDIR,
            is_main_process=training_args.process_index == 0,
        )

    collator = TinyLlavaCollator(
        processor,
        max_length=training_args.max_length,
        on_overlength=data_args.on_overlength,
        skip_bad_samples=data_args.skip_bad_samples,
        pad_to_multiple_of=training_args.pad_to_multiple_of,
        # ZeRO-3 gathers tower weights collectively: every rank must run every tower at every step.
        dummy_media=is_deepspeed_zero3_enabled(),
        packing=packing,
        max_tokens_per_row=data_args.packing_token_budget,
    )
    if data_args.packing_token_budget is not None and not packing:
        raise TrainInputError("packing_token_budget applies to padding-free packing: add padding_free: true.")
    datasets = {}
    for split, paths in (("train", data_args.data_path), ("eval", data_args.eval_data_path)):
        if not paths:
            continue
        dataset, _ = load_dataset_files(
            paths,
            image_folder=data_args.image_folder,
            audio_folder=data_args.audio_folder,
            data_format=data_args.data_format,
            skip_bad_samples=data_args.skip_bad_samples,
            verify_media=data_args.verify_media,
            max_samples=data_args.max_samples,
        )
        datasets[split] = filter_overlength(dataset, collator, num_proc=training_args.dataset_num_proc, split=split)
    if data_args.group_by_modality_length:
        datasets["train"] = add_length_columns(
            datasets["train"], collator.measure, num_proc=training_args.dataset_num_proc
        )

    # Packed rows through SDPA would compute each row's whole block-diagonal square: attend per sample instead.
    if packing and use_varlen_attention(model):
        logger.info("padding_free: the language model attends within each packed sample (varlen_sdpa).")
    model = apply_tune_modes(model, model_args)
    if model_args.cache_vision_features:
        enable_vision_feature_cache(model, cache_dir=model_args.vision_feature_cache_dir)
    trainable_dtypes = {name: param.dtype for name, param in model.named_parameters() if param.requires_grad}
    trainer = TinyLlavaSFTTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("eval"),
        processing_class=processor,
        group_by_modality_length=data_args.group_by_modality_length,
    )
    restore_trainable_dtypes(trainer.model, trainable_dtypes)

    result = trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(training_args))
    trainer.save_model(str(output_dir))  # weights (or adapter) + processor
    trainer.save_state()
    metrics = dict(result.metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    if collator.stats:
        logger.info("Data pipeline counters: %s", dict(collator.stats))
    if trainer.is_world_process_zero():  # one card and one message, whatever the number of processes
        adapter = model_args.uses_lora
        if not adapter:
            _write_card(output_dir, model_args, data_args, recipe, overrides, time.monotonic() - started)
        print(_saved_message(output_dir, adapter))
    return trainer


def recipe_stage(recipe: str | os.PathLike) -> tuple[str, str]:
    """`(stage, "model/stage/variant")` of a recipe at `recipes/<model>/<stage>/config_<variant>.yaml`."""
    path = Path(recipe)
    variant = path.stem.removeprefix("config_")
    return path.parent.name, f"{path.parent.parent.name}/{path.parent.name}/{variant}"


def _write_card(
    output_dir: Path, model_args, data_args, recipe: str | None, overrides: Sequence[str], seconds: float
) -> None:
    """The project's model card: what the run started from, the recipe and stage, and its training-table row."""
    from ..gguf_parts import SMOLLM2, SMOLLM2_HUB_ID
    from ..hub import training_stage, write_checkpoint_card

    start = model_args.model_name_or_path or f"the parts {model_args.llm} + {model_args.vision_tower}" + (
        f" + {model_args.audio_tower}" if model_args.audio_tower else ""
    )
    stages = []
    if recipe is not None:
        stage, recipe_name = recipe_stage(recipe)
        origin = f"Trained by `tinyllava-hf train --config {recipe}` (stage `{stage}`) from {start}"
        data = ", ".join(Path(path).name for path in data_args.data_path)
        wall = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
        stages.append(training_stage(stage, recipe_name, recipe, output_dir, data, wall))
    else:
        origin = f"Trained by `tinyllava-hf train` (no recipe file) from {start}"
    if overrides:
        origin += f", with the command-line overrides `{' '.join(overrides)}`"
    # Hub ids are what the card's `base_model` metadata links to; a local folder means nothing on the Hub, and the
    # `smollm2` alias (a pip package's GGUF) stands for the Hub model it was converted from.
    llm = SMOLLM2_HUB_ID if model_args.llm == SMOLLM2 else model_args.llm
    bases = [
        value
        for value in (model_args.model_name_or_path, llm, model_args.vision_tower, model_args.audio_tower)
        if value is not None and not _is_local(value)
    ]
    write_checkpoint_card(output_dir, origin + ".", training_stages=stages, base_model=bases)


def _is_local(value: str) -> bool:
    try:
        return resolve_model_source(value)[1]
    except ModelLoadError:
        return True


def _saved_message(output_dir: Path, adapter: bool) -> str:
    if adapter:
        return (
            f"Saved the LoRA adapter and processor to {output_dir}.\n"
            f"Merge it into a full checkpoint: tinyllava-hf merge-lora {output_dir} {output_dir}-merged"
        )
    return (
        f"Saved the model, processor and model card to {output_dir}.\n"
        f"Load it: AutoModelForImageTextToText.from_pretrained({str(output_dir)!r}, trust_remote_code=True) and "
        f"AutoProcessor.from_pretrained(...) the same way, or try it: tinyllava-hf chat {output_dir}"
    )


# Input mistakes reported in one line (`error: ...`, exit code 1), without a traceback.
USER_ERRORS = (
    TrainInputError,
    DataFileError,
    BadSampleError,
    OverlengthError,
    NothingToTrainError,
    ModelLoadError,
    TowerNotFrozenError,
)


def main(argv: Sequence[str] | None = None) -> int:
    """What `tinyllava-hf train` runs: parse `argv` (`--config RECIPE.yaml` + overrides), train, return 0 (1 and a
    one-line `error: ...` for an input mistake)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        model_args, data_args, training_args = parse_train_args(argv)
        # For the model card: which recipe ran, and what the command line changed.
        recipe, overrides = None, argv
        if "--config" in argv:
            index = argv.index("--config")
            recipe, overrides = argv[index + 1], argv[:index] + argv[index + 2 :]
        run_training(model_args, data_args, training_args, recipe=recipe, overrides=overrides)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    # Only after success: a rank that failed must not wait at a barrier for ranks still inside a collective.
    _close_process_group()
    return 0


def _close_process_group() -> None:
    """Tear the distributed process group down before the interpreter exits. Left to interpreter shutdown, a rank of
    a 2-process CPU ZeRO-3 run sometimes aborted after training and saving had finished ("terminate called without
    an active exception", SIGABRT) while the communication backend's threads were destroyed still running."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
