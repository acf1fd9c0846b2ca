"""lmms-eval adapter: run any lmms-eval task on a tinyllava-hf checkpoint.

lmms-eval (0.7.3) finds external models through the Python entry-point group ``lmms_eval.models``: each entry point
gives a ``ModelManifest`` (or a callable returning them) naming a class path; the class must subclass
``lmms_eval.api.model.lmms`` and implement ``generate_until`` / ``loglikelihood`` / ``generate_until_multi_round``.
With this package's entry point installed::

    [project.entry-points."lmms_eval.models"]
    tinyllava_hf = "tinyllava_hf.eval.lmms_eval_plugin:model_manifests"

the model is available as ``lmms-eval --model tinyllava_hf --model_args pretrained=DIR ...``. The name is
``tinyllava_hf`` because lmms-eval already ships a ``tinyllava`` model (which needs the original TinyLLaVA_Factory
code); entry points override built-ins, so reusing that name would silently replace it.

lmms-eval is imported lazily: this module imports without it, and only ``TinyLlavaLMM`` (built on first access) and
:func:`model_manifests` need it. See ``docs/lmms_eval.md``.
"""

from __future__ import annotations

import json
import os
from typing import Any

MODEL_NAME = "tinyllava_hf"
DEFAULT_MAX_NEW_TOKENS = 1024  # what lmms-eval's own LLaVA / TinyLLaVA adapters use when a task sets none

_INSTALL_HINT = (
    "the lmms-eval adapter needs lmms-eval (pip install lmms-eval==0.7.3; it pins its own torch/torchvision, so "
    "prefer a separate environment)"
)


