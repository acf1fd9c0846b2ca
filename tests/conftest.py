"""Test setup: never reach a hub; fixtures for what many test modules build from.

Tiny random models, processors and inputs come from the package (`tinyllava_hf.testing_utils`, built on the one
tiny-parts builder `tinyllava_hf.train.tiny_parts`), so test modules import them like any other code.
"""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def parts(tmp_path_factory):
    """The debug recipes' tiny parts (`tinyllava-hf tiny-parts`): `llm`, `siglip`, `whisper` folders and the shapes
    data (`data` folder, `pretrain` / `finetune` / `audio` files). Built once per session: read them, never write."""
    from tinyllava_hf.train.tiny_parts import save_tiny_parts

    return save_tiny_parts(tmp_path_factory.mktemp("tiny_parts"))
