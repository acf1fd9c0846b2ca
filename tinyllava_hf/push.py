"""`tinyllava-hf push`: upload a saved checkpoint, or a LoRA adapter, to the Hugging Face Hub as one commit that
loads anywhere.

    tinyllava-hf push DIR REPO_ID [--private] [--revision BRANCH] [--commit-message M] [--dry-run]
    tinyllava-hf push ADAPTER_DIR REPO_ID --base-model BASE_REPO_ID [...]

What is uploaded is decided by an allow-list (:func:`checkpoint_files`), never by "everything in the folder": a
training output folder also holds optimizer states, `checkpoint-*/` subfolders, `training_args.bin` and logs that
nobody loading the model needs (and pickles that nobody should have to trust). The list is what
`from_pretrained(REPO_ID, trust_remote_code=True)` reads for the model and `AutoProcessor` for the processor:

* `config.json` (with its `auto_map`), `generation_config.json`;
* the safetensors weights: `model.safetensors`, or `model.safetensors.index.json` and exactly the shards it names;
* the remote code: every module that an `auto_map` names, plus the modules those import relatively
  (`from .constants import ...`), followed the way transformers follows them;
* the processor (`processor_config.json` / `preprocessor_config.json`), the tokenizer files, the default chat
  template (`chat_template.jinja`) and the named ones (`additional_chat_templates/*.jinja`);
* the model card `README.md`: the folder's own with its quick start pointed at REPO_ID, else one rendered from
  `model_card_template.md`.

A folder that would not load from the Hub is refused before anything touches the network, naming what is missing.

A LoRA/QLoRA output of `tinyllava-hf train` (`adapter_config.json`, no model weights) is pushed as a PEFT adapter
repository (:func:`adapter_files`): `adapter_config.json` with `base_model_name_or_path` set to the base model's Hub
id (a local path there would resolve for nobody else), `adapter_model.safetensors` (the LoRA matrices and, through
PEFT's `modules_to_save`, the connector and tower layers the run trained fully: `PeftModel.from_pretrained` restores
both), and a card with `library_name: peft` and `base_model`; the processor is the base repository's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .cli import command_parser, reports_user_errors

MODEL_TYPE = "tinyllava"  # TinyLlavaConfig.model_type, spelt here so that checking a folder imports no torch
CARD = "README.md"
SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# Every file a tokenizer may be saved as; tokenizer_config.json plus one vocabulary file make a loadable one.
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
TOKENIZER_VOCABULARIES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
CHAT_TEMPLATES_DIR = "additional_chat_templates"
# Weights that only a pickle loader reads: never uploaded, and a folder holding nothing else is refused.
PICKLE_WEIGHTS = re.compile(r"^(pytorch_model.*\.bin|.*\.bin\.index\.json|model.*\.(pt|pth|ckpt))$")
# Weight files that a new push replaces. Stale ones left in the repository by an earlier push would be loaded instead
# of the new ones (a single `model.safetensors` wins over a newer index and its shards) or would travel beside them.
_WEIGHTS_IN_REPO = re.compile(
    r"^(model.*\.safetensors|model\.safetensors\.index\.json|pytorch_model.*\.bin(\.index\.json)?)$"
)
# transformers' own rule for the modules a remote-code file imports (`dynamic_module_utils.get_relative_imports`).
_RELATIVE_IMPORT = re.compile(r"^\s*(?:import\s+\.(\S+)\s*$|from\s+\.(\S+)\s+import)", flags=re.MULTILINE)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_ADAPTER_WEIGHTS = "adapter_model.bin"
UNCARDED_ORIGIN = (
    "How this checkpoint was trained is not recorded: its folder had no model card when it was pushed with "
    "`tinyllava-hf push`."
)


class CheckpointError(ValueError):
    """A folder that is not a checkpoint `from_pretrained` could load from the Hub; the message names what is
    missing and how to fix it."""


@dataclass(frozen=True)
class PushPlan:
    """What one push uploads: the checkpoint's files (relative POSIX paths, `README.md` among them) and the card text
    uploaded as `README.md` (the folder's own file is never rewritten). For an adapter, `adapter_config` is the
    `adapter_config.json` uploaded in place of the folder's (naming the base model by its Hub id)."""

    model_dir: Path
    repo_id: str
    files: tuple[str, ...]
    card: str
    base_model: str | None = None
    adapter_config: str | None = None

    def contents(self, path: str) -> bytes | None:
        """The bytes uploaded for `path` when they are not the folder's file, else None."""
        if path == CARD:
            return self.card.encode("utf-8")
        if path == ADAPTER_CONFIG and self.adapter_config is not None:
            return self.adapter_config.encode("utf-8")
        return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read as JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _auto_map_modules(auto_map: dict) -> set[str]:
    """The local module names an `auto_map` refers to (`"modeling_x.Class"` -> `modeling_x`).

    Values may be lists (tokenizers: `[slow, fast]`, either may be None) and may point into another repository
    (`"org/repo--module.Class"`): that code is not this folder's to upload.
    """
    modules = set()
    for value in auto_map.values():
        for reference in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(reference, str) and "--" not in reference and "." in reference:
                modules.add(reference.rsplit(".", 1)[0])
    return modules


def remote_code_files(model_dir: str | os.PathLike) -> list[str]:
    """The `.py` files the folder's `auto_map`s (config, processor, tokenizer) name, with their relative imports.

    Raises:
        CheckpointError: naming every module that is referenced but not in the folder.
    """
    model_dir = Path(model_dir)
    pending = set()
    for name in ("config.json", *PROCESSOR_FILES, "tokenizer_config.json"):
        if (model_dir / name).is_file():
            pending |= _auto_map_modules(_read_json(model_dir / name).get("auto_map") or {})
    found, missing = set(), set()
    while pending:
        module = pending.pop()
        path = model_dir / f"{module}.py"
        if not path.is_file():
            missing.add(path.name)
            continue
        found.add(path.name)
        for plain, from_ in _RELATIVE_IMPORT.findall(path.read_text(encoding="utf-8")):
            imported = (plain or from_).split(".")[0]
            if f"{imported}.py" not in found | missing:
                pending.add(imported)
    if missing:
        raise CheckpointError(
            f"{model_dir} is missing remote-code file(s) {', '.join(sorted(missing))} that its auto_map (or their "
            "imports) name; re-save the model and processor with save_pretrained (it copies them)"
        )
    return sorted(found)


def _weights_files(model_dir: Path) -> list[str]:
    # transformers' own order: a single safetensors file first, then a sharded index.
    if (model_dir / SAFE_WEIGHTS).is_file():
        return [SAFE_WEIGHTS]
    if (model_dir / SAFE_WEIGHTS_INDEX).is_file():
        shards = sorted(set((_read_json(model_dir / SAFE_WEIGHTS_INDEX).get("weight_map") or {}).values()))
        if not shards:
            raise CheckpointError(f"{model_dir / SAFE_WEIGHTS_INDEX} names no weight shards")
        missing = [shard for shard in shards if not (model_dir / shard).is_file()]
        if missing:
            raise CheckpointError(f"{model_dir} is missing weight shard(s) {', '.join(missing)} that its index names")
        return [SAFE_WEIGHTS_INDEX, *shards]
    pickles = sorted(path.name for path in model_dir.iterdir() if PICKLE_WEIGHTS.match(path.name))
    if pickles:
        raise CheckpointError(
            f"{model_dir} holds only pickled weights ({', '.join(pickles)}), which are not uploaded: re-save with "
            "model.save_pretrained(DIR, safe_serialization=True) to write model.safetensors"
        )
    raise CheckpointError(f"{model_dir} has no weights: no {SAFE_WEIGHTS} or {SAFE_WEIGHTS_INDEX}")


def _has_chat_template(model_dir: Path, files: list[str]) -> bool:
    if any(name in files for name in CHAT_TEMPLATE_FILES):
        return True
    # Older saves keep the template inside the processor or tokenizer config.
    configs = [name for name in (*PROCESSOR_FILES, "tokenizer_config.json") if name in files]
    return any(_read_json(model_dir / name).get("chat_template") for name in configs)


def checkpoint_files(model_dir: str | os.PathLike) -> list[str]:
    """The files of `model_dir` that a push uploads, as sorted relative POSIX paths (`README.md` always among them:
    the folder's own card, or the one a push renders).

    This is the one allow-list: the push, its dry run and the tests that lay a pushed repository into a Hub cache
    all use it. Anything else in the folder (optimizer and scheduler states, `training_args.bin`,
    `trainer_state.json`, `checkpoint-*/`, logs, stray `.py` files) stays local.

    Raises:
        CheckpointError: if the folder would not load from the Hub with `trust_remote_code=True`.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir} is not a folder (give the folder save_pretrained wrote)")
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir} is not a model checkpoint: it has no config.json")
    config = _read_json(model_dir / "config.json")
    if config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(
            f"{model_dir} holds a {config.get('model_type')!r} model, not a TinyLLaVA one (config.json model_type "
            f"must be {MODEL_TYPE!r})"
        )
    if not config.get("auto_map"):
        raise CheckpointError(
            f"{model_dir / 'config.json'} has no auto_map, so trust_remote_code=True could not load it from the Hub; "
            "re-save it with this package's TinyLlavaForConditionalGeneration.save_pretrained"
        )
    files = ["config.json", *_weights_files(model_dir)]
    present = {path.name for path in model_dir.iterdir() if path.is_file()}
    processor = [name for name in PROCESSOR_FILES if name in present]
    if not processor:
        raise CheckpointError(
            f"{model_dir} has no processor ({' or '.join(PROCESSOR_FILES)}): save it beside the model with "
            "processor.save_pretrained(DIR)"
        )
    tokenizer = [name for name in TOKENIZER_FILES if name in present]
    if "tokenizer_config.json" not in tokenizer or not set(tokenizer) & set(TOKENIZER_VOCABULARIES):
        raise CheckpointError(
            f"{model_dir} has no complete tokenizer (tokenizer_config.json and tokenizer.json or a vocabulary file): "
            "save it beside the model with processor.save_pretrained(DIR)"
        )
    files += processor + tokenizer
    files += [name for name in ("generation_config.json", *CHAT_TEMPLATE_FILES, CARD) if name in present]
    files += sorted(f"{CHAT_TEMPLATES_DIR}/{path.name}" for path in (model_dir / CHAT_TEMPLATES_DIR).glob("*.jinja"))
    if not _has_chat_template(model_dir, files):
        raise CheckpointError(
            f"{model_dir} has no default chat template (chat_template.jinja), so apply_chat_template and the card's "
            "quick start would fail: choose one with `tinyllava-hf set-template DIR NAME` or processor.chat_template"
        )
    files += remote_code_files(model_dir)
    return sorted({*files, CARD})


def is_adapter_dir(model_dir: str | os.PathLike) -> bool:
    """A LoRA/QLoRA output (PEFT's `adapter_config.json`, no model weights of its own)."""
    model_dir = Path(model_dir)
    return (model_dir / ADAPTER_CONFIG).is_file() and not any(
        (model_dir / name).is_file() for name in (SAFE_WEIGHTS, SAFE_WEIGHTS_INDEX)
    )


def hub_base_model(model_dir: str | os.PathLike, base_model: str | None) -> str:
    """The Hub id an adapter repository names as its base: `base_model`, else the one `adapter_config.json` records.

    Uses `tinyllava_hf.loading.resolve_model_source`'s rule (what exists on disk, or can only be a path, is local):
    a local base resolves for nobody who downloads the adapter, so it is refused with the way to push it.

    Raises:
        CheckpointError: no base model, or a local one.
    """
    from .loading import ModelLoadError, resolve_model_source

    recorded = _read_json(Path(model_dir) / ADAPTER_CONFIG).get("base_model_name_or_path")
    name = base_model or recorded
    how = (
        "push the base checkpoint first (`tinyllava-hf push BASE_DIR ORG/BASE`; a `tinyllava-hf train` LoRA run "
        "saved it as OUTPUT_DIR/base_model) and pass --base-model ORG/BASE"
    )
    if not name:
        raise CheckpointError(
            f"{model_dir} is a LoRA adapter folder whose adapter_config.json names no base model: {how}, or merge it "
            "into a full checkpoint with `tinyllava-hf merge-lora`"
        )
    try:
        name, is_local = resolve_model_source(name)
    except ModelLoadError:
        is_local = True  # a path that does not exist here is still a path
    if is_local:
        given = "--base-model" if base_model else f"{ADAPTER_CONFIG}'s base_model_name_or_path"
        raise CheckpointError(
            f"{model_dir} is a LoRA adapter folder and its base model ({given} {name}) is a local path, which nobody "
            f"else can resolve: {how}, or merge it into a full checkpoint with `tinyllava-hf merge-lora`"
        )
    return name


def adapter_files(model_dir: str | os.PathLike) -> list[str]:
    """The files of the LoRA adapter folder `model_dir` that a push uploads, as sorted relative POSIX paths:
    `adapter_config.json`, `adapter_model.safetensors` and the card.

    The processor stays with the base repository: transformers' `AutoTokenizer` reads a `config.json`, which an
    adapter repository has none of, so a processor uploaded here would not load by the adapter's id. Checkpoints,
    optimizer states and the saved `base_model/` stay local too.

    Raises:
        CheckpointError: an adapter whose weights are missing or only pickled, or not a LoRA adapter.
    """
    model_dir = Path(model_dir)
    config = _read_json(model_dir / ADAPTER_CONFIG)
    if config.get("peft_type") not in (None, "LORA"):
        raise CheckpointError(f"{model_dir} holds a {config.get('peft_type')} adapter; only LoRA adapters are pushed")
    if not (model_dir / ADAPTER_WEIGHTS).is_file():
        pickled = (model_dir / PICKLE_ADAPTER_WEIGHTS).is_file()
        raise CheckpointError(
            f"{model_dir} has no {ADAPTER_WEIGHTS}"
            + (f" (only the pickle {PICKLE_ADAPTER_WEIGHTS}, which is not uploaded)" if pickled else "")
            + ": save the adapter with model.save_pretrained(DIR, safe_serialization=True)"
        )
    return sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS, CARD])


