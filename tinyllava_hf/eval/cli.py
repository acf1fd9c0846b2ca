"""``tinyllava-hf eval``: run a benchmark, score its answers, and report results.

Usage:
    tinyllava-hf eval tasks
    tinyllava-hf eval run --model DIR --task NAME --data QUESTIONS [--image-folder DIR] [--batch-size N]
                          [--limit N] [--blank-image] --output PRED.jsonl
    tinyllava-hf eval score --task NAME --predictions PRED.jsonl --annotations PATH [--questions FILE]
                            [--output RESULT.json]
    tinyllava-hf eval report RESULT.json ... [--output REPORT.md]

``python -m tinyllava_hf.eval.cli ...`` works too (without the ``tinyllava-hf`` entry point).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .loaders import EvalDataError, UnknownTaskError, read_json
from .report import render_report
from .tasks import TASKS, get_task, list_tasks

DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_model_and_processor(model_dir: str, device: str | None = None, dtype: str = "auto") -> tuple[Any, Any]:
    """Load a saved TinyLLaVA folder (or Hub id) with ``AutoModelForImageTextToText`` and ``AutoProcessor``.

    ``trust_remote_code=True`` lets folders saved with their own code (and other image-text-to-text checkpoints)
    load too; ``device`` defaults to CUDA when available.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import tinyllava_hf  # noqa: F401  (registers the TinyLLaVA classes with the Auto factories)

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype: Any = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True, dtype=torch_dtype)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    return model.to(device).eval(), processor


# --------------------------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------------------------


def _user_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report bad data and unknown names as one ``error:`` line and exit code 1, not a traceback."""

    @functools.wraps(command)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (EvalDataError, UnknownTaskError, ImportError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1

    return wrapper


@_user_errors
def cmd_tasks(args: argparse.Namespace) -> int:
    """Print the task registry."""
    for name in list_tasks():
        spec = TASKS[name]
        suffix = spec.prompt_suffix or ", ".join(f"{k}: {v}" for k, v in spec.prompt_suffix_by_type.items()) or "-"
        print(f"{name:10s} {spec.title}")
        print(f"{'':10s}   questions: {spec.question_file}  images: {spec.image_folder}")
        print(f"{'':10s}   annotations: {spec.annotations}")
        print(f"{'':10s}   prompt suffix: {suffix}  max_new_tokens: {spec.max_new_tokens}")
    return 0


@_user_errors
def cmd_run(args: argparse.Namespace) -> int:
    """Generate answers for one benchmark into a (resumable) answer file."""
    from .runner import run_eval

    spec = get_task(args.task)  # unknown task fails before the model is loaded
    if args.data is None and spec.name != "easy_vqa":
        print(f"error: --data is required for {spec.name} (its question file: {spec.question_file})", file=sys.stderr)
        return 2
    model, processor = load_model_and_processor(args.model, args.device, args.dtype)
    result = run_eval(
        model,
        processor,
        spec,
        args.data,
        args.output,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        image_folder=args.image_folder,
        blank_image=args.blank_image,
        model_id=args.model_id or Path(args.model.rstrip("/\\")).name,
        chat_template=args.chat_template,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(
        f"[{result.task}] {result.model_id}: {result.num_generated} answers generated, {result.num_skipped} already "
        f"in the file ({result.num_questions} questions) -> {result.output}"
    )
    if result.annotations_file is not None:
        print(
            f"score with: tinyllava-hf eval score --task {result.task} --predictions {result.output} "
            f"--annotations {result.annotations_file}"
        )
    return 0


@_user_errors
def cmd_score(args: argparse.Namespace) -> int:
    """Score an answer file and write RESULT.json."""
    from .score import score_file

    score_file(
        args.task,
        args.predictions,
        args.annotations,
        args.output,
        questions_path=args.questions,
        model=args.model,
    )
    return 0


@_user_errors
def cmd_report(args: argparse.Namespace) -> int:
    """Render RESULT.json files as one Markdown table (stdout, and ``--output`` atomically)."""
    from .runner import write_text_atomic

    results = [read_json(path) for path in args.results]
    table = render_report(results)
    print(table, end="")
    if args.output:
        write_text_atomic(args.output, table)
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` (with ``tasks``, ``run``, ``score``, ``report``) to the ``tinyllava-hf`` command line."""
    parser = subparsers.add_parser("eval", help="run, score and report benchmarks", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="eval_command", metavar="<command>", required=True)

    tasks = commands.add_parser("tasks", help="list the benchmarks, their files and prompts")
    tasks.set_defaults(func=cmd_tasks)

    run = commands.add_parser("run", help="generate answers (resumable) for a benchmark")
    run.add_argument("--model", required=True, help="saved model folder (or Hub id)")
    run.add_argument("--task", required=True, help=f"one of: {', '.join(list_tasks())}")
    run.add_argument("--data", default=None, help="question file (optional for easy_vqa: built in)")
    run.add_argument("--image-folder", default=None, help="folder the question file's image paths are relative to")
    run.add_argument("--output", required=True, help="answer file PRED.jsonl (resumed if it exists)")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's upstream value")
    run.add_argument(
        "--limit", type=int, default=None, help="first N questions (built-in easy_vqa: a --seed-ed random sample of N)"
    )
    run.add_argument("--seed", type=int, default=0, help="easy_vqa sampling seed (with --limit)")
    run.add_argument("--blank-image", action="store_true", help="replace every image by a blank one (blind run)")
    run.add_argument("--chat-template", default=None, help="processor chat template name (default: its default)")
    run.add_argument("--model-id", default=None, help="model_id written in the answers (default: model folder name)")
    run.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    run.add_argument("--dtype", default="auto", choices=DTYPES)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    score = commands.add_parser("score", help="score an answer file, write RESULT.json")
    score.add_argument("--task", required=True, help=f"one of: {', '.join(list_tasks())}")
    score.add_argument("--predictions", required=True, help="answer file (JSON lines with question_id, text)")
    score.add_argument("--annotations", required=True, help="the benchmark's annotation file or folder")
    score.add_argument("--questions", default=None, help="LLaVA question file (POPE only)")
    score.add_argument("--output", default=None, help="result file (default: RESULT.json next to the predictions)")
    score.add_argument("--model", default=None, help="model name in the report (default: the answers' model_id)")
    score.set_defaults(func=cmd_score)

    report = commands.add_parser("report", help="Markdown table of RESULT.json files")
    report.add_argument("results", nargs="+", help="RESULT.json files")
    report.add_argument("--output", default=None, help="also write the table to this file (REPORT.md)")
    report.set_defaults(func=cmd_report)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m tinyllava_hf.eval.cli eval ...`` or ``... run ...`` both work."""
    parser = argparse.ArgumentParser(prog="tinyllava-hf")
    register(parser.add_subparsers(dest="command", metavar="<subcommand>", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] != "eval" and not argv[0].startswith("-"):
        argv = ["eval", *argv]
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
