"""What the three demo runs (`pipeline`, `spoken`, `smollm2`) do alike: set up the output folder and time each stage,
build the parts, run the packaged recipe of a stage through `tinyllava-hf train`, and write eval_results.json,
training.png and the model card. Each demo keeps what is its own: its stages' arguments, its scoring, its figure
panels and its card text.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli import main as cli_main
from ..files import packaged_file, write_json_atomic
from ..hub import CardInfo, TrainingStage, training_stage, write_model_card
from .parts import DemoPartsSpec, save_parts

if TYPE_CHECKING:
    from .pipeline import DemoSettings


class DemoRun:
    """One demo run: its settings (`DemoSettings` or a demo's subclass of it), its output folder (created if need
    be), its two stages (`recipes` by their path in the repository, `stage_data` as the card names it, both keyed
    `pretrain` and `finetune`) and the seconds each step took, which eval_results.json and the card report."""

    def __init__(self, settings: DemoSettings, recipes: dict[str, str], stage_data: dict[str, str]) -> None:
        self.settings = settings
        self.out = Path(settings.output_dir).absolute()
        self.out.mkdir(parents=True, exist_ok=True)
        self.recipes = recipes
        self.stage_data = stage_data
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Record the time the `with` block takes as `step` (a failing block records nothing: the run stops)."""
        tick = time.perf_counter()
        yield
        self.timings[step] = time.perf_counter() - tick

    def save_parts(self) -> dict[str, Path]:
        """The text demo's parts in `parts/`, timed as `parts`; returns their folders (`llm`, `vision_tower`)."""
        with self.timed("parts"):
            spec = DemoPartsSpec()
            if self.settings.tower_pretrain_epochs is not None:
                spec = dataclasses.replace(spec, tower_pretrain_epochs=self.settings.tower_pretrain_epochs)
            return save_parts(self.out / "parts", spec)

    def train(self, stage: str, arguments: list[str]) -> None:
        """`tinyllava-hf train --config <the stage's packaged recipe> ARGUMENTS`, timed as `stage`, and shortened
        where the settings cap it (`<stage>_max_steps`, `max_train_samples`; None keeps the recipe's own)."""
        max_steps = {"pretrain": self.settings.pretrain_max_steps, "finetune": self.settings.finetune_max_steps}
        overrides = []
        if max_steps[stage] is not None:
            overrides += ["--max_steps", str(max_steps[stage])]
        if self.settings.max_train_samples is not None:
            overrides += ["--max_samples", str(self.settings.max_train_samples)]
        recipe = self.recipes[stage]
        with self.timed(stage):
            code = cli_main(["train", "--config", str(packaged_file(recipe)), *arguments, *overrides])
            if code:
                raise RuntimeError(f"training with {recipe} failed (exit code {code})")

    def test_sample(self, num_questions: int) -> str:
        """What the scores were measured on, as eval_results.json's `questions` says it."""
        if self.settings.test_limit is None:
            return "the whole test split"
        return f"a seeded sample of {num_questions} test questions (seed {self.settings.seed})"

    def finish(
        self,
        results: dict,
        stage_dirs: dict[str, Path],
        final_dir: Path,
        plot: Callable[[dict[str, list[dict]], dict, Path], Path],
        card_info: Callable[[Path, dict, list[TrainingStage]], CardInfo],
    ) -> None:
        """Stop the clock, add the time of each step and the total to `results` (its last entry, `seconds`), then
        write eval_results.json, training.png (the demo's `plot` of the stages' logged losses and the results) and
        the model card of `final_dir` (the demo's `card_info`, given the training rows of the stages' runs)."""
        self.timings["total"] = time.perf_counter() - self._start
        results["seconds"] = {name: round(value, 1) for name, value in self.timings.items()}
        write_json_atomic(self.out / "eval_results.json", results)
        plot({name: log_history(path) for name, path in stage_dirs.items()}, results, self.out / "training.png")
        stages = [
            training_stage(
                name, self.recipes[name], packaged_file(self.recipes[name]), run_dir, self.stage_data[name],
                f"{self.timings[name]:.0f} s",
            )
            for name, run_dir in stage_dirs.items()
        ]  # fmt: skip
        write_model_card(final_dir, card_info(final_dir, results, stages))


def remove_checkpoints(run_dir: Path) -> None:
    """Delete a stage's intermediate `checkpoint-*` folders: they are for resuming a killed run, and the finished
    stage no longer needs them."""
    for checkpoint in run_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)


def as_fraction(percent: float) -> float:
    """The scorers report percentages (0-100); eval_results.json holds fractions (0-1)."""
    return round(percent / 100.0, 6)


def stages_sentence(stages: list[TrainingStage]) -> str:
    """What each stage trained, for the card's text: `pretrain (`<recipe>`) trains ... in ... for N steps; ...`."""
    return "; ".join(
        f"{stage.name} (`{stage.recipe}`) trains {stage.trainable} in {stage.precision} for {stage.steps} steps"
        for stage in stages
    )


# ---------------------------------------------------------------------------------------------------------------------
# training.png
# ---------------------------------------------------------------------------------------------------------------------


def log_history(stage_dir: Path) -> list[dict]:
    """The trainer's logged losses, from the final `trainer_state.json` of a stage (or its last checkpoint)."""
    candidates = [stage_dir / "trainer_state.json", *sorted(stage_dir.glob("checkpoint-*/trainer_state.json"))]
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())["log_history"]
    return []


def plot_losses(axis, stages: dict[str, list[dict]]) -> None:
    """Each stage's logged training loss on one matplotlib axis, one curve per stage, steps counted across stages."""
    offset = 0
    for name, history in stages.items():
        points = [(entry["step"] + offset, entry["loss"]) for entry in history if "loss" in entry]
        if points:
            steps, losses = zip(*points, strict=True)
            axis.plot(steps, losses, label=name)
            offset = steps[-1]
    axis.set_xlabel("optimisation step")
    axis.set_ylabel("training loss")
    axis.set_yscale("log")
    if axis.lines:  # a run shorter than the recipes' logging interval logs no loss
        axis.legend()
    axis.set_title("Training loss (pretrain, then finetune)")


@contextmanager
def training_figure(path: Path, stages: dict[str, list[dict]], width_ratios: list[int], figsize: tuple[int, int]):
    """A one-row figure whose first panel shows the stages' training losses (`plot_losses`): the `with` block draws
    the other panels, which it is given as a list, and the figure is saved as a PNG at `path` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a CI machine
    import matplotlib.pyplot as plt

    figure, (loss_axis, *panels) = plt.subplots(
        1, len(width_ratios), figsize=figsize, gridspec_kw={"width_ratios": width_ratios}
    )
    plot_losses(loss_axis, stages)
    yield panels
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_accuracies(axis, labels: list[str], values: list[float], colors: list[str], title: str, **title_style):
    """The final accuracies as labelled bars on a 0-1 scale."""
    bars = axis.bar(labels, values, color=colors)
    axis.bar_label(bars, fmt="%.3f")
    axis.set_ylim(0, 1)
    axis.set_title(title, **title_style)
