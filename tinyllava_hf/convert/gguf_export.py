"""tinyllava-hf -> GGUF for llama.cpp: the language model and an `mmproj` file (vision tower + projector).

llama.cpp's multimodal library (libmtmd) runs a LLaVA-style model from two files: the LM, which llama.cpp reads as
any text model, and an `mmproj` file that libmtmd's `clip` loader reads. `export_gguf` writes both with the `gguf`
package (llama.cpp's own writer). Every name below is one llama.cpp reads; the files cited are those of the llama.cpp
tree vendored in the `llama-cpp-python==0.3.36` sdist:

- LM tensors and keys: `gguf.constants` (`MODEL_TENSOR`, `Keys`), as `src/llama-arch.cpp` names them
  (`token_embd`, `blk.N.attn_q`, ..., `output_norm`, `output`).
- tokenizer keys: `tokenizer.ggml.model = gpt2` (byte-level BPE) and `tokenizer.ggml.pre`, a pre-tokenizer name
  that `src/llama-vocab.cpp` maps to its splitting regexes (`gpt-2`, `smollm`, ...).
- mmproj keys and tensors: `tools/mtmd/clip-impl.h` (`KEY_*`, `TN_*`): `clip.projector_type = mlp`,
  `clip.vision.feature_layer`, `v.blk.N.ln1`, `mm.0`, `mm.2`, ...; the graph that runs them is
  `tools/mtmd/models/llava.cpp`, its inputs are set in `tools/mtmd/clip.cpp`.

What llama.cpp cannot express, and is therefore refused before anything is written:

- connectors other than `mlp2x_gelu`: the `mlp` projector is `mm.0 -> GELU -> mm.2` (`models/llava.cpp`), so a
  single linear layer or three of them have no place, nor do `qformer`, `resampler` and `mof`;
- towers other than SigLIP. CLIP: the llava graph appends `v.class_embd` after the patches and then keeps rows
  1..n (`patch_offset` in `clip.cpp`), which hands the LM patches 1..n-1 and the class token, not what either of our
  select strategies gives. DINOv2: no llava path;
- SigLIP with `vision_feature_select_strategy="default"`: upstream TinyLLaVA drops the first *patch* (SigLIP has no
  class token); libmtmd keeps every patch of a tower without `v.class_embd`, and adding a fake class token would
  put an extra token into every attention layer of the tower. Only `full` is exported;
- audio towers, a second vision tower, several feature layers;
- LMs other than the Llama architecture (Llama, TinyLlama, SmolLM2); among those, biased attention or MLP
  projections, rope scaling, a head bias (Phi-2) and final-logit soft-capping (Gemma-2);
- tokenizers other than byte-level BPE whose pre-tokenizer is one llama.cpp has (plain GPT-2 splitting, or GPT-2
  splitting after single digits, llama.cpp's `smollm`), and any normalizer. When `llama_cpp` is importable, the
  written LM's vocabulary is also loaded by llama.cpp and must tokenize a set of probe texts exactly as the
  checkpoint's tokenizer does, or the export is refused.

What differs numerically (and is exact otherwise): ggml's GELU is the tanh approximation, computed through an f16
table (`ggml-cpu/vec.h`, `GGML_GELU_FP16`), where our `mlp2x_gelu` uses the exact erf GELU; SigLIP's own activation
is the tanh one. libmtmd resizes and pads images itself (letterbox on LLaVA's grey `122,116,104`, Pillow-style
bicubic), so images of the tower's size go through unchanged and others may differ from our processor's pixels.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..configuration_tinyllava import TinyLlavaConfig
from ..constants import IMAGE_TOKEN
from ..files import atomic_output_dir
from .upstream import TINYLLAVA_HF, ConversionError, check_conversion_paths, read_state_dict

__all__ = [
    "GGUF_OUTTYPES",
    "GGUFFiles",
    "check_gguf_expressible",
    "export_gguf",
    "gguf_file_names",
    "llama_cpp_pre_tokenizer",
    "permute_for_llama_rope",
]

GGUF_OUTTYPES = ("f32", "f16", "q8_0")
# Our LM families that share llama.cpp's `llama` architecture (src/llama-arch.cpp: LLM_ARCH_LLAMA).
LLAMA_CPP_LMS = ("llama",)
# `tools/mtmd/clip-impl.h`: PROJECTOR_TYPE_MLP is "mlp"; KEY_FEATURE_LAYERS is "clip.%s.feature_layer".
MMPROJ_PROJECTOR = "mlp"
KEY_FEATURE_LAYERS = "clip.vision.feature_layer"
# `tools/mtmd/mtmd.cpp`: mtmd_default_marker(), the text a prompt holds where an image goes.
MTMD_MARKER = "<__media__>"
# GPT-2's splitting regex, as tokenizers writes it in a ByteLevel pre-tokenizer (use_regex=True) and as
# src/llama-vocab.cpp lists it for the `gpt-2` and `smollm` pre-tokenizers.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# Texts whose tokenization must agree between the checkpoint's tokenizer and llama.cpp: words, digits, spaces,
# punctuation, case, non-ASCII, and the special tokens the chat templates write.
_PROBE_TEXTS = (
    "What color is the shape?",
    "what shape is in the image",
    "The capital of France is Paris. It has 2,148,000 people (2020).",
    "  two  spaces,\ttab\nnew line\n\n\nthree",
    "UPPER lower MiXeD 12345 3.14159 1e-5 x=y+z",
    "naïve café – “quotes” … 東京 😀",
    "don't it's we're you've I'm they'll she'd",
)


@dataclass(frozen=True)
class GGUFFiles:
    """The two files an export writes."""

    model: Path
    mmproj: Path


def gguf_file_names(name: str, outtype: str) -> tuple[str, str]:
    """`(<name>-<outtype>.gguf, mmproj-<name>-<outtype>.gguf)`, llama.cpp's own naming of a model pair."""
    return f"{name}-{outtype}.gguf", f"mmproj-{name}-{outtype}.gguf"


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ConversionError("GGUF export needs a fast (tokenizers) tokenizer; this checkpoint has a slow one.")
    return json.loads(backend.to_str())