def render_adapter_card(model_dir: str | os.PathLike, repo_id: str, base_model: str) -> str:
    """The `README.md` of an adapter repository: PEFT metadata, what the adapter trains, and a quick start that loads
    the base by its id and the adapter with PEFT's own API."""
    from huggingface_hub import ModelCard, ModelCardData

    config = _read_json(Path(model_dir) / ADAPTER_CONFIG)
    saved = config.get("modules_to_save") or []
    data = ModelCardData(
        library_name="peft",
        base_model=base_model,
        pipeline_tag="image-text-to-text",
        tags=["tinyllava", "tinyllava-hf", "lora", "peft", "image-text-to-text"],
    )
    trained = ", ".join(f"`{name}`" for name in saved) if saved else "nothing else"
    body = f"""
# {repo_id.split("/")[-1]}

A LoRA adapter for the TinyLLaVA model [`{base_model}`](https://huggingface.co/{base_model}), trained with
`tinyllava-hf train` (`tune_llm: lora` / `qlora`) and pushed with `tinyllava-hf push --base-model`.

- LoRA on the language model: rank {config.get("r")}, alpha {config.get("lora_alpha")}, target modules
  `{config.get("target_modules")}`.
- Trained fully and stored with the adapter (PEFT `modules_to_save`): {trained}.

`PeftModel.from_pretrained` restores both; `merge_and_unload()` folds them into the base model (what
`tinyllava-hf merge-lora` saves).

## Quick start

```python
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{base_model}", trust_remote_code=True)
model = PeftModel.from_pretrained(model, "{repo_id}")
processor = AutoProcessor.from_pretrained("{base_model}", trust_remote_code=True)

messages = [{{"role": "user", "content": [{{"type": "image", "image": "image.png"}},
                                         {{"type": "text", "text": "What is in the image?"}}]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
print(processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Evaluation

No evaluation results are recorded for this adapter.
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")).rstrip("\n") + "\n"


def adapter_config_for_hub(model_dir: str | os.PathLike, base_model: str) -> str:
    """The folder's `adapter_config.json` naming `base_model` (a Hub id) as the adapter's base."""
    config = _read_json(Path(model_dir) / ADAPTER_CONFIG)
    config["base_model_name_or_path"] = base_model
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def render_card(model_dir: str | os.PathLike, repo_id: str) -> str:
    """The `README.md` a push uploads: the folder's own card with its quick start loading `repo_id`, or, when the
    folder has none, the project's card rendered from `model_card_template.md` (which claims no evaluation)."""
    from .hub import checkpoint_card_info, render_model_card, retarget_quick_start

    model_dir = Path(model_dir)
    if (model_dir / CARD).is_file():
        card = retarget_quick_start((model_dir / CARD).read_text(encoding="utf-8"), repo_id)
    else:
        card = str(render_model_card(model_dir, checkpoint_card_info(model_dir, UNCARDED_ORIGIN, repo_id=repo_id)))
    return card if card.endswith("\n") else card + "\n"


