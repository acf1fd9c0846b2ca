"""`tinyllava-hf serve`: transformers' own OpenAI-compatible server answers chat completions with an image (a
resampler checkpoint, which llava cannot express) and with audio, exactly as greedy `generate` does.

Two real servers on loopback ports: one pinned to the vision checkpoint (`serve MODEL`), one loading whatever a
request names (`serve`), here the audio checkpoint. Both start at once; the fixture stops them.
"""

import base64
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
import wave

import numpy as np
import pytest
import torch

from tinyllava_hf import TinyLlavaForConditionalGeneration
from tinyllava_hf.cli import main
from tinyllava_hf.loading import load_model_and_processor
from tinyllava_hf.testing_utils import random_audio, random_image, scramble, tiny_config, tiny_processor

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'tinyllava-hf[serve]'")
openai = pytest.importorskip("openai", reason="needs the serve extra: pip install 'tinyllava-hf[serve]'")

pytestmark = pytest.mark.subprocess

MAX_TOKENS = 8
START_TIMEOUT_S = 90  # two cold Python start-ups (torch, transformers, fastapi) on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _data_url(kind: str, data: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def _png() -> bytes:
    buffer = io.BytesIO()
    random_image(0).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(16000)
        clip.writeframes((np.clip(random_audio(1), -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


class Server:
    """`tinyllava-hf serve ARGS` in a child process on a free loopback port, its output in a log file."""

    def __init__(self, args: list[str], log_path):
        self.port = _free_port()
        self.log_path = log_path
        # A file, not a pipe (nobody reads while the server runs); open as long as the server, closed by stop().
        self.log = open(log_path, "w")  # noqa: SIM115
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        command = [sys.executable, "-m", "tinyllava_hf", "serve", *args, "--host", "127.0.0.1"]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), "--device", "cpu"], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with code {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        pytest.fail(f"the server did not answer /health within {START_TIMEOUT_S} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.log.close()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A resampler vision checkpoint and a qformer audio one (both beyond llava), scrambled for varied answers."""
    root = tmp_path_factory.mktemp("serve")
    for name, config in (
        ("vision", tiny_config(connector="resampler")),
        ("audio", tiny_config(connector="qformer", audio=True)),
    ):
        processor = tiny_processor(config)  # first: it sets the config's placeholder token ids
        scramble(TinyLlavaForConditionalGeneration(config)).save_pretrained(root / name)
        processor.save_pretrained(root / name)
    return root


@pytest.fixture(scope="module")
def servers(checkpoints, tmp_path_factory):
    logs = tmp_path_factory.mktemp("serve_logs")
    started = []
    try:
        # A named template that renders differently from the default (the upstream "pretrain" format: the media alone)
        # shows that --chat-template reaches the server.
        started.append(Server([str(checkpoints / "vision"), "--chat-template", "pretrain"], logs / "pinned.log"))
        started.append(Server([], logs / "on_demand.log"))
        deadline = time.monotonic() + START_TIMEOUT_S
        for server in started:
            server.wait_ready(deadline)
        yield {"pinned": started[0], "on_demand": started[1]}
    finally:
        for server in started:
            server.stop()


def reference(folder, content, **template) -> str:
    """Greedy `generate` on the conversation the request carries (same media bytes, same template, same budget)."""
    model, processor = load_model_and_processor(folder, device="cpu")
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": content}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        **template,
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def ask(server, model: str, content: list[dict], stream: bool = False) -> str:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=60, max_retries=0)
    request = dict(model=model, messages=[{"role": "user", "content": content}], max_tokens=MAX_TOKENS, temperature=0)
    if not stream:
        return client.chat.completions.create(**request).choices[0].message.content
    chunks = client.chat.completions.create(**request, stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_image_request_answers_as_generate(servers, checkpoints):
    folder = str(checkpoints / "vision")
    url = _data_url("image/png", _png())
    question = [{"type": "image", "url": url}, {"type": "text", "text": "What shape is it?"}]
    expected = reference(folder, question, chat_template="pretrain")  # the pinned server's --chat-template
    assert expected != reference(folder, question)  # ... which changes the answer
    assert expected.strip()  # a scrambled model says something, so the comparison means something
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What shape is it?"}]
    assert ask(servers["pinned"], folder, content) == expected
    assert ask(servers["pinned"], folder, content, stream=True) == expected


def test_audio_request_answers_as_generate(servers, checkpoints):
    pytest.importorskip("soundfile", reason="the server decodes audio with soundfile (or torchcodec)")
    folder = str(checkpoints / "audio")
    wav = _wav()
    expected = reference(
        folder,
        [{"type": "audio", "url": _data_url("audio/wav", wav)}, {"type": "text", "text": "What is said?"}],
    )
    assert expected.strip()
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}
    assert ask(servers["on_demand"], folder, [audio, {"type": "text", "text": "What is said?"}]) == expected


def test_pinned_server_refuses_another_model(servers, checkpoints):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(servers["pinned"], str(checkpoints / "audio"), [{"type": "text", "text": "hi"}])
    assert "Server is pinned to" in refused.value.response.json()["detail"]


def test_missing_model_is_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err == f"error: model folder {tmp_path / 'nope'} does not exist\n"


def test_busy_port_is_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 1
    assert (
        capsys.readouterr().err
        == f"error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port\n"
    )
