"""``tinyllava-hf chat``: talk to a checkpoint from the terminal, with images and audio.

    tinyllava-hf chat MODEL --image cat.png --prompt "what is in the picture?"   # one answer, then exit
    tinyllava-hf chat MODEL [--image PATH ...] [--audio PATH ...]                 # interactive, streamed answers

In the interactive chat every line is a user turn, except the commands ``/image PATH``, ``/audio PATH`` (attach
media to the next turn), ``/reset`` (start over), ``/help`` and ``/exit``. The whole conversation, earlier answers
and media included, is rendered with the checkpoint's chat template on every turn, as it was trained.

A mistake (a missing file, audio for a checkpoint without an audio tower, an unknown template) is one ``error:``
line: it ends the one-shot command with exit code 1, and leaves an interactive session running.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, Any

from .cli import command_parser, first_line, reports_user_errors
from .loading import DTYPES, ModelLoadError

HELP = """commands:
  /image PATH   attach an image to your next message
  /audio PATH   attach an audio clip to your next message (checkpoints with an audio tower)
  /reset        forget the conversation and start over
  /help         show this help
  /exit         leave (end of input does too)"""


class ChatInputError(ValueError):
    """A user mistake in the chat (a missing file, an unsupported medium, an unknown command): one line, the fix."""


class ChatSession:
    """A multi-turn conversation with one model: media waiting for the next user turn, and the history of turns.

    Each turn renders the full history (earlier answers and all media included) with the chat template and decodes
    greedily unless `generate_kwargs` say otherwise, so an answer equals `model.generate` on the same conversation.

    Args:
        model: a loaded image-text-to-text model, in eval mode.
        processor: its processor.
        chat_template: a template name of the processor (see `tinyllava_hf.eval.runner.chat_template_names`), Jinja
            text, or `None` for the processor's default.
        max_new_tokens: the longest answer, in tokens.
        **generate_kwargs: more `generate` settings (`do_sample`, `temperature`, ...).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        chat_template: str | None = None,
        max_new_tokens: int = 256,
        **generate_kwargs: Any,
    ):
        from .eval.runner import resolve_chat_template

        self.model = model
        self.processor = processor
        # Resolved once, so an unknown name fails before the first turn instead of rendering the name as text.
        self.chat_template = resolve_chat_template(processor, chat_template)
        self.generate_kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens, **generate_kwargs}
        if not self.generate_kwargs["do_sample"]:
            # Greedy: clear the sampling knobs a checkpoint's generation_config may set, which generate() warns about.
            self.generate_kwargs.update(temperature=None, top_p=None, top_k=None)
        self.messages: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        self.last_prompt: str | None = None  # the rendered text of the latest turn, for tests and debugging

    @property
    def has_audio(self) -> bool:
        return getattr(self.processor, "feature_extractor", None) is not None

    def add_image(self, path: str | Path) -> None:
        """Attach the image at `path` to the next user turn (read now, so a bad file is reported at once)."""
        from PIL import Image

        path = _existing_file(path, "image")
        try:
            with Image.open(path) as image:
                loaded = image.convert("RGB")
        except OSError as err:
            raise ChatInputError(f"cannot read the image {path}: {err}") from None
        self.pending.append({"type": "image", "image": loaded})

    def add_audio(self, path: str | Path) -> None:
        """Attach the audio clip at `path` (decoded and resampled to the feature extractor's rate) to the next turn."""
        if not self.has_audio:
            raise ChatInputError(
                "this checkpoint has no audio tower, so it cannot take audio; use a TinyLLaVA checkpoint built with "
                "an audio tower"
            )
        from transformers.audio_utils import load_audio

        path = _existing_file(path, "audio file")
        try:
            waveform = load_audio(str(path), sampling_rate=self.processor.feature_extractor.sampling_rate)
        except (OSError, RuntimeError, ValueError) as err:
            raise ChatInputError(f"cannot read the audio file {path}: {first_line(err)}") from None
        self.pending.append({"type": "audio", "audio": waveform})

    def reset(self) -> None:
        self.messages.clear()
        self.pending.clear()
        self.last_prompt = None

    def ask(self, text: str, streamer: Any = None) -> str:
        """Add a user turn (`text` with the pending media), generate the answer, add it to the history, return it.

        On a failure the turn is taken back (history and pending media as before), so the session can go on.
        """
        import torch

        message = {"role": "user", "content": [*self.pending, {"type": "text", "text": text}]}
        conversation = [*self.messages, message]
        template = {"chat_template": self.chat_template}
        self.last_prompt = self.processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False, **template
        )
        inputs = self.processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", **template
        )
        inputs = inputs.to(self.model.device, self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                **self.generate_kwargs,
                pad_token_id=self.processor.tokenizer.pad_token_id,
                streamer=streamer,
            )
        answer = self.processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        self.messages += [message, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        self.pending = []
        return answer


def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise ChatInputError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ChatInputError(f"{what} {path} is a folder, not a file")
    return path


def _streamer(processor: Any, output: IO[str]) -> Any:
    """A `TextStreamer` that writes the answer to `output` as tokens arrive (not to stdout), without the space the
    model puts before its first word, so the streamed text reads as the stripped answer the history keeps."""
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        started = False

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self.started:
                text = text.lstrip()
                self.started = bool(text)
            output.write(text if not stream_end else text.rstrip() + "\n")
            output.flush()

    return _Streamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)


