"""``tinyllava-hf eval``: run a benchmark, score its answers, and report results.

Usage:
    tinyllava-hf eval tasks
    tinyllava-hf eval run --model DIR --task NAME --data QUESTIONS [--image-folder DIR] [--batch-size N]
                          [--limit N] [--blank-image] --output PRED.jsonl
    tinyllava-hf eval score --task NAME --predictions PRED.jsonl --annotations PATH [--questions FILE]
                            [--output RESULT.json]
    tinyllava-hf eval report RESULT.json ... [--output REPORT.md]
    tinyllava-hf eval easy-vqa --output-dir DIR [--split test] [--limit N] [--seed S]

Only the task registry is imported to build the parser; torch, transformers and the model load only inside
``eval run``, so ``tinyllava-hf eval --help`` stays fast.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from ..easy_vqa import SPLITS, default_data_dir, write_easy_vqa_files
from ..files import write_text_atomic
from ..loading import DTYPES
from .loaders import EvalDataError, UnknownTaskError, read_json
from .report import render_report
from .score import score_file
from .tasks import TASKS, get_task, list_tasks

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
    spec = get_task(args.task)  # an unknown task fails before the model is loaded
    data, image_folder, limit, annotations = args.data, args.image_folder, args.limit, None
    if data is None:
        if spec.name != "easy_vqa":
            print(
                f"error: --data is required for {spec.name} (its question file: {spec.question_file})",
                file=sys.stderr,
            )
            return 2
        # The built-in data: write the (sampled) test split into a folder of its own next to the answer file (so
        # different samples never overwrite each other), then run it like any other question file.
        data_dir = default_data_dir(Path(args.output).parent, "test", limit, args.seed)
        files = write_easy_vqa_files(data_dir, "test", limit=limit, seed=args.seed)
        data, annotations, limit = files.questions, files.annotations, None  # --limit already chose the sample
        image_folder = image_folder if image_folder is not None else files.image_folder

    from ..loading import load_model_and_processor
    from .runner import run_eval

    model, processor = load_model_and_processor(args.model, args.device, args.dtype)
    result = run_eval(
        model,
        processor,
        spec,
        data,
        args.output,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=limit,
        image_folder=image_folder,
        blank_image=args.blank_image,
        model_id=args.model_id or Path(args.model.rstrip("/\\")).name,
        chat_template=args.chat_template,
        progress=not args.no_progress,
    )
    print(
        f"[{result.task}] {result.model_id}: {result.num_generated} answers generated, {result.num_skipped} already "
        f"in the file ({result.num_questions} questions) -> {result.output}"
    )
    if annotations is not None:
        print(
            f"score with: tinyllava-hf eval score --task {result.task} --predictions {result.output} "
            f"--annotations {annotations}"
        )
    return 0


@_user_errors
def cmd_score(args: argparse.Namespace) -> int:
    """Score an answer file and write RESULT.json."""
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
    results = [read_json(path) for path in args.results]
    table = render_report(results)
    print(table, end="")
    if args.output:
        write_text_atomic(args.output, table)
    return 0


@_user_errors
def cmd_easy_vqa(args: argparse.Namespace) -> int:
    """Write the built-in easy-VQA split as LLaVA-format question and annotation files."""
    files = write_easy_vqa_files(args.output_dir, args.split, limit=args.limit, seed=args.seed)
    print(f"{files.num_questions} questions -> {files.questions}")
    print(f"annotations -> {files.annotations}")
    print(f"images: {files.image_folder}")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------------------------


def make_eval_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The ``eval`` parser with its ``tasks``, ``run``, ``score``, ``report`` and ``easy-vqa`` subcommands.

    Added to ``subparsers`` (the ``tinyllava-hf`` command line) when given, else stand-alone. Each subcommand sets
    ``func``, which takes the parsed arguments and returns an exit code.
    """
    description = "Run a benchmark, score its answers, and report results."
    if subparsers is not None:
        parser = subparsers.add_parser("eval", help="run, score and report benchmarks", description=description)
    else:
        parser = argparse.ArgumentParser(prog="tinyllava-hf eval", description=description)
    commands = parser.add_subparsers(dest="eval_command", metavar="<command>", required=True)
    task_names = f"one of: {', '.join(list_tasks())}"

    tasks = commands.add_parser("tasks", help="list the benchmarks, their files and prompts")
    tasks.set_defaults(func=cmd_tasks)

    run = commands.add_parser("run", help="generate answers (resumable) for a benchmark")
    run.add_argument("--model", required=True, help="saved model folder (or Hub id)")
    run.add_argument("--task", required=True, help=task_names)
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
    score.add_argument("--task", required=True, help=task_names)
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

    easy_vqa = commands.add_parser("easy-vqa", help="write the built-in easy-VQA data as question/annotation files")
    easy_vqa.add_argument("--output-dir", required=True, help="folder for questions.jsonl and annotations.jsonl")
    easy_vqa.add_argument("--split", default="test", choices=SPLITS)
    easy_vqa.add_argument("--limit", type=int, default=None, help="a --seed-ed random sample of this many questions")
    easy_vqa.add_argument("--seed", type=int, default=0, help="sampling seed (with --limit)")
    easy_vqa.set_defaults(func=cmd_easy_vqa)
    return parser