def model_manifests() -> list[Any]:
    """Entry-point payload for ``lmms_eval.models``: one manifest registering :class:`TinyLlavaLMM`."""
    try:
        from lmms_eval.models.registry_v2 import ModelManifest
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return [ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.TinyLlavaLMM")]


def _cut_at_stop_strings(text: str, until: list[str]) -> str:
    """lmms-eval's ``until``: the text before the first stop string (empty strings are ignored)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def _gen_settings(gen_kwargs: dict[str, Any], default_max_new_tokens: int) -> tuple[int, dict[str, Any], list[str]]:
    """Map lmms-eval ``gen_kwargs`` to ``(max_new_tokens, generate kwargs, stop strings)``; temperature 0 is greedy."""
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, list):
        raise ValueError(f"gen_kwargs['until'] must be a string or a list, got {type(until).__name__}")
    max_new_tokens = int(gen_kwargs.get("max_new_tokens") or default_max_new_tokens)
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    do_sample = bool(gen_kwargs.get("do_sample", False)) or temperature > 0
    settings: dict[str, Any] = {"do_sample": do_sample, "num_beams": int(gen_kwargs.get("num_beams") or 1)}
    if do_sample:
        settings["temperature"] = temperature or 1.0
        if gen_kwargs.get("top_p") is not None:
            settings["top_p"] = float(gen_kwargs["top_p"])
    return max_new_tokens, settings, until


def _build_class() -> type:
    try:
        from lmms_eval.api.model import lmms
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err

    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from ..constants import IMAGE_TOKEN
    from ..loading import load_model_and_processor
    from .runner import generate_batch, resolve_chat_template

    class TinyLlavaLMM(lmms):
        """lmms-eval model backed by a saved tinyllava-hf checkpoint (``AutoModelForImageTextToText``).

        Args (``--model_args key=value,...``):
            pretrained: model folder or Hub id.
            device: default ``cuda:<LOCAL_RANK>`` when CUDA is available, else ``cpu``.
            dtype: ``auto`` (the checkpoint's), ``float32``, ``bfloat16`` or ``float16``.
            batch_size: requests per ``generate`` call (left-padded batches).
            chat_template: processor chat template name (default: the processor's default).
            max_new_tokens: budget when a task sets none.
        """

        is_simple = True

        def __init__(
            self,
            pretrained: str,
            device: str | None = None,
            dtype: str = "auto",
            batch_size: int | str = 1,
            chat_template: str | None = None,
            max_new_tokens: int | str = DEFAULT_MAX_NEW_TOKENS,
            max_batch_size: int | None = None,  # passed by lmms-eval's evaluator; no automatic batch sizing here
            **kwargs: Any,
        ) -> None:
            super().__init__()
            if kwargs:
                raise TypeError(f"unknown tinyllava_hf model_args: {', '.join(sorted(kwargs))}")
            if str(batch_size).startswith("auto"):
                raise ValueError("tinyllava_hf needs an integer batch_size (no 'auto')")
            if device is None:
                local_rank = int(os.environ.get("LOCAL_RANK", 0))
                device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
            self.model, self.processor = load_model_and_processor(pretrained, device, dtype)
            self.batch_size_per_gpu = int(batch_size)
            # Resolved once to its text: an unknown name is an error listing the checkpoint's names, never rendered.
            self.chat_template = (
                None if chat_template is None else resolve_chat_template(self.processor, chat_template)
            )
            self.default_max_new_tokens = int(max_new_tokens)
            self._device = torch.device(device)

        @property
        def batch_size(self) -> int:
            return self.batch_size_per_gpu

        @property
        def device(self) -> Any:
            return self._device

        @property
        def tokenizer(self) -> Any:
            return self.processor.tokenizer

        def _conversation(self, context: str, visuals: list[Any] | None) -> list[dict[str, Any]]:
            # Media first, then the text without literal <image> markers: the processor adds one placeholder run
            # per image block, and upstream TinyLLaVA puts "<image>\n" before the question.
            content: list[dict[str, Any]] = []
            for visual in visuals or []:
                if isinstance(visual, Image.Image):
                    content.append({"type": "image", "image": visual.convert("RGB")})
                elif isinstance(visual, dict) and "array" in visual:
                    self._check_sampling_rate(visual)
                    content.append({"type": "audio", "audio": visual["array"]})
                elif visual is not None:
                    raise NotImplementedError(f"tinyllava_hf takes images and audio, not {type(visual).__name__}")
            content.append({"type": "text", "text": context.replace(IMAGE_TOKEN, "").strip()})
            return [{"role": "user", "content": content}]

        def _check_sampling_rate(self, audio: dict[str, Any]) -> None:
            extractor = getattr(self.processor, "feature_extractor", None)
            if extractor is None:
                raise ValueError("this tinyllava_hf checkpoint has no audio tower; the task gives audio")
            rate = audio.get("sampling_rate", extractor.sampling_rate)
            if rate != extractor.sampling_rate:
                raise ValueError(
                    f"audio at {rate} Hz; the model's feature extractor expects {extractor.sampling_rate}"
                )

        def _visuals(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> list[Any]:
            if doc_to_visual is None:
                return []
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            return list(visuals) if isinstance(visuals, list | tuple) else [visuals]

        def generate_until(self, requests: list[Any]) -> list[str]:
            """Answer each request; requests with identical ``gen_kwargs`` share left-padded batches."""
            results: list[str | None] = [None] * len(requests)
            groups: dict[str, list[int]] = {}
            for index, request in enumerate(requests):
                key = json.dumps(request.args[1], sort_keys=True, default=str)
                groups.setdefault(key, []).append(index)
            bar = tqdm(total=len(requests), disable=self.rank != 0, desc="Model Responding")
            for indices in groups.values():
                max_new_tokens, settings, until = _gen_settings(
                    dict(requests[indices[0]].args[1]), self.default_max_new_tokens
                )
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    conversations = []
                    for index in chunk:
                        context, _, doc_to_visual, doc_id, task, split = requests[index].args
                        conversations.append(
                            self._conversation(context, self._visuals(doc_to_visual, doc_id, task, split))
                        )
                    texts = generate_batch(
                        self.model,
                        self.processor,
                        conversations,
                        max_new_tokens,
                        chat_template=self.chat_template,
                        **settings,
                    )
                    for index, text in zip(chunk, texts):
                        results[index] = _cut_at_stop_strings(text, until)
                        self.cache_hook.add_partial("generate_until", requests[index].args[:2], results[index])
                    bar.update(len(chunk))
            bar.close()
            return [text or "" for text in results]

        @torch.inference_mode()
        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            """Log-probability of each continuation after the templated prompt, and whether it is the greedy one."""
            results = []
            for request in tqdm(requests, disable=self.rank != 0, desc="Model Responding"):
                context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
                doc = self.task_dict[task][split][doc_id]
                continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
                conversation = self._conversation(context, self._visuals(doc_to_visual, doc_id, task, split))
                inputs = self.processor.apply_chat_template(
                    conversation,
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=True,
                    return_tensors="pt",
                    **({} if self.chat_template is None else {"chat_template": self.chat_template}),
                )
                target = self.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
                prompt_length = inputs["input_ids"].shape[1]
                inputs["input_ids"] = torch.cat([inputs["input_ids"], target], dim=1)
                inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
                inputs = inputs.to(self.model.device, self.model.dtype)
                logits = self.model(**inputs).logits[0, prompt_length - 1 : -1].float()
                target = target[0].to(logits.device)
                log_probs = torch.log_softmax(logits, dim=-1).gather(1, target[:, None]).sum()
                results.append((float(log_probs), bool((logits.argmax(dim=-1) == target).all())))
            return results

        def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
            raise NotImplementedError("tinyllava_hf does not implement multi-round generation")

    # Named as if defined at module level, so reprs and pickling by reference point at this module.
    TinyLlavaLMM.__qualname__ = "TinyLlavaLMM"
    TinyLlavaLMM.__module__ = __name__
    return TinyLlavaLMM


_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    # lmms-eval resolves "tinyllava_hf.eval.lmms_eval_plugin.TinyLlavaLMM" with getattr(module, ...): the class, and
    # the lmms-eval import its base class needs, are created only then.
    global _CLASS
    if name == "TinyLlavaLMM":
        if _CLASS is None:
            _CLASS = _build_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
