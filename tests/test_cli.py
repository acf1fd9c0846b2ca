"""The command line as a user meets it: every command listed once, fast and quiet `--help`, one flag style."""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinyllava_hf.cli import COMMANDS, COMMANDS_BY_NAME, main, normalise_flags, reports_user_errors

HELP_SECONDS = 1.5
# What a command's --help must not import: the heavy stacks load only when a command runs.
HEAVY_MODULES = ("torch", "transformers", "trl", "peft", "deepspeed", "bitsandbytes", "matplotlib")


def _help_in_a_fresh_process(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    # `train` parses with TRL's own TrlParser, whose package import is light (trl loads its trainers lazily).
    heavy = tuple(name for name in HEAVY_MODULES if not (argv[0] == "train" and name == "trl"))
    probe = (
        "import sys\n"
        "from tinyllava_hf.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('IMPORTED', sorted(name for name in {heavy!r} if name in sys.modules))\n"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return time.perf_counter() - start, result


@pytest.mark.subprocess
@pytest.mark.parametrize("argv", [["--help"], *([command.name, "--help"] for command in COMMANDS)], ids=" ".join)
def test_help_is_fast_and_quiet(argv):
    # Best of two: the first start of a process can pay for a cold disk cache.
    elapsed, result = min((_help_in_a_fresh_process(argv) for _ in range(2)), key=lambda pair: pair[0])
    assert result.returncode == 0, result.stderr
    assert "usage: tinyllava-hf" in result.stdout
    assert result.stderr == "", f"--help printed to stderr:\n{result.stderr}"
    assert "IMPORTED []" in result.stdout, result.stdout.splitlines()[-1]
    assert elapsed < HELP_SECONDS, f"{' '.join(argv)} took {elapsed:.2f} s"


def test_top_level_help_lists_every_command_once(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out.split("commands:")[1]
    for command in COMMANDS:
        assert sum(line.split()[0] == command.name for line in listing.splitlines() if line.strip()) == 1
    assert len(COMMANDS_BY_NAME) == len(COMMANDS)


def test_unknown_command_is_one_line_naming_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "unknown command 'trian' (did you mean train?)" in error and "Traceback" not in error
    with pytest.raises(SystemExit):
        main(["zzz"])
    error = capsys.readouterr().err
    assert "unknown command 'zzz'; the commands are: train" in error and "did you mean" not in error


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["export-gguf", "src", "dst", "--out-type", "f32"],
            "tinyllava-hf export-gguf: error: unrecognized arguments: --out-type (did you mean --outtype?) f32",
        ),
        (
            ["push", "dir", "org/name", "--dryrun"],
            "tinyllava-hf push: error: unrecognized arguments: --dryrun (did you mean --dry-run?)",
        ),
        (  # a subcommand of a subcommand, and an `--option=value`
            ["eval", "easy-vqa", "--output-dir", "out", "--lmit=3"],
            "tinyllava-hf eval easy-vqa: error: unrecognized arguments: --lmit=3 (did you mean --limit?)",
        ),
        (["--verison"], "tinyllava-hf: error: unrecognized arguments: --verison (did you mean --version?)"),
        (
            ["export-gguf", "src", "dst", "--zzzzzz"],
            "tinyllava-hf export-gguf: error: unrecognized arguments: --zzzzzz",
        ),  # nothing close: no suggestion
    ],
    ids=lambda value: value[0] if isinstance(value, list) else None,
)
def test_misspelt_option_names_the_closest_one(capsys, argv, line):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.splitlines()[-1] == line
    assert "Traceback" not in error


def test_a_stand_alone_command_parser_suggests_too(capsys):
    from tinyllava_hf.convert.cli import make_export_gguf_parser

    with pytest.raises(SystemExit):
        make_export_gguf_parser().parse_args(["src", "dst", "--nmae", "x"])
    assert capsys.readouterr().err.splitlines()[-1].endswith("--nmae (did you mean --name?) x")


def test_reports_user_errors_prints_one_line_and_returns_1(capsys):
    @reports_user_errors(OSError, prefix="pushing to {repo_id} failed")
    @reports_user_errors(ValueError, "no.such.module:AnError")
    def command(args):
        raise args.error

    args = argparse.Namespace(repo_id="org/name", error=ValueError("bad value\nsecond line"))
    assert command(args) == 1
    assert capsys.readouterr().err == "error: bad value\n"
    args.error = ConnectionError("")
    assert command(args) == 1
    assert capsys.readouterr().err == "error: pushing to org/name failed: ConnectionError\n"
    args.error = KeyError("a bug")  # not a user error: its traceback is wanted
    with pytest.raises(KeyError):
        command(args)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--output_dir", "x"], ["--output-dir", "x"]),
        (["--test_limit=5", "--quick"], ["--test-limit=5", "--quick"]),
        (["a_b", "--seed", "1"], ["a_b", "--seed", "1"]),  # values and positionals are left alone
        (["--", "--not_a_flag"], ["--", "--not_a_flag"]),
    ],
)
def test_underscore_flags_are_accepted(argv, expected):
    assert normalise_flags(argv) == expected


def test_demo_takes_both_spellings():
    from tinyllava_hf.demo.cli import make_demo_parser

    parser = make_demo_parser()
    for spelling in ("--output-dir", "--output_dir"):
        args = parser.parse_args(normalise_flags([spelling, "out"]))
        assert args.output_dir == "out"


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_training_run_prints_no_warnings_of_stacks_it_does_not_use(parts, tmp_path):
    # bitsandbytes (imported by peft, via TRL) and DeepSpeed (imported by accelerate) warn on every run unless told
    # otherwise; a plain connector-only run uses neither.
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "debug" / "pretrain" / "config_siglip_llama.yaml"
    command = [
        str(Path(sys.executable).parent / "tinyllava-hf"), "train", "--config", str(recipe),
        "--llm", str(parts["llm"]), "--vision_tower", str(parts["siglip"]), "--data_path", str(parts["pretrain"]),
        "--image_folder", str(parts["data"]), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "DS_ACCELERATOR"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for noise in ("gemm_4bit_forward", "Setting accelerator to CPU", "Traceback"):
        assert noise not in result.stderr and noise not in result.stdout
    assert f"Saved the model, processor and model card to {tmp_path / 'out'}" in result.stdout


@pytest.mark.subprocess
@pytest.mark.parametrize("module", ["tinyllava_hf", "tinyllava_hf.cli"])
def test_python_dash_m_runs_the_cli(module):
    """`python -m tinyllava_hf.cli` runs the CLI too (it used to import the module and exit 0 doing nothing)."""
    from tinyllava_hf import __version__

    result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"tinyllava-hf {__version__}", result.stderr
    result = subprocess.run([sys.executable, "-m", module, "trian"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "did you mean train?" in result.stderr
