"""The easy-VQA demo's parts and data: captions deduced correctly, data files well-formed, parts save and load as
ordinary HF folders, the tokenizer keeps prompts short and answers separate, and a model builds from the parts."""

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer

from tinyllava_hf.chat_templates import DEFAULT_SYSTEM_PROMPT, render_chat_template
from tinyllava_hf.demo.data import (
    COLORS,
    SHAPES,
    caption_for,
    image_attributes,
    image_captions,
    image_labels,
    load_split,
    natural_questions,
    rewrite_question,
    sentence_case,
    write_demo_data,
)
from tinyllava_hf.demo.parts import (
    DEMO_TEMPLATE,
    SPECIAL_TOKENS,
    DemoPartsSpec,
    build_vision_tower,
    pretrain_vision_tower,
    save_parts,
)
from tinyllava_hf.train.arguments import ModelArguments
from tinyllava_hf.train.build import build_from_parts
from tinyllava_hf.train.data import normalize_sample, read_records

# Small models, the real tokenizer settings: the tokenizer properties below depend on its vocabulary size only.
TINY_SPEC = DemoPartsSpec(
    llm_hidden=32,
    llm_intermediate=64,
    llm_heads=2,
    llm_kv_heads=2,
    vision_hidden=32,
    vision_intermediate=64,
    tower_pretrain_epochs=0,  # pretraining has a test of its own; here it would only cost time
)


@pytest.fixture(scope="module")
def train_questions():
    return load_split("train")


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    return save_parts(tmp_path_factory.mktemp("demo_parts"), TINY_SPEC)


# ------------------------------------------------------------------------------------------------------------ captions


def test_captions_of_images_checked_by_hand(train_questions):
    # Looked at train images 0-7 (easy_vqa/data/train/images/<id>.png): these are what they show.
    expected = {
        0: "a blue rectangle",
        1: "a blue triangle",
        2: "a red triangle",
        3: "a brown rectangle",
        4: "a red circle",
        5: "a yellow triangle",
        6: "a red circle",
        7: "a black circle",
    }
    captions = image_captions(train_questions)
    assert len(captions) == 4000
    for image_id, caption in expected.items():
        path, got = captions[image_id]
        assert got == caption
        assert Path(path).name == f"{image_id}.png" and Path(path).is_file()


def test_attributes_from_direct_answers():
    assert image_attributes([("what is the blue shape?", "rectangle")]) == ("blue", "rectangle")
    assert image_attributes([("what color is the triangle?", "red")]) == ("red", "triangle")
    assert image_attributes([("what shape is present?", "circle"), ("what color is the shape?", "teal")]) == (
        "teal",
        "circle",
    )


def test_attributes_from_negated_yes_no_questions():
    # "not" / "no" flip the answer: each of these says the shape is red and a circle.
    pairs = [("is there not a red shape?", "no"), ("is no circle present?", "no")]
    assert image_attributes(pairs) == ("red", "circle")
    pairs = [("does the image not contain a green shape?", "yes"), ("is there a triangle?", "no")]
    assert image_attributes(pairs) == (None, None)


def test_attributes_by_elimination():
    pairs = [(f"is there a {color} shape?", "no") for color in COLORS if color != "gray"]
    pairs += [("is there not a circle?", "yes"), ("does the image contain a triangle?", "no")]
    assert image_attributes(pairs) == ("gray", "rectangle")


def test_contradictions_are_errors():
    with pytest.raises(ValueError, match="Contradictory color"):
        image_attributes([("what color is the shape?", "red"), ("is there a red shape?", "no")])
    with pytest.raises(ValueError, match="Contradictory shape"):
        image_attributes([("what shape is present?", "circle"), ("what shape does the image contain?", "triangle")])


def test_caption_for_partial_knowledge():
    assert caption_for("blue", "circle") == "a blue circle"
    assert caption_for("blue", None) == "a blue shape"
    assert caption_for(None, "circle") == "a circle"
    assert caption_for(None, None) == "a shape"


# ------------------------------------------------------------------------------------------- questions as people type


def _words(text: str) -> list[str]:
    return text.lower().rstrip(" ?.").split()


def test_sentence_case_capitalises_only_the_first_letter():
    assert sentence_case("what color is the shape?") == "What color is the shape?"
    assert sentence_case("is there a red shape in the image?") == "Is there a red shape in the image?"
    assert sentence_case("") == ""


def test_rewritten_questions_keep_the_words_and_vary_the_writing():
    rng = random.Random(0)
    question = "what color is the shape?"
    rewrites = [rewrite_question(question, rng) for _ in range(400)]
    assert all(_words(text) == _words(question) for text in rewrites)
    stripped = [text.strip() for text in rewrites]
    assert "What color is the shape?" in stripped and "WHAT COLOR IS THE SHAPE?" in stripped
    assert {text[-1] for text in stripped} >= {"?", ".", "e"}  # with and without a question mark, or a full stop
    assert any(text.endswith(" ?") for text in stripped)
    assert any("  " in text for text in stripped)
    assert any(text != text.strip() for text in rewrites)