def llama_cpp_pre_tokenizer(tokenizer_json: dict) -> str:
    """The `tokenizer.ggml.pre` name whose splitting (src/llama-vocab.cpp) equals this tokenizer's pre-tokenizer.

    Raises `ConversionError` naming the pre-tokenizer when llama.cpp has none that splits the same way.
    """
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("continuing_subword_prefix"):
        raise ConversionError(
            "Cannot export to GGUF: only byte-level BPE tokenizers (GPT-2 style) are mapped; this one is "
            f"{model.get('type')!r} (byte_fallback={model.get('byte_fallback')})."
        )
    if tokenizer_json.get("normalizer") is not None:
        raise ConversionError(
            "Cannot export to GGUF: the tokenizer has a normalizer "
            f"({tokenizer_json['normalizer'].get('type')}), which llama.cpp's BPE tokenizer does not apply."
        )
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]

    def gpt2_byte_level(step: dict) -> bool:
        return step.get("type") == "ByteLevel" and step.get("use_regex", True) and not step.get("add_prefix_space")

    def gpt2_split_then_byte_level(step: dict) -> bool:
        pattern = (step.get("pattern") or {}).get("Regex")
        return step.get("type") == "Split" and pattern == _GPT2_SPLIT and step.get("behavior") == "Isolated"

    def single_digits(step: dict) -> bool:
        return step.get("type") == "Digits" and step.get("individual_digits")

    shapes = [
        ("gpt-2", [gpt2_byte_level]),
        # SmolLM's own tokenizer.json: digits one by one, then GPT-2 splitting (llama.cpp's `smollm`).
        ("smollm", [single_digits, gpt2_byte_level]),
    ]
    for name, checks in shapes:
        if len(steps) == len(checks) and all(check(step) for check, step in zip(checks, steps)):
            return name
    described = json.dumps(pre)[:300]
    raise ConversionError(
        "Cannot export to GGUF: llama.cpp has no pre-tokenizer that splits text like this tokenizer's "
        f"pre_tokenizer {described}; its prompts would be tokenized differently."
    )


