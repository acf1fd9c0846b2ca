"""``tinyllava-hf eval``: run a benchmark, score its answers, and report results.

Usage:
    tinyllava-hf eval tasks
    tinyllava-hf eval run --model DIR --task NAME --data QUESTIONS [--image-folder DIR] [--batch-size N]
                          [--limit N] [--blank-image] --output PRED.jsonl
    tinyllava-hf eval score --task NAME --predictions PRED.jsonl --annotations PATH [--questions FILE]
                            [--output PRED.result.json] [--overwrite]
    tinyllava-hf eval report PRED.result.json ... [--output REPORT.md]
    tinyllava-hf eval easy-vqa --output-dir DIR [--split test] [--limit N] [--seed S]

Every subcommand checks its inputs (files, folders, the model path, numbers) before any work and reports a mistake
as one ``error:`` line with exit code 1. Only the task registry is imported to build the parser; torch,
transformers and the model load only inside ``eval run``, so ``tinyllava-hf eval --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import command_parser, reports_user_errors
from ..easy_vqa import SPLITS, default_data_dir, write_easy_vqa_files
from ..files import write_text_atomic
from ..loading import DTYPES, ModelLoadError, resolve_model_source
from .loaders import EvalDataError, UnknownTaskError, read_json
from .report import render_report
from .score import score_file
from .tasks import TASKS, get_task, list_tasks

# --------------------------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------------------------


# Bad data, bad paths, unknown names and a missing optional stack: one ``error:`` line and exit code 1.
_user_errors = reports_user_errors(EvalDataError, UnknownTaskError, ModelLoadError, ImportError)


def _check_inputs(files: dict[str, str | None] | None = None, folders: dict[str, str | None] | None = None) -> None:
    """Fail before any work when an input path given on the command line does not exist (or is of the wrong kind).

    ``files`` / ``folders`` map a flag (``--data``) to its value; ``None`` values (flag not given) are skipped.
    A ``files`` entry may also be a folder where the task's loader takes one (annotations of POPE, MME, ScienceQA).
    """
    for flag, value in (files or {}).items():
        if value is not None and not Path(value).exists():
            raise EvalDataError(f"{flag} {value} does not exist")
    for flag, value in (folders or {}).items():
        if value is None:
            continue
        if not Path(value).exists():
            raise EvalDataError(f"{flag} {value} does not exist")
        if not Path(value).is_dir():
            raise EvalDataError(f"{flag} {value} is a file, not a folder")


def _check_positive(**values: int | None) -> None:
    for flag, value in values.items():
        if value is not None and value < 1:
            raise EvalDataError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")


def _check_output_file(flag: str, value: str | None) -> None:
    if value is not None and Path(value).is_dir():
        raise EvalDataError(f"{flag} {value} is a folder; give a file name (e.g. {Path(value) / 'answers.jsonl'})")


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
    # Every input is checked before the (slow) model load: a typo costs a second, not a minute.
    _check_inputs(files={"--data": args.data}, folders={"--image-folder": args.image_folder})
    _check_positive(batch_size=args.batch_size, limit=args.limit, max_new_tokens=args.max_new_tokens)
    _check_output_file("--output", args.output)
    resolve_model_source(args.model)  # a missing local folder is named as such, never looked up on the Hub
    if args.data is None and spec.name != "easy_vqa":
        print(f"error: --data is required for {spec.name} (its question file: {spec.question_file})", file=sys.stderr)
        return 2

    from ..loading import load_model, load_processor
    from .runner import resolve_chat_template, run_eval

    # The processor first (cheap): a wrong model or an unknown --chat-template is reported before anything is
    # written or the weights are read.
    processor = load_processor(args.model)
    resolve_chat_template(processor, args.chat_template)
    data, image_folder, limit, annotations = args.data, args.image_folder, args.limit, None
    if data is None:
        # The built-in data: write the (sampled) test split into a folder of its own next to the answer file (so
        # different samples never overwrite each other), then run it like any other question file.
        data_dir = default_data_dir(Path(args.output).parent, "test", limit, args.seed)
        files = write_easy_vqa_files(data_dir, "test", limit=limit, seed=args.seed)
        data, annotations, limit = files.questions, files.annotations, None  # --limit already chose the sample
        image_folder = image_folder if image_folder is not None else files.image_folder
    model = load_model(args.model, args.device, args.dtype)
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
    """Score an answer file and write its result JSON (default: ``<predictions stem>.result.json`` beside it)."""
    get_task(args.task)
    _check_inputs(
        files={"--predictions": args.predictions, "--annotations": args.annotations, "--questions": args.questions}
    )
    if Path(args.predictions).is_dir():
        raise EvalDataError(f"--predictions {args.predictions} is a folder; give the answer file (PRED.jsonl)")
    _check_output_file("--output", args.output)
    score_file(
        args.task,
        args.predictions,
        args.annotations,
        args.output,
        questions_path=args.questions,
        model=args.model,
        overwrite=args.overwrite,
    )
    return 0


@_user_errors
def cmd_report(args: argparse.Namespace) -> int:
    """Render result JSON files as one Markdown table (stdout, and ``--output`` atomically)."""
    for path in args.results:
        _check_inputs(files={"result file": path})
    results = []
    for path in args.results:
        result = read_json(path)
        if not isinstance(result, dict) or "task" not in result or not isinstance(result.get("metrics"), dict):
            raise EvalDataError(f"{path} is not a result file (no 'task' and 'metrics'); give files eval score wrote")
        results.append(result)
    table = render_report(results)
    print(table, end="")
    if args.output:
        write_text_atomic(args.output, table)
    return 0


@_user_errors
def cmd_easy_vqa(args: argparse.Namespace) -> int:
    """Write the built-in easy-VQA split as LLaVA-format question and annotation files."""
    _check_positive(limit=args.limit)
    if Path(args.output_dir).is_file():
        raise EvalDataError(f"--output-dir {args.output_dir} is a file; give a folder")
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
    parser = command_parser(subparsers, "eval", help="run, score and report benchmarks", description=description)
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
    run.add_argument(
        "--chat-template", default=None, help="one of the checkpoint's chat template names (default: its default)"
    )
    run.add_argument("--model-id", default=None, help="model_id written in the answers (default: model folder name)")
    run.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    run.add_argument("--dtype", default="auto", choices=DTYPES)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    score = commands.add_parser("score", help="score an answer file, write PRED.result.json")
    score.add_argument("--task", required=True, help=task_names)
    score.add_argument("--predictions", required=True, help="answer file (JSON lines with question_id, text)")
    score.add_argument("--annotations", required=True, help="the benchmark's annotation file or folder")
    score.add_argument("--questions", default=None, help="LLaVA question file (POPE only)")
    score.add_argument(
        "--output", default=None, help="result file (default: <predictions stem>.result.json next to the predictions)"
    )
    score.add_argument("--model", default=None, help="model name in the report (default: the answers' model_id)")
    score.add_argument(
        "--overwrite", action="store_true", help="replace --output even if it holds the result of other predictions"
    )
    score.set_defaults(func=cmd_score)

    report = commands.add_parser("report", help="Markdown table of result files (written by eval score)")
    report.add_argument("results", nargs="+", help="result JSON files (PRED.result.json)")
    report.add_argument("--output", default=None, help="also write the table to this file (REPORT.md)")
    report.set_defaults(func=cmd_report)

    easy_vqa = commands.add_parser("easy-vqa", help="write the built-in easy-VQA data as question/annotation files")
    easy_vqa.add_argument("--output-dir", required=True, help="folder for questions.jsonl and annotations.jsonl")
    easy_vqa.add_argument("--split", default="test", choices=SPLITS)
    easy_vqa.add_argument("--limit", type=int, default=None, help="a --seed-ed random sample of this many questions")
    easy_vqa.add_argument("--seed", type=int, default=0, help="sampling seed (with --limit)")
    easy_vqa.set_defaults(func=cmd_easy_vqa)
    return parser