def chat_loop(session: ChatSession, input_stream: IO[str], output: IO[str], prompt: str = "") -> int:
    """Read user lines from `input_stream` until `/exit` or its end; stream each answer to `output`.

    `prompt` is written before each line is read (`"> "` on a terminal, nothing when input is piped). Mistakes are
    reported as one `error:` line on `output` and the session continues. Returns the exit code (0).
    """
    output.write("Chatting; type /help for commands, /exit to leave.\n")
    while True:
        output.write(prompt)
        output.flush()
        line = input_stream.readline()
        if not line:  # end of input
            if prompt:
                output.write("\n")
            return 0
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/"):
                command, _, argument = line.partition(" ")
                argument = argument.strip().strip("\"'")
                if command in ("/exit", "/quit"):
                    return 0
                _run_command(session, command, argument, output)
            else:
                try:
                    session.ask(line, streamer=_streamer(session.processor, output))
                except KeyboardInterrupt:  # Ctrl+C stops an answer, not the chat (at the prompt it ends the chat)
                    output.write("\n(interrupted: that turn was dropped)\n")
        except (ChatInputError, ValueError, OSError) as err:
            # ValueError also covers the processor's own checks (e.g. a template that has no place for an image).
            output.write(f"error: {first_line(err)}\n")


def _run_command(session: ChatSession, command: str, argument: str, output: IO[str]) -> None:
    if command in ("/image", "/audio"):
        if not argument:
            raise ChatInputError(f"{command} needs a path: {command} PATH")
        (session.add_image if command == "/image" else session.add_audio)(argument)
        waiting = len(session.pending)
        output.write(f"attached {argument} ({waiting} item{'s' if waiting > 1 else ''} for your next message)\n")
    elif command == "/reset":
        session.reset()
        output.write("conversation cleared\n")
    elif command == "/help":
        output.write(HELP + "\n")
    else:
        raise ChatInputError(f"unknown command {command}; type /help for the commands")


@reports_user_errors(ChatInputError, ModelLoadError, ValueError)
def run_chat(args: argparse.Namespace) -> int:
    """The `chat` command: load, check every input, then one answer (`--prompt`) or the interactive loop."""
    try:
        if args.max_new_tokens < 1:
            raise ChatInputError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        for flag, paths in (("--image", args.image), ("--audio", args.audio)):
            for path in paths:  # before the model loads: a typo should not cost a load
                _existing_file(path, flag)

        from .loading import load_model, load_processor

        processor = load_processor(args.model)
        session = ChatSession(None, processor, chat_template=args.chat_template, max_new_tokens=args.max_new_tokens)
        for path in args.image:
            session.add_image(path)
        for path in args.audio:
            session.add_audio(path)
        session.model = load_model(args.model, device=args.device, dtype=args.dtype)

        if args.prompt is not None:
            print(session.ask(args.prompt))
            return 0
        interactive = sys.stdin.isatty()
        return chat_loop(session, sys.stdin, sys.stdout, prompt="> " if interactive else "")
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def make_chat_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The `chat` parser: added to `subparsers` (`tinyllava-hf chat`) when given, else stand-alone."""
    parser = command_parser(
        subparsers,
        "chat",
        help="chat with a checkpoint (images, audio, streaming)",
        description=(
            "Chat with a checkpoint: one answer with --prompt, else an interactive multi-turn chat with streamed "
            "answers, reading your messages line by line."
        ),
        epilog=HELP.replace("commands:", "interactive commands:", 1),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="checkpoint folder (or Hub id)")
    parser.add_argument(
        "--image", action="append", default=[], metavar="PATH", help="image for the first message (repeatable)"
    )
    parser.add_argument(
        "--audio", action="append", default=[], metavar="PATH", help="audio clip for the first message (repeatable)"
    )
    parser.add_argument("--prompt", default=None, help="ask this, print the answer and exit (no interactive chat)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest answer, in tokens (default: 256)")
    parser.add_argument(
        "--chat-template", default=None, help="one of the checkpoint's chat template names (default: its default)"
    )
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype (default: as saved)")
    parser.set_defaults(func=run_chat)
    return parser
