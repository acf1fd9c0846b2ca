"""Text to speech with the `espeak-ng` binary, for audio tests and the spoken easy-VQA demo.

    waveform, sampling_rate = synthesize("What shape is in the image?", voice="en-us", speed=160)

espeak-ng is a formant synthesiser: robotic, but fast (hundreds of short questions a second on one core), offline,
deterministic, and with a dozen English voices, enough to train on some voices and test on another. It writes 22.05 kHz
WAVs; Whisper wants 16 kHz, so the output is resampled here (soundfile + soxr, the `audio` extra).
"""

from __future__ import annotations

import os
import shutil
import subprocess

SAMPLING_RATE = 16_000  # Whisper's
ESPEAK = "espeak-ng"
INSTALL_HINT = "install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS)"


class EspeakNotFoundError(RuntimeError):
    """The `espeak-ng` binary is not on PATH."""


def espeak_binary() -> str:
    """Path of `espeak-ng`, or `EspeakNotFoundError` saying how to install it."""
    binary = shutil.which(ESPEAK)
    if binary is None:
        raise EspeakNotFoundError(
            f"Speech synthesis needs the `{ESPEAK}` program, which is not on PATH: {INSTALL_HINT}."
        )
    return binary


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def english_voices() -> list[str]:
    """espeak-ng's English voices that work without MBROLA (`espeak-ng --voices=en`): `en-gb`, `en-us`, ...

    Append a variant for more speakers: `en-us+f3` (female), `en-gb+m2`, `en-gb-scotland+klatt`.
    """
    listing = subprocess.run(
        [espeak_binary(), "--voices=en"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # Columns: Pty Language Age/Gender VoiceName File Other-languages. Voices whose file is under `mb/` need the
    # separate MBROLA synthesiser (not installed with espeak-ng), and `variant` rows are modifiers (`+f3`), not voices.
    voices = []
    for line in listing[1:]:
        fields = line.split()
        if len(fields) < 5 or not fields[1].startswith("en") or fields[4].startswith("mb/"):
            continue
        if fields[1] not in voices:
            voices.append(fields[1])
    return voices


def resample(waveform, source_rate: int, sampling_rate: int = SAMPLING_RATE):
    """`waveform` (1-D) resampled to `sampling_rate` with soxr (librosa's own backend, called directly: librosa's
    wrapper costs ~0.2 s of CPU a call, soxr ~0.3 ms for a short question)."""
    import numpy as np

    if source_rate != sampling_rate:
        import soxr

        waveform = soxr.resample(waveform, source_rate, sampling_rate)
    return np.ascontiguousarray(waveform, dtype=np.float32)


def load_wav(path_or_file, sampling_rate: int = SAMPLING_RATE):
    """A WAV file (path or file object) as a mono float32 waveform at `sampling_rate`."""
    import soundfile

    waveform, source_rate = soundfile.read(path_or_file, dtype="float32", always_2d=True)
    return resample(waveform.mean(axis=1), source_rate, sampling_rate)


def synthesize(
    text: str,
    voice: str = "en-us",
    speed: int = 160,
    path: str | os.PathLike | None = None,
    pitch: int | None = None,
):
    """Speak `text` with espeak-ng and return `(waveform, 16000)`: a float32 1-D array at 16 kHz.

    Args:
        text: what to say.
        voice: an espeak-ng voice (`english_voices()` lists the English ones), optionally with a variant (`en-us+f3`).
        speed: words per minute (espeak-ng's default is 175).
        path: also write the 16 kHz waveform there as a WAV file (else nothing stays on disk).
        pitch: 0-99 (espeak-ng's default 50), another way to vary the speaker.
    """
    import io

    import soundfile

    command = [espeak_binary(), "-v", voice, "-s", str(int(speed)), "--stdout"]
    if pitch is not None:
        command += ["-p", str(int(pitch))]
    # "--" so that a text starting with "-" is spoken, not parsed as an option.
    result = subprocess.run([*command, "--", text], capture_output=True)
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
        raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {message}")
    waveform = load_wav(io.BytesIO(result.stdout))
    if path is not None:
        soundfile.write(str(path), waveform, SAMPLING_RATE, subtype="PCM_16")
    return waveform, SAMPLING_RATE


__all__ = ["EspeakNotFoundError", "english_voices", "espeak_available", "load_wav", "resample", "synthesize"]
