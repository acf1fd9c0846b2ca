"""Run an exported GGUF pair (LM + mmproj) with llama.cpp through `llama-cpp-python`, greedily, token by token.

The tests and `benchmarks/llama_cpp.py` use it to compare llama.cpp with transformers on the same prompt: the text
of our chat template, with the `<image>` placeholder replaced by libmtmd's media marker, goes through libmtmd's own
tokenizer (`mtmd_tokenize`), which splits it into text chunks (llama.cpp's tokenizer) and image chunks (the mmproj
file's tower and projector); the chunks are evaluated as llama-cpp-python's `MTMDChatHandler` does, and greedy
decoding reads the logits of the last position after each step, so the margin between the best two tokens is known
at every step.

    from tinyllava_hf.llama_cpp_runner import LlamaCppVisionModel
    runner = LlamaCppVisionModel("out/model-f32.gguf", "out/mmproj-model-f32.gguf", n_threads=2)
    result = runner.greedy("<|im_start|>user\n<__media__>\nwhat color is it?<|im_end|>\n...", [image], 16)
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp  # noqa: F401  (ImportError here tells callers llama-cpp-python is missing)
import numpy as np

__all__ = ["GreedyResult", "LlamaCppVisionModel", "default_paths", "llama_cpp_tokenize"]


@llama_cpp.llama_log_callback
def _drop_log(level, text, user_data):  # pragma: no cover - called from C
    # libmtmd logs every text and image chunk it evaluates; llama.cpp its loading. Errors still raise in Python.
    return None


def _quiet() -> None:
    from llama_cpp import mtmd_cpp

    llama_cpp.llama_log_set(_drop_log, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(_drop_log, ctypes.c_void_p(0))


@dataclass
class GreedyResult:
    """Greedy tokens (without the end-of-generation token), each step's best-minus-second logit, and timings."""

    tokens: list[int]
    margins: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    time_to_first_token_s: float = 0.0
    decode_s: float = 0.0  # the steps after the first token


def llama_cpp_tokenize(model_path: str | os.PathLike, texts: Sequence[str]) -> list[list[int]]:
    """llama.cpp's tokens for each text (vocabulary only: no weights are read), special tokens parsed, no BOS added."""
    from llama_cpp import Llama

    _quiet()
    llama = Llama(str(model_path), vocab_only=True, verbose=False)
    try:
        return [llama.tokenize(text.encode("utf-8"), add_bos=False, special=True) for text in texts]
    finally:
        llama.close()