def plan_push(model_dir: str | os.PathLike, repo_id: str, base_model: str | None = None) -> PushPlan:
    """Check `model_dir` and `repo_id` and decide what a push uploads; touches no network.

    A LoRA adapter folder plans an adapter repository naming `base_model` (default: the base its
    `adapter_config.json` records), which must be a Hub id.

    Raises:
        CheckpointError: for a folder that would not load from the Hub, an invalid repository id, an adapter without
            a Hub base model, or `base_model` given for a full checkpoint.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise CheckpointError(f"{repo_id!r} is not a valid Hub repository id (ORG/NAME): {err}") from None
    if is_adapter_dir(model_dir):
        base = hub_base_model(model_dir, base_model)
        files = adapter_files(model_dir)
        card = render_adapter_card(model_dir, repo_id, base)
        return PushPlan(Path(model_dir), repo_id, tuple(files), card, base, adapter_config_for_hub(model_dir, base))
    if base_model is not None:
        raise CheckpointError(
            f"--base-model is for LoRA adapter folders (with {ADAPTER_CONFIG}); {model_dir} is not one: a full "
            "checkpoint is pushed without it"
        )
    files = checkpoint_files(model_dir)
    return PushPlan(Path(model_dir), repo_id, tuple(files), render_card(model_dir, repo_id))


def push_checkpoint(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | bool | None = None,
    api=None,
    base_model: str | None = None,
):
    """Upload the checkpoint (or LoRA adapter, naming the Hub id `base_model`) in `model_dir` to `repo_id` as one
    commit (see the module docstring for what goes).

    The repository is created when missing (`private` applies only then), and so is the branch `revision` (from the
    default branch). Weight files left in the repository by an earlier push that this one does not upload are deleted
    in the same commit, so the repository never mixes two saves. Returns huggingface_hub's `CommitInfo`.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    plan = plan_push(model_dir, repo_id, base_model=base_model)
    api = api if api is not None else HfApi(library_name="tinyllava-hf")
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, token=token).repo_id
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
    try:
        existing = api.list_repo_files(repo_id, revision=revision, token=token)
    except RevisionNotFoundError:
        existing = []  # an empty repository: nothing to replace
    operations = [
        CommitOperationAdd(
            path_in_repo=path,
            path_or_fileobj=plan.contents(path) if plan.contents(path) is not None else str(plan.model_dir / path),
        )
        for path in plan.files
    ]
    operations += [
        CommitOperationDelete(path_in_repo=path)
        for path in existing
        if _WEIGHTS_IN_REPO.match(path) and path not in plan.files
    ]
    return api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message
        or f"Upload TinyLLaVA {'LoRA adapter' if plan.base_model else 'checkpoint'} {plan.model_dir.name} with "
        "tinyllava-hf push",
        revision=revision,
        token=token,
    )