def check_gguf_expressible(config: TinyLlavaConfig) -> None:
    """Raise `ConversionError` listing every reason `config` has no exact llama.cpp (LM + mmproj) equivalent."""
    reasons = []
    if config.connector_type != "mlp2x_gelu":
        reasons.append(
            f"connector_type={config.connector_type!r}: llama.cpp's `mlp` projector is Linear -> GELU -> Linear "
            "(tools/mtmd/models/llava.cpp); only mlp2x_gelu has that shape"
        )
    tower = config.vision_config.model_type
    if tower == "clip_vision_model":
        reasons.append(
            "a CLIP tower: llama.cpp's llava graph (tools/mtmd/models/llava.cpp, clip.cpp) appends the class "
            "embedding after the patches and keeps rows 1..n, so the LM would get patches 1..n-1 and the class token"
        )
    elif tower != "siglip_vision_model":
        reasons.append(f"vision tower {tower!r}: libmtmd's llava path runs SigLIP (and CLIP) towers only")
    elif config.vision_feature_select_strategy != "full":
        reasons.append(
            "vision_feature_select_strategy='default' with SigLIP drops the first patch (as upstream TinyLLaVA "
            "does); libmtmd feeds every patch of a tower without a class token and has no way to drop one. "
            "Models trained with 'full' are exported"
        )
    if not isinstance(config.vision_feature_layer, int):
        reasons.append(f"vision_feature_layer={config.vision_feature_layer!r}: one feature layer is exported")
    if config.vision_aux_config is not None:
        reasons.append("a second vision tower (vision_aux_config) has no place in an mmproj file")
    if config.audio_config is not None:
        reasons.append("an audio tower (audio_config): this exporter writes the vision mmproj only")
    text = config.text_config
    if text.model_type == "phi":
        reasons.append("the phi LM head has a bias, which llama.cpp's llama graph has no tensor for")
    elif text.model_type not in LLAMA_CPP_LMS:
        reasons.append(
            f"LM {text.model_type!r}: this exporter maps Llama-architecture LMs only ({', '.join(LLAMA_CPP_LMS)})"
        )
    if getattr(text, "final_logit_softcapping", None) is not None:
        reasons.append("the LM soft-caps its final logits, which llama.cpp's llama graph does not do")
    if getattr(text, "attention_bias", False) or getattr(text, "mlp_bias", False):
        reasons.append("the LM's attention or MLP projections have biases, which this exporter does not map")
    rope = getattr(text, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        reasons.append(f"rope_type={rope.get('rope_type')!r}: only unscaled RoPE is exported")
    if reasons:
        raise ConversionError("Cannot export to GGUF: " + "; ".join(reasons) + ".")


def permute_for_llama_rope(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the output rows of a q/k projection from transformers' RoPE layout to llama.cpp's.

    transformers rotates the two halves of each head (`rotate_half`); llama.cpp's `llama` architecture uses
    LLAMA_ROPE_TYPE_NORM, which rotates adjacent pairs. Row `j` of the first half and row `j` of the second half of a
    head become rows `2j` and `2j + 1`.
    """
    rows = weight.shape[0]
    head_dim = rows // n_head
    return weight.reshape(n_head, 2, head_dim // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


class _TensorWriter:
    """Adds tensors to a GGUFWriter in the requested precision, keeping what must stay float32 in float32."""

    def __init__(self, writer, outtype: str):
        self.writer = writer
        self.outtype = outtype

    def add(self, name: str, tensor, *, quantizable: bool = True) -> None:
        import gguf

        array = tensor.detach().to("cpu").float().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        array = np.ascontiguousarray(array, dtype=np.float32)
        # Norms, biases and other vectors stay float32, as llama.cpp's converter keeps them.
        if self.outtype == "f32" or array.ndim < 2:
            self.writer.add_tensor(name, array)
            return
        # Q8_0 packs rows in blocks of 32; a row of another length stays float16 (as convert_hf_to_gguf.py does).
        if (
            self.outtype == "q8_0"
            and quantizable
            and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0
        ):
            packed = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            self.writer.add_tensor(name, packed, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            return
        self.writer.add_tensor(name, array.astype(np.float16))


def _file_type(outtype: str):
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]


def _strip_generation_marks(template: str) -> str:
    # `{% generation %}` marks answers for transformers' assistant masks; llama.cpp's template engine has no such tag.
    return re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)


def _vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types (gguf.TokenType) for ids 0..vocab_size-1."""
    import gguf

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = {index: token for index, token in tokenizer.added_tokens_decoder.items()}
    if max(by_id) >= vocab_size:
        beyond = sorted(index for index in by_id if index >= vocab_size)
        raise ConversionError(
            f"Cannot export to GGUF: the tokenizer has ids {beyond[:5]} at or past the LM's vocab_size {vocab_size}; "
            "their embeddings do not exist."
        )
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _write_language_model(path: Path, config, state_dict, tokenizer, chat_template, outtype: str, name: str):
    import gguf

    text = config.text_config
    n_head, n_kv = text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_head
    arch = gguf.MODEL_ARCH.LLAMA
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_file_type(_file_type(outtype))
    writer.add_context_length(text.max_position_embeddings)
    writer.add_embedding_length(text.hidden_size)
    writer.add_block_count(text.num_hidden_layers)
    writer.add_feed_forward_length(text.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(text.rope_parameters.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(text.rms_norm_eps))
    writer.add_vocab_size(text.vocab_size)

    tokenizer_json = _tokenizer_json(tokenizer)
    tokens, types = _vocabulary(tokenizer, text.vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(llama_cpp_pre_tokenizer(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token is not None and token < text.vocab_size:
            add(token)
    # What the checkpoint's tokenizer adds by itself (our chat templates write the BOS in the text instead).
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    writer.add_add_bos_token(len(special) > len(plain) and special[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(special) > len(plain) and special[-1] == tokenizer.eos_token_id)
    if chat_template:
        writer.add_chat_template(_strip_generation_marks(chat_template).replace(IMAGE_TOKEN, MTMD_MARKER))

    tensors = _TensorWriter(writer, outtype)

    def tensor_name(kind, layer=None) -> str:
        template = gguf.TENSOR_NAMES[kind]
        return (template.format(bid=layer) if layer is not None else template) + ".weight"

    lm = "model.language_model."
    tensors.add(tensor_name(gguf.MODEL_TENSOR.TOKEN_EMBD), state_dict[lm + "embed_tokens.weight"])
    for layer in range(text.num_hidden_layers):
        prefix = f"{lm}layers.{layer}."
        q = state_dict[prefix + "self_attn.q_proj.weight"].float().numpy()
        k = state_dict[prefix + "self_attn.k_proj.weight"].float().numpy()
        per_layer = [
            (gguf.MODEL_TENSOR.ATTN_NORM, state_dict[prefix + "input_layernorm.weight"]),
            (gguf.MODEL_TENSOR.ATTN_Q, permute_for_llama_rope(q, n_head)),
            (gguf.MODEL_TENSOR.ATTN_K, permute_for_llama_rope(k, n_kv)),
            (gguf.MODEL_TENSOR.ATTN_V, state_dict[prefix + "self_attn.v_proj.weight"]),
            (gguf.MODEL_TENSOR.ATTN_OUT, state_dict[prefix + "self_attn.o_proj.weight"]),
            (gguf.MODEL_TENSOR.FFN_NORM, state_dict[prefix + "post_attention_layernorm.weight"]),
            (gguf.MODEL_TENSOR.FFN_GATE, state_dict[prefix + "mlp.gate_proj.weight"]),
            (gguf.MODEL_TENSOR.FFN_UP, state_dict[prefix + "mlp.up_proj.weight"]),
            (gguf.MODEL_TENSOR.FFN_DOWN, state_dict[prefix + "mlp.down_proj.weight"]),
        ]
        for kind, tensor in per_layer:
            tensors.add(tensor_name(kind, layer), tensor)
    tensors.add(tensor_name(gguf.MODEL_TENSOR.OUTPUT_NORM), state_dict[lm + "norm.weight"])
    # A tied head is not written: llama.cpp's llama graph falls back to token_embd when `output` is absent.
    if not config.tie_word_embeddings and not text.tie_word_embeddings:
        tensors.add(tensor_name(gguf.MODEL_TENSOR.OUTPUT), state_dict["lm_head.weight"])
    _finish(writer)


def _write_mmproj(path: Path, config, state_dict, image_processor, outtype: str, name: str):
    import gguf

    vision = config.vision_config
    n_layer = vision.num_hidden_layers
    # llama.cpp counts feature layers like transformers' hidden_states: 0 is the embeddings, n_layer the last layer;
    # it wants them non-negative (clip.cpp: "gguf conversions should standardize ... to be non-negative").
    feature_layer = config.vision_feature_layer % (n_layer + 1)
    writer = gguf.GGUFWriter(path, "clip")
    writer.add_name(f"mmproj-{name}")
    writer.add_file_type(_file_type(outtype))
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(MMPROJ_PROJECTOR)
    writer.add_vision_image_size(vision.image_size)
    writer.add_vision_patch_size(vision.patch_size)
    writer.add_vision_embedding_length(vision.hidden_size)
    writer.add_vision_feed_forward_length(vision.intermediate_size)
    writer.add_vision_block_count(n_layer)
    writer.add_vision_head_count(vision.num_attention_heads)
    writer.add_vision_attention_layernorm_eps(float(vision.layer_norm_eps))
    writer.add_vision_projection_dim(config.text_config.hidden_size)
    writer.add_vision_image_mean([float(value) for value in image_processor.image_mean])
    writer.add_vision_image_std([float(value) for value in image_processor.image_std])
    writer.add_array(KEY_FEATURE_LAYERS, [feature_layer])
    # SigLIP's MLP uses the tanh GELU: `clip.use_gelu` selects ggml_gelu (without it, CLIP's quick GELU).
    writer.add_vision_use_gelu(True)

    tensors = _TensorWriter(writer, outtype)
    tower = "model.vision_tower."
    # The patch convolution and position table stay float16/float32: ggml's im2col and get_rows paths for them.
    tensors.add("v.patch_embd.weight", state_dict[tower + "embeddings.patch_embedding.weight"], quantizable=False)
    tensors.add("v.patch_embd.bias", state_dict[tower + "embeddings.patch_embedding.bias"])
    tensors.add(
        "v.position_embd.weight", state_dict[tower + "embeddings.position_embedding.weight"], quantizable=False
    )
    # clip.cpp swaps ffn_up/ffn_down of `mlp` projectors when ffn_down's input width equals the hidden size (a fix
    # for old files with the two names exchanged). When intermediate_size == hidden_size that test cannot tell
    # the two apart, so the names are exchanged here and llama.cpp's swap puts them back.
    swapped = vision.intermediate_size == vision.hidden_size
    up, down = ("ffn_down", "ffn_up") if swapped else ("ffn_up", "ffn_down")
    for layer in range(n_layer):
        source = f"{tower}encoder.layers.{layer}."
        for ours, theirs in (
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.out_proj", "attn_out"),
            ("layer_norm1", "ln1"),
            ("layer_norm2", "ln2"),
            ("mlp.fc1", up),
            ("mlp.fc2", down),
        ):
            for part in ("weight", "bias"):
                tensors.add(f"v.blk.{layer}.{theirs}.{part}", state_dict[f"{source}{ours}.{part}"])
    # SigLIP's post_layernorm is not written: our features are hidden_states[...] before it, and the llava graph
    # applies `v.post_ln` when present.
    for ours, theirs in (("model.connector.layers.0", "mm.0"), ("model.connector.layers.2", "mm.2")):
        for part in ("weight", "bias"):
            tensors.add(f"{theirs}.{part}", state_dict[f"{ours}.{part}"])
    _finish(writer)


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _check_image_processor(config: TinyLlavaConfig, image_processor) -> None:
    size = config.vision_config.image_size
    reasons = []
    expected = {"do_rescale": True, "do_normalize": True}
    for field, value in expected.items():
        if getattr(image_processor, field, value) != value:
            reasons.append(f"{field}={getattr(image_processor, field)!r} (libmtmd always rescales and normalises)")
    factor = getattr(image_processor, "rescale_factor", 1 / 255)
    if abs(factor - 1 / 255) > 1e-9:
        reasons.append(f"rescale_factor={factor} (libmtmd divides by 255)")
    if getattr(image_processor, "do_center_crop", False):
        reasons.append("do_center_crop=True (libmtmd letterboxes to a square, it does not crop)")
    target = getattr(image_processor, "size", None) or {}
    target = dict(target) if not isinstance(target, dict) else target
    if {target.get("height"), target.get("width")} - {None, size}:
        reasons.append(f"image processor size {target} differs from the tower's image_size {size}")
    if reasons:
        raise ConversionError("Cannot export to GGUF: " + "; ".join(reasons) + ".")


def _check_tokenization_with_llama_cpp(model_path: Path, tokenizer) -> None:
    """Load the written vocabulary with llama.cpp and compare its tokens with the checkpoint tokenizer's."""
    try:
        from ..llama_cpp_runner import llama_cpp_tokenize
    except ImportError:  # llama-cpp-python not installed: the static checks above are all there is
        return
    texts = list(_PROBE_TEXTS)
    special = [token for token in tokenizer.all_special_tokens if token != IMAGE_TOKEN]
    texts.append("".join(f"{token}x y\n" for token in special))
    theirs = llama_cpp_tokenize(model_path, texts)
    for text, their_ids in zip(texts, theirs):
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ours != their_ids:
            first = next(
                (i for i, (a, b) in enumerate(zip(ours, their_ids)) if a != b), min(len(ours), len(their_ids))
            )
            raise ConversionError(
                f"Cannot export to GGUF: llama.cpp tokenizes {text!r} differently from the checkpoint's tokenizer "
                f"(first difference at token {first}: ours {ours[first : first + 3]}, llama.cpp "
                f"{their_ids[first : first + 3]})."
            )


def export_gguf(
    src: str | Path, dst: str | Path, *, outtype: str = "f16", name: str | None = None, overwrite: bool = False
) -> GGUFFiles:
    """Write a tinyllava-hf folder as the GGUF pair llama.cpp's multimodal library reads.

    Args:
        src: a tinyllava-hf folder (config, weights, processor).
        dst: the folder to write: `<name>-<outtype>.gguf` (LM, tokenizer, chat template) and
            `mmproj-<name>-<outtype>.gguf` (vision tower, feature layer, image size and normalisation, connector).
        outtype: `f32`, `f16` (vectors stay f32) or `q8_0` (matrices whose rows are a multiple of 32; others f16).
        name: the files' base name (default: `src`'s folder name).
        overwrite: replace an existing non-empty `dst`.

    Returns:
        The paths of the two files.
    """
    if outtype not in GGUF_OUTTYPES:
        raise ConversionError(f"outtype {outtype!r} is not one of {', '.join(GGUF_OUTTYPES)}.")
    src = Path(src)
    check_conversion_paths(src, dst, overwrite, expected=TINYLLAVA_HF)  # before any heavy work
    config = TinyLlavaConfig.from_pretrained(src)
    check_gguf_expressible(config)

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(src)
    tokenizer = processor.tokenizer
    llama_cpp_pre_tokenizer(_tokenizer_json(tokenizer))  # refuses an inexpressible tokenizer before reading weights
    _check_image_processor(config, processor.image_processor)
    chat_template = processor.chat_template
    if isinstance(chat_template, dict):
        chat_template = chat_template.get("default")

    state_dict = read_state_dict(src)
    name = name or src.absolute().name
    model_name, mmproj_name = gguf_file_names(name, outtype)
    dst = Path(dst).absolute()
    with atomic_output_dir(dst, overwrite=overwrite, error=ConversionError) as tmp:
        _write_language_model(tmp / model_name, config, state_dict, tokenizer, chat_template, outtype, name)
        _check_tokenization_with_llama_cpp(tmp / model_name, tokenizer)
        _write_mmproj(tmp / mmproj_name, config, state_dict, processor.image_processor, outtype, name)
    return GGUFFiles(model=dst / model_name, mmproj=dst / mmproj_name)