class LlamaCppVisionModel:
    """An LM GGUF with (optionally) its mmproj GGUF, loaded once, for greedy decoding of prompts with images."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        mmproj_path: str | os.PathLike | None = None,
        *,
        n_threads: int | None = None,
        n_ctx: int = 2048,
    ):
        from llama_cpp import Llama
        from llama_cpp import mtmd_cpp as mtmd

        _quiet()
        self._mtmd = mtmd
        threads = n_threads or os.cpu_count() or 1
        self.llama = Llama(
            str(model_path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False
        )
        self.n_vocab = self.llama.n_vocab()
        self.ctx = None
        if mmproj_path is not None:
            params = mtmd.mtmd_context_params_default()
            params.use_gpu = False
            params.print_timings = False
            params.n_threads = threads
            self.ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), self.llama.model, params)
            if self.ctx is None:
                raise ValueError(f"libmtmd could not load the mmproj file {mmproj_path}")
        self.marker = mtmd.mtmd_default_marker().decode("utf-8")

    def close(self) -> None:
        if self.ctx is not None:
            self._mtmd.mtmd_free(self.ctx)
            self.ctx = None
        self.llama.close()

    def __enter__(self) -> LlamaCppVisionModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _bitmap(self, image):
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        height, width = rgb.shape[:2]
        data = (ctypes.c_ubyte * rgb.size).from_buffer_copy(rgb.tobytes())
        bitmap = self._mtmd.mtmd_bitmap_init(width, height, data)
        if bitmap is None:
            raise ValueError("libmtmd could not take the image")
        return bitmap

    def _last_logits(self) -> np.ndarray:
        pointer = llama_cpp.llama_get_logits_ith(self.llama._ctx.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _eval_prompt(self, prompt: str, images: Sequence) -> int:
        """Evaluate the prompt (text + images) from an empty cache; returns its length in positions."""
        mtmd = self._mtmd
        self.llama.reset()
        self.llama._ctx.kv_cache_clear()
        if not images:
            tokens = self.llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            self.llama.eval(tokens)
            return len(tokens)
        if self.ctx is None:
            raise ValueError("this runner was loaded without an mmproj file, so it takes no images")
        bitmaps = [self._bitmap(image) for image in images]
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            text = mtmd.mtmd_input_text()
            encoded = prompt.encode("utf-8")
            text.text, text.text_len = encoded, len(encoded)
            # Our chat templates write the BOS themselves; special tokens in the text are parsed as such.
            text.add_special, text.parse_special = False, True
            array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            status = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), array, len(bitmaps))
            if status != 0:
                raise ValueError(f"mtmd_tokenize failed ({status}): the prompt needs one {self.marker} per image")
            count = mtmd.mtmd_input_chunks_size(chunks)
            for index in range(count):
                chunk = mtmd.mtmd_input_chunks_get(chunks, index)
                if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n_tokens = ctypes.c_size_t()
                    pointer = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n_tokens))
                    self.llama.eval([pointer[i] for i in range(n_tokens.value)])
                else:
                    new_past = llama_cpp.llama_pos(0)
                    status = mtmd.mtmd_helper_eval_chunk_single(
                        self.ctx,
                        self.llama._ctx.ctx,
                        chunk,
                        llama_cpp.llama_pos(self.llama.n_tokens),
                        llama_cpp.llama_seq_id(0),
                        self.llama.n_batch,
                        index == count - 1,  # logits only when the prompt ends with the image
                        ctypes.byref(new_past),
                    )
                    if status != 0:
                        raise ValueError(f"libmtmd could not evaluate image chunk {index} ({status})")
                    self.llama.n_tokens = new_past.value
            return self.llama.n_tokens
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)

    def greedy(
        self, prompt: str, images: Sequence = (), max_new_tokens: int = 16, *, stop_at_eog: bool = True
    ) -> GreedyResult:
        """Greedy continuation of `prompt` (one media marker per image), stopping at an end-of-generation token
        (unless `stop_at_eog` is False: benchmarks decode a fixed number of tokens)."""
        vocab = self.llama._model.vocab
        start = time.perf_counter()
        result = GreedyResult(tokens=[], prompt_tokens=self._eval_prompt(prompt, images))
        first_done = None
        for _ in range(max_new_tokens):
            logits = self._last_logits()
            best_two = np.argpartition(-logits, 1)[:2]
            best = int(best_two[0] if logits[best_two[0]] >= logits[best_two[1]] else best_two[1])
            result.margins.append(float(abs(logits[best_two[0]] - logits[best_two[1]])))
            if first_done is None:
                first_done = time.perf_counter()
                result.time_to_first_token_s = first_done - start
            if stop_at_eog and llama_cpp.llama_vocab_is_eog(vocab, best):
                break
            result.tokens.append(best)
            if len(result.tokens) == max_new_tokens:
                break
            self.llama.eval([best])
        result.decode_s = time.perf_counter() - first_done if first_done is not None else 0.0
        return result

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llama.detokenize(list(tokens)).decode("utf-8", errors="replace")


def default_paths(folder: str | os.PathLike, outtype: str) -> tuple[Path, Path]:
    """The `(model, mmproj)` files `tinyllava-hf export-gguf` wrote into `folder` for `outtype`."""
    folder = Path(folder)
    mmprojs = sorted(folder.glob(f"mmproj-*-{outtype}.gguf"))
    if len(mmprojs) != 1:
        raise FileNotFoundError(f"expected one mmproj-*-{outtype}.gguf in {folder}, found {len(mmprojs)}")
    model = folder / mmprojs[0].name.removeprefix("mmproj-")
    if not model.is_file():
        raise FileNotFoundError(f"{model} is missing beside {mmprojs[0]}")
    return model, mmprojs[0]