def test_finetune_questions_rewrite_every_second_one_the_same_way_each_time(train_questions):
    natural = natural_questions(train_questions)
    assert len(natural) == len(train_questions)
    assert natural == natural_questions(train_questions)  # seeded: the same text in every demo
    assert natural[0::2] == train_questions[0::2]
    for original, rewritten in zip(train_questions[1::2], natural[1::2], strict=True):
        assert (rewritten.question_id, rewritten.answer, rewritten.image) == (
            original.question_id,
            original.answer,
            original.image,
        )
        assert _words(rewritten.text) == _words(original.text)
    sentence_cased = sum(q.text.strip().startswith(q.text.strip()[0].upper()) for q in natural[1::2])
    assert 0.5 < sentence_cased / len(natural[1::2]) < 0.8  # sentence case (0.6) and upper case (0.1)


# ---------------------------------------------------------------------------------------------------------- data files


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return write_demo_data(tmp_path_factory.mktemp("demo_data"), test_limit=50, seed=0)


def test_demo_data_files_are_well_formed(demo_data):
    files = demo_data

    pretrain = json.loads(files.pretrain.read_text())
    assert len(pretrain) == 4000
    for record in pretrain[:20]:
        assert Path(record["image"]).is_absolute() and Path(record["image"]).is_file()
        human, gpt = record["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt" and gpt["value"].startswith("a ")
    full = [r for r in pretrain if len(r["conversations"][1]["value"].split()) == 3]
    assert len(full) > 3500  # most images get colour and shape

    finetune = json.loads(files.finetune.read_text())
    assert len(finetune) == 38575
    answers = set(COLORS) | set(SHAPES) | {"yes", "no"}
    assert {r["conversations"][1]["value"] for r in finetune} == answers
    first = finetune[0]
    assert first["conversations"][0] == {"from": "human", "value": "<image>\nwhat is the blue shape?"}
    assert first["conversations"][1] == {"from": "gpt", "value": "rectangle"}
    assert Path(first["image"]).name == "0.png"

    questions = [json.loads(line) for line in files.test_questions.read_text().splitlines()]
    annotations = [json.loads(line) for line in files.test_answers.read_text().splitlines()]
    assert files.num_test_questions == len(questions) == len(annotations) == 50
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in annotations]
    assert all((files.test_image_folder / q["image"]).is_file() and q["text"].endswith("?") for q in questions)
    # The seeded sample is the one the explore script scores, and the same seed gives the same questions.
    assert [q["question_id"] for q in questions] == [q.question_id for q in load_split("test", 50, seed=0)]


def test_finetune_data_and_sentence_case_test_file(demo_data, train_questions):
    finetune = json.loads(demo_data.finetune.read_text())
    texts = [record["conversations"][0]["value"].removeprefix("<image>\n") for record in finetune]
    assert texts == [q.text for q in natural_questions(train_questions)]
    assert "What color is the shape?" in texts

    questions = [json.loads(line) for line in demo_data.test_questions.read_text().splitlines()]
    cased = [json.loads(line) for line in demo_data.test_questions_sentence_case.read_text().splitlines()]
    assert demo_data.test_questions_sentence_case.parent == demo_data.test_questions.parent
    assert [{**q, "text": sentence_case(q["text"])} for q in questions] == cased
    assert all(q["text"][0].isupper() and q["text"][1:].islower() and q["text"].endswith("?") for q in cased)


def test_training_data_loads_through_the_train_pipeline(demo_data, tmp_path):
    for path in (demo_data.pretrain, demo_data.finetune):
        records = read_records(path)[:5]
        rows = [normalize_sample(r, i, tmp_path, tmp_path) for i, r in enumerate(records)]
        assert all(len(row["images"]) == 1 and Path(row["images"][0]).is_file() for row in rows)


# --------------------------------------------------------------------------------------------------------------- parts


def test_parts_save_and_load_as_hf_folders(parts):
    tokenizer = AutoTokenizer.from_pretrained(parts["llm"])
    assert len(tokenizer) == TINY_SPEC.vocab_size
    assert tokenizer.convert_ids_to_tokens(tokenizer("<image>", add_special_tokens=False)["input_ids"]) == ["<image>"]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    for token in SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) in tokenizer.all_special_ids

    lm = AutoModelForCausalLM.from_pretrained(parts["llm"])
    assert lm.config.model_type == "llama" and lm.config.vocab_size == len(tokenizer)
    assert lm.generation_config.eos_token_id == tokenizer.eos_token_id

    tower = AutoModel.from_pretrained(parts["vision_tower"])
    assert tower.config.model_type == "siglip_vision_model" and tower.config.image_size == 64
    pixels = AutoImageProcessor.from_pretrained(parts["vision_tower"])(Image.new("RGB", (64, 64)), return_tensors="pt")
    assert pixels["pixel_values"].shape == (1, 3, 64, 64)
    grid = TINY_SPEC.image_size // TINY_SPEC.patch_size
    assert tower(**pixels).last_hidden_state.shape == (1, grid * grid, TINY_SPEC.vision_hidden)