@reports_user_errors(OSError, prefix="pushing to {repo_id} failed")  # network and Hub errors (HTTP errors included)
@reports_user_errors(CheckpointError)
def run_push(args: argparse.Namespace) -> int:
    """The `push` command: check the folder, then print the plan (`--dry-run`) or upload it."""
    if args.dry_run:
        plan = plan_push(args.model_dir, args.repo_id, base_model=args.base_model)
        print("\n".join(plan.files))
        print()
        print(plan.card, end="")
        return 0
    commit = push_checkpoint(
        args.model_dir,
        args.repo_id,
        private=args.private or None,
        revision=args.revision,
        commit_message=args.commit_message,
        base_model=args.base_model,
    )
    print(f"pushed {args.model_dir} to {commit.commit_url}")
    return 0


def make_push_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The `push` parser: added to `subparsers` (`tinyllava-hf push`) when given, else stand-alone."""
    parser = command_parser(
        subparsers,
        "push",
        help="upload a checkpoint folder to the Hugging Face Hub (weights, remote code, processor, card)",
        description=(
            "Upload a saved checkpoint to the Hub as one commit: safetensors weights, the remote-code files, "
            "processor, tokenizer, chat templates and the model card (rendered when the folder has none). Training "
            "leftovers (optimizer states, checkpoint-*/, training_args.bin) are never uploaded. A LoRA adapter folder "
            "goes as a PEFT adapter repository naming --base-model. Log in first with `hf auth login` or set "
            "HF_TOKEN."
        ),
    )
    parser.add_argument("model_dir", metavar="DIR", help="checkpoint folder (written by save_pretrained / train)")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repository, ORG/NAME (created when missing)")
    parser.add_argument("--private", action="store_true", help="create the repository private (if it is new)")
    parser.add_argument(
        "--revision", default=None, metavar="BRANCH", help="branch to commit to (created when missing; default: main)"
    )
    parser.add_argument("--commit-message", default=None, metavar="M", help="the commit's message")
    parser.add_argument(
        "--base-model",
        default=None,
        metavar="BASE_REPO_ID",
        help="for a LoRA adapter folder: the Hub id of its base model, written into adapter_config.json (default: "
        "the recorded one, if it is a Hub id; push a local base first)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="touch no network: print the files it would upload, one per line, then the card",
    )
    parser.set_defaults(func=run_push)
    return parser
