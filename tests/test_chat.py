"""`tinyllava-hf chat`: one answer with `--prompt` equals greedy `generate` on the same conversation; the interactive
loop keeps every turn and image in the history, streams its answers, and survives a user's mistakes."""

import io
import subprocess
import sys
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from tinyllava_hf import TinyLlavaForConditionalGeneration
from tinyllava_hf.chat import ChatSession, chat_loop
from tinyllava_hf.cli import main
from tinyllava_hf.loading import load_model_and_processor
from tinyllava_hf.testing_utils import random_audio, random_image, scramble, tiny_config, tiny_processor

MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A vision checkpoint (resampler connector: one llava cannot express), an audio one, two images, a WAV clip."""
    root = tmp_path_factory.mktemp("chat")
    for name, config in (("vision", tiny_config(connector="resampler")), ("audio", tiny_config(audio=True))):
        processor = tiny_processor(config)
        scramble(TinyLlavaForConditionalGeneration(config)).save_pretrained(root / name)
        processor.save_pretrained(root / name)
    for seed in (0, 1):
        random_image(seed).save(root / f"image{seed}.png")
    with wave.open(str(root / "clip.wav"), "wb") as clip:  # 16-bit PCM: what a user's recorder writes
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(16000)
        clip.writeframes((np.clip(random_audio(1), -1, 1) * 32767).astype("<i2").tobytes())
    return root


@pytest.fixture(scope="module")
def vision(files):
    return load_model_and_processor(files / "vision", device="cpu")


def greedy(model, processor, conversation) -> str:
    """The reference answer: `generate` on the rendered conversation, as a user of transformers would write it."""
    inputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def user(text, *media):
    return {"role": "user", "content": [*media, {"type": "text", "text": text}]}


def image_block(path):
    return {"type": "image", "image": Image.open(path).convert("RGB")}


def test_prompt_mode_prints_the_greedy_answer(files, vision, capsys):
    image = files / "image0.png"
    code = main(["chat", str(files / "vision"), "--image", str(image), "--prompt", "What shape?"] + _short())
    assert code == 0
    expected = greedy(*vision, [user("What shape?", image_block(image))])
    assert expected  # a scrambled model says something, so the comparison means something
    assert capsys.readouterr().out == expected + "\n"


def test_prompt_mode_with_audio(files, capsys):
    clip = files / "clip.wav"
    code = main(["chat", str(files / "audio"), "--audio", str(clip), "--prompt", "What is said?"] + _short())
    assert code == 0
    from transformers.audio_utils import load_audio

    model, processor = load_model_and_processor(files / "audio", device="cpu")
    waveform = load_audio(str(clip), sampling_rate=processor.feature_extractor.sampling_rate)
    expected = greedy(model, processor, [user("What is said?", {"type": "audio", "audio": waveform})])
    assert expected and capsys.readouterr().out == expected + "\n"


def test_interactive_history_keeps_turns_and_a_mid_conversation_image(files, vision):
    model, processor = vision
    session = ChatSession(model, processor, max_new_tokens=MAX_NEW_TOKENS)
    image = files / "image1.png"
    output = io.StringIO()
    code = chat_loop(session, io.StringIO(f"Describe it.\n/image {image}\nWhat shape?\n"), output)
    assert code == 0

    first, second = session.messages[1]["content"][0]["text"], session.messages[3]["content"][0]["text"]
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    # The second turn's prompt is the whole conversation: the first answer, then the image added for turn two.
    prompt = session.last_prompt
    assert prompt.count(processor.image_token) == 1
    assert prompt.index("Describe it.") < prompt.index(first) < prompt.index(processor.image_token)
    assert prompt.index(processor.image_token) < prompt.index("What shape?")
    assert prompt.endswith("ASSISTANT:")
    # Each answer equals greedy generation on the conversation so far, and was streamed to the output as it came.
    assert first == greedy(model, processor, [user("Describe it.")])
    history = [user("Describe it."), session.messages[1]]
    assert second == greedy(model, processor, [*history, user("What shape?", image_block(image))])
    lines = output.getvalue().splitlines()
    assert lines[1:] == [first, f"attached {image} (1 item for your next message)", second]


def test_interactive_mistakes_are_one_line_and_the_chat_goes_on(files, vision):
    session = ChatSession(*vision, max_new_tokens=MAX_NEW_TOKENS)
    commands = [
        "/image /no/such/image.png",
        f"/audio {files / 'clip.wav'}",  # a vision-only checkpoint
        "/image",
        "/bogus",
        "/help",
        "Still there?",
        "/reset",
        "/exit",
        "never read",
    ]
    output = io.StringIO()
    assert chat_loop(session, io.StringIO("\n".join(commands) + "\n"), output) == 0
    errors = [line for line in output.getvalue().splitlines() if line.startswith("error:")]
    assert errors == [
        "error: image /no/such/image.png does not exist",
        "error: this checkpoint has no audio tower, so it cannot take audio; use a TinyLLaVA checkpoint built with "
        "an audio tower",
        "error: /image needs a path: /image PATH",
        "error: unknown command /bogus; type /help for the commands",
    ]
    assert "/reset        forget the conversation" in output.getvalue()
    assert "conversation cleared" in output.getvalue()
    assert session.messages == [] and session.pending == []  # reset after one answered turn; "never read" was not


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image", "/no/such.png"], "error: --image /no/such.png does not exist"),
        (["--audio", "{clip}"], "error: this checkpoint has no audio tower"),
        (["--chat-template", "nope"], "error: unknown chat template 'nope'; this checkpoint's templates: default,"),
        (["--max-new-tokens", "0"], "error: --max-new-tokens must be at least 1, got 0"),
    ],
)
def test_command_line_mistakes(files, capsys, extra, message):
    extra = [arg.format(clip=files / "clip.wav") for arg in extra]
    assert main(["chat", str(files / "vision"), "--prompt", "hi", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_missing_model_folder(tmp_path, capsys):
    assert main(["chat", str(tmp_path / "nope"), "--prompt", "hi"]) == 1
    assert capsys.readouterr().err == f"error: model folder {tmp_path / 'nope'} does not exist\n"


@pytest.mark.subprocess
def test_interactive_command_reads_stdin(files):
    """The installed command, with piped input: two turns, an image between them, streamed answers, exit code 0."""
    image = files / "image0.png"
    result = subprocess.run(
        [sys.executable, "-m", "tinyllava_hf", "chat", str(files / "vision"), *_short()],
        input=f"Hello\n/image {image}\nWhat shape?\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Chatting; type /help")
    assert lines[2] == f"attached {image} (1 item for your next message)"
    assert len(lines) == 4 and "Traceback" not in result.stderr


def _short() -> list[str]:
    return ["--max-new-tokens", str(MAX_NEW_TOKENS), "--device", "cpu"]