def test_parts_record_the_spec_and_the_tower_pretraining(parts):
    report = json.loads((parts["llm"].parent / "parts.json").read_text())
    assert report["spec"]["vision_hidden"] == TINY_SPEC.vision_hidden
    assert report["vision_tower_pretraining"] == []


def test_vision_tower_caption_pretraining_learns_and_skips_unknown_labels(train_questions):
    labels = list(image_labels(train_questions).values())[:96]
    labels.append((labels[0][0], None, None))  # nothing known: contributes no target, breaks nothing
    tower, image_processor = build_vision_tower(TINY_SPEC)
    threads = torch.get_num_threads()
    before = {name: value.clone() for name, value in tower.state_dict().items()}
    history = pretrain_vision_tower(tower, image_processor, labels, epochs=6, lr=3e-3, batch_size=32, log=None)
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["color_accuracy"] > history[0]["color_accuracy"]
    assert not tower.training
    assert torch.get_num_threads() == threads  # trained on one thread, the caller's setting restored
    changed = [name for name, value in tower.state_dict().items() if not torch.equal(value, before[name])]
    assert "embeddings.patch_embedding.weight" in changed
    assert pretrain_vision_tower(tower, image_processor, labels, epochs=0) == []


def test_tokenizer_keeps_prompts_short_and_answers_separate(parts):
    tokenizer = AutoTokenizer.from_pretrained(parts["llm"])
    question, answer = "is there not a blue shape in the image?", "yes"
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    prompt = render_chat_template(DEMO_TEMPLATE, [user], add_generation_prompt=True)
    full = render_chat_template(
        DEMO_TEMPLATE, [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    )
    prompt_ids, full_ids = tokenizer(prompt)["input_ids"], tokenizer(full)["input_ids"]
    # The answer's tokens follow the generation prompt's tokens unchanged: what generate() continues is what trained.
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert tokenizer.convert_ids_to_tokens(full_ids[len(prompt_ids) :]) == ["Ġyes", "</s>"]
    # The long system sentence is one token, and the whole prompt (one <image>) stays short.
    assert tokenizer.tokenize(DEFAULT_SYSTEM_PROMPT) == [tokenizer.tokenize(DEFAULT_SYSTEM_PROMPT)[0]]
    assert len(prompt_ids) <= 12
    for word in (*COLORS, *SHAPES, "yes", "no"):
        assert len(tokenizer.tokenize(" " + word)) == 1, word
    # Generated answers decode without the space they were trained with ("blue", not " blue"), prompts unchanged.
    answer_ids = full_ids[len(prompt_ids) :]
    assert tokenizer.decode(answer_ids, skip_special_tokens=True) == answer
    assert tokenizer.decode(full_ids, skip_special_tokens=True) == full.replace("</s>", "").replace("<image>", "")


def test_tokenizer_pieces_of_natural_questions_all_occur_in_training(parts, train_questions):
    # The README's "What color is the shape?" used to become "W" + "hat": a token the finetune data never held, so
    # its embedding stayed random. Every way of writing the question must now tokenize into trained pieces only.
    tokenizer = AutoTokenizer.from_pretrained(parts["llm"])

    def prompt_tokens(question: str) -> list[str]:
        user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        return tokenizer.tokenize(render_chat_template(DEMO_TEMPLATE, [user], add_generation_prompt=True))

    trained = set()
    for text in {q.text for q in natural_questions(train_questions)}:
        trained.update(prompt_tokens(text))
    forms = [
        "what color is the shape?",
        "What color is the shape?",
        "What color is the shape",
        "What color is the shape.",
        "WHAT COLOR IS THE SHAPE?",
        "  What  color is the shape? ",
        "Is there a red shape in the image?",
        "Does the image contain a circle",
    ]
    for form in forms:
        assert set(prompt_tokens(form)) <= trained, (form, set(prompt_tokens(form)) - trained)
    assert "ĊW" not in prompt_tokens("What color is the shape?")


def test_model_builds_from_the_parts_like_the_train_cli(parts):
    args = ModelArguments(
        llm=str(parts["llm"]),
        vision_tower=str(parts["vision_tower"]),
        connector="mlp2x_gelu",
        template=DEMO_TEMPLATE,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    model, processor = build_from_parts(args)
    assert model.config.num_image_tokens == 16 == processor.num_image_tokens  # 4x4 patches, none dropped
    processor.tokenizer.padding_side = "left"
    messages = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": Image.new("RGB", (64, 64))}, {"type": "text", "text": q}],
            }
        ]
        for q in ("what color is the shape?", "is there a red shape in the image?")
    ]
    inputs = processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert output.shape == (2, inputs["input_ids"].shape[1] + 2)
