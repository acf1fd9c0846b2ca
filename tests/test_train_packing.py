"""Padding-free packing (`TinyLlavaCollator(packing=True)`, `padding_free: true`): one row per batch, or rows filled up
to a token budget (`packing_token_budget`), position ids restarting per sample, no attention across samples; packed and
padded batches give the same loss and gradients (fp32, tight tolerances) with SDPA, eager and `varlen_sdpa` (attention
per packed sample) in the language model, directly and through TRL's trainer."""

import math

import pytest
import torch

from tinyllava_hf.constants import IGNORE_INDEX
from tinyllava_hf.train.arguments import DataArguments, ModelArguments
from tinyllava_hf.train.build import build_from_parts
from tinyllava_hf.train.collator import TinyLlavaCollator
from tinyllava_hf.train.data import load_dataset_files
from tinyllava_hf.train.packing import pack_samples, plan_rows, segment_lengths
from tinyllava_hf.train.trainer import run_training
from tinyllava_hf.train.varlen_attention import VARLEN_SDPA, use_varlen_attention, varlen_sdpa_attention_forward

ATTENTION = ("sdpa", "eager")


@pytest.fixture(scope="module")
def rows(parts):
    dataset, _ = load_dataset_files([parts["finetune"], parts["audio"]], image_folder=parts["data"])
    by_id = {row["id"]: row for row in dataset}
    # Different lengths and every modality, including two images in a row, so the scatter order matters.
    return [by_id[i] for i in ("finetune-0000", "text-0000", "audio-0000", "finetune-0001", "finetune-0002")]


@pytest.fixture(scope="module", params=ATTENTION)
def built(parts, request):
    args = ModelArguments(
        llm=str(parts["llm"]),
        vision_tower=str(parts["siglip"]),
        audio_tower=str(parts["whisper"]),
        audio_downsample_factor=5,
        template="llama",
        attn_implementation=request.param,
    )
    model, processor = build_from_parts(args)
    assert model.config.text_config._attn_implementation == request.param
    return model, processor


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    model.zero_grad()
    return loss.detach(), grads


def test_packed_batch_layout(built, rows):
    _, processor = built
    padded = TinyLlavaCollator(processor)(rows)
    packed = TinyLlavaCollator(processor, packing=True)(rows)
    lengths = padded["attention_mask"].sum(1).tolist()
    assert "attention_mask" not in packed and packed["use_cache"] is False
    assert packed["input_ids"].shape == (1, sum(lengths))
    assert segment_lengths(packed["position_ids"]) == lengths
    assert packed["cu_seq_lens_q"].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert packed["max_length_q"] == packed["max_length_k"] == max(lengths)
    start = 0
    for row, length in enumerate(lengths):
        segment = slice(start, start + length)
        assert packed["position_ids"][0, segment].tolist() == list(range(length))
        assert torch.equal(packed["input_ids"][0, segment], padded["input_ids"][row, :length])
        # The first token is never predicted from the previous sample; every other label is the padded one.
        assert packed["labels"][0, start] == IGNORE_INDEX
        assert torch.equal(packed["labels"][0, start + 1 : start + length], padded["labels"][row, 1:length])
        start += length
    # One media entry per medium, in sample order, exactly as when padding.
    for key in ("pixel_values", "input_features"):
        assert torch.equal(packed[key], padded[key])


def test_pad_to_multiple_of_adds_a_separate_untrained_tail(built, rows):
    _, processor = built
    packed = TinyLlavaCollator(processor, packing=True, pad_to_multiple_of=64)(rows[:2])
    plain = TinyLlavaCollator(processor, packing=True)(rows[:2])
    total = plain["input_ids"].shape[1]
    assert packed["input_ids"].shape[1] % 64 == 0 and packed["input_ids"].shape[1] > total
    tail = slice(total, None)
    assert (packed["labels"][0, tail] == IGNORE_INDEX).all()
    assert packed["position_ids"][0, tail].tolist() == list(range(packed["input_ids"].shape[1] - total))
    assert segment_lengths(packed["position_ids"])[:-1] == segment_lengths(plain["position_ids"])


def test_packed_and_padded_losses_and_gradients_agree(built, rows):
    model, processor = built
    padded = TinyLlavaCollator(processor)(rows)
    packed = TinyLlavaCollator(processor, packing=True)(rows)
    loss, grads = loss_and_grads(model, padded)
    packed_loss, packed_grads = loss_and_grads(model, packed)
    torch.testing.assert_close(packed_loss, loss, atol=1e-6, rtol=1e-6)
    assert packed_grads.keys() == grads.keys()
    assert any(name.startswith("model.vision_tower.") for name in grads)  # the towers are in the comparison
    assert any(name.startswith("model.audio_tower.") for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_attention_never_crosses_samples(built, rows):
    model, processor = built
    packed = TinyLlavaCollator(processor, packing=True)(rows)
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]
        start = 0
        for row in rows:
            alone = TinyLlavaCollator(processor)([row])
            length = alone["input_ids"].shape[1]
            expected = model(**{k: v for k, v in alone.items() if k != "labels"}).logits[0]
            torch.testing.assert_close(logits[start : start + length], expected, atol=1e-5, rtol=1e-5)
            start += length

        # Why the collator sends use_cache=False: with a cache (what an LM config's `use_cache: true` asks for),
        # transformers does not look for packed sequences, and the samples attend to each other.
        cached = {k: v for k, v in packed.items() if k not in ("labels", "use_cache")}
        leaked = model(**cached, use_cache=True).logits[0]
    assert not torch.allclose(leaked, logits, atol=1e-4)


def test_dummy_media_in_a_packed_batch_changes_neither_loss_nor_gradients(built, rows):
    model, processor = built
    text_only = [rows[1], rows[1]]
    plain = TinyLlavaCollator(processor, packing=True)(text_only)
    dummy = TinyLlavaCollator(processor, packing=True, dummy_media=True)(text_only)
    # The blank image and clip ride after the first sample as a sample of their own.
    first, blank, second = segment_lengths(dummy["position_ids"])
    assert [first, second] == segment_lengths(plain["position_ids"])
    # An image's placeholders, and the blank clip's (a whole window, or fewer with a trimming processor).
    blank_clip = processor.num_audio_tokens
    if getattr(processor, "trim_audio_padding", False):
        blank_clip = processor.audio_token_count(int(dummy["feature_attention_mask"].sum()))
    assert blank == model.config.num_image_tokens + blank_clip
    assert dummy["pixel_values"].shape[0] == 1 and dummy["input_features"].shape[0] == 1
    loss, grads = loss_and_grads(model, plain)
    dummy_loss, dummy_grads = loss_and_grads(model, dummy)
    torch.testing.assert_close(dummy_loss, loss, atol=1e-6, rtol=1e-6)
    assert any(name.startswith("model.vision_tower.") for name in dummy_grads)
    for name, grad in dummy_grads.items():
        torch.testing.assert_close(grad, grads.get(name, torch.zeros_like(grad)), atol=1e-6, rtol=1e-5, msg=name)


def test_pack_samples_handles_a_single_token_sample():
    packed = pack_samples(
        [
            {"input_ids": torch.tensor([5]), "labels": torch.tensor([5])},
            {"input_ids": torch.tensor([6, 7]), "labels": torch.tensor([6, 7])},
        ],
        pad_token_id=0,
    )
    assert packed["position_ids"].tolist() == [[0, 0, 1]]
    assert packed["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7]]
    assert segment_lengths(packed["position_ids"]) == [1, 2]


def test_plan_rows_fills_rows_up_to_the_budget():
    lengths = [5, 3, 8, 2, 4, 12]
    assert plan_rows(lengths) == [[0, 1, 2, 3, 4, 5]]  # no budget: one row
    rows = plan_rows(lengths, 10)
    # First-fit decreasing: 12 alone (over budget, never split), 8+2, 5+4, 3; batch order kept inside a row.
    assert rows == [[0, 4], [1], [2, 3], [5]]
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows if len(row) > 1)
    assert plan_rows([], 10) == []
    with pytest.raises(ValueError, match=">= 1"):
        plan_rows(lengths, 0)


def test_budgeted_rows_layout(built, rows):
    _, processor = built
    padded = TinyLlavaCollator(processor)(rows)
    lengths = padded["attention_mask"].sum(1).tolist()
    # The smallest budget whose rows reorder the samples (so that the media order is put to the test).
    budget = next(
        b
        for b in range(max(lengths), sum(lengths))
        if (order := [i for row in plan_rows(lengths, b) for i in row]) != sorted(order)
    )
    packed = TinyLlavaCollator(processor, packing=True, max_tokens_per_row=budget, pad_to_multiple_of=8)(rows)
    plan = plan_rows(lengths, budget)
    assert len(plan) > 1 and packed["input_ids"].shape[0] == len(plan)
    width = packed["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(sum(lengths[i] for i in row) for row in plan)
    # Row r holds its samples back to back, then a filler tail (a sample of its own, no labels).
    for r, row in enumerate(plan):
        start = 0
        for i in row:
            segment = slice(start, start + lengths[i])
            assert torch.equal(packed["input_ids"][r, segment], padded["input_ids"][i, : lengths[i]])
            assert packed["position_ids"][r, segment].tolist() == list(range(lengths[i]))
            assert packed["labels"][r, start] == IGNORE_INDEX
            start += lengths[i]
        assert (packed["labels"][r, start:] == IGNORE_INDEX).all()
    # Media follow the packed order, which the rows changed.
    order = [i for row in plan for i in row]
    assert order != sorted(order)
    images = [i for i in order if "pixel_values" in TinyLlavaCollator(processor)([rows[i]])]
    expected = torch.cat([TinyLlavaCollator(processor)([rows[i]])["pixel_values"] for i in images])
    assert torch.equal(packed["pixel_values"], expected)


def test_budgeted_rows_give_padded_losses_gradients_and_logits(built, rows):
    model, processor = built
    padded = TinyLlavaCollator(processor)(rows)
    budget = int(padded["attention_mask"].sum(1).max()) + 1
    packed = TinyLlavaCollator(processor, packing=True, max_tokens_per_row=budget)(rows)
    assert packed["input_ids"].shape[0] > 1
    loss, grads = loss_and_grads(model, padded)
    packed_loss, packed_grads = loss_and_grads(model, packed)
    torch.testing.assert_close(packed_loss, loss, atol=1e-6, rtol=1e-6)
    assert packed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits
        for r, row in enumerate(plan_rows(padded["attention_mask"].sum(1).tolist(), budget)):
            start = 0
            for i in row:
                alone = TinyLlavaCollator(processor)([rows[i]])
                length = alone["input_ids"].shape[1]
                expected = model(**{k: v for k, v in alone.items() if k != "labels"}).logits[0]
                torch.testing.assert_close(logits[r, start : start + length], expected, atol=1e-5, rtol=1e-5)
                start += length


def test_budget_needs_padding_free():
    with pytest.raises(ValueError, match=">= 1"):
        DataArguments(data_path=["x.json"], packing_token_budget=0)


def test_padding_free_training_matches_padded_training(parts, tmp_path):
    """Through TRL's SFTTrainer (its fused LM head): the same losses and the same trained weights."""
    from trl import SFTConfig

    def train(output_dir, budget=None, **overrides):
        config = SFTConfig(
            output_dir=str(output_dir),
            max_steps=3,
            per_device_train_batch_size=4,
            learning_rate=5e-3,
            max_length=256,
            bf16=False,
            use_cpu=True,
            activation_checkpointing=False,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=11,
            dataloader_num_workers=0,
            **overrides,
        )
        args = ModelArguments(llm=str(parts["llm"]), vision_tower=str(parts["siglip"]), template="llama")
        data = DataArguments(
            data_path=[str(parts["finetune"])], image_folder=str(parts["data"]), packing_token_budget=budget
        )
        trainer = run_training(args, data, config)
        return trainer, config

    padded, _ = train(tmp_path / "padded")
    packed, config = train(tmp_path / "packed", padding_free=True)
    assert config.padding_free is False  # taken away from TRL, which refuses it for vision data
    assert packed.data_collator.packing and not padded.data_collator.packing
    # Packing switched the SDPA language model (only it) to per-sample attention; the saved config does not say so.
    assert packed.model.config.text_config._attn_implementation == VARLEN_SDPA
    assert packed.model.config.vision_config._attn_implementation == "sdpa"
    assert padded.model.config.text_config._attn_implementation == "sdpa"
    assert VARLEN_SDPA not in (tmp_path / "packed" / "config.json").read_text()
    losses = [[entry["loss"] for entry in t.state.log_history if "loss" in entry] for t in (padded, packed)]
    assert len(losses[0]) == 3 and all(math.isfinite(loss) for loss in losses[0])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-5)
    trained = dict(padded.model.named_parameters())
    for name, param in packed.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, trained[name], atol=1e-5, rtol=1e-4, msg=name)

    # Rows filled up to a token budget (several rows per batch): the same losses and weights again.
    budgeted, _ = train(tmp_path / "budgeted", padding_free=True, budget=48)
    assert budgeted.data_collator.max_tokens_per_row == 48
    budget_losses = [entry["loss"] for entry in budgeted.state.log_history if "loss" in entry]
    assert budget_losses == pytest.approx(losses[0], rel=1e-5, abs=1e-5)
    for name, param in budgeted.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, trained[name], atol=1e-5, rtol=1e-4, msg=name)


def test_trl_packing_is_rejected_with_a_pointer_to_padding_free(parts, tmp_path):
    from trl import SFTConfig

    config = SFTConfig(output_dir=str(tmp_path), packing=True, bf16=False, use_cpu=True, report_to="none")
    args = ModelArguments(llm=str(parts["llm"]), vision_tower=str(parts["siglip"]), template="llama")
    data = DataArguments(data_path=[str(parts["finetune"])], image_folder=str(parts["data"]))
    with pytest.raises(ValueError, match="use padding_free: true"):
        run_training(args, data, config)


# ------------------------------------------------------------------------------------- varlen_sdpa (per sample)


@pytest.fixture
def sdpa_model(parts):
    """A fresh SDPA model (the tests switch its attention)."""
    args = ModelArguments(
        llm=str(parts["llm"]),
        vision_tower=str(parts["siglip"]),
        audio_tower=str(parts["whisper"]),
        audio_downsample_factor=5,
        template="llama",
        attn_implementation="sdpa",
    )
    return build_from_parts(args)


class SdpaSpy:
    """Records the sequence length, causality and mask of every `scaled_dot_product_attention` call."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = torch.nn.functional.scaled_dot_product_attention

        def spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
            self.calls.append((query.shape[-2], key.shape[-2], is_causal, attn_mask is not None))
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)


@pytest.mark.parametrize("budget", [None, "longest"], ids=["one-row", "budgeted-rows"])
@pytest.mark.parametrize("boundaries", ["cu_seq_lens", "position_ids"])
def test_varlen_attention_gives_padded_losses_and_gradients(sdpa_model, rows, monkeypatch, budget, boundaries):
    model, processor = sdpa_model
    padded = TinyLlavaCollator(processor)(rows)
    lengths = padded["attention_mask"].sum(1).tolist()
    budget = max(lengths) + 1 if budget else None
    packed = TinyLlavaCollator(processor, packing=True, max_tokens_per_row=budget)(rows)
    if boundaries == "position_ids":  # a packed batch without flash-attention's keys (e.g. another collator's)
        packed = {k: v for k, v in packed.items() if not k.startswith(("cu_seq_lens", "max_length"))}
    loss, grads = loss_and_grads(model, padded)

    assert use_varlen_attention(model)
    assert model.config.text_config._attn_implementation == VARLEN_SDPA
    # The towers keep their own attention.
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert model.config.audio_config._attn_implementation == "sdpa"
    spy = SdpaSpy(monkeypatch)
    packed_loss, packed_grads = loss_and_grads(model, packed)

    torch.testing.assert_close(packed_loss, loss, atol=1e-6, rtol=1e-6)
    assert packed_grads.keys() == grads.keys()
    assert any(name.startswith("model.language_model.") for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # The language model attended sample by sample (causal, no mask), never over a row of several samples, so no
    # score across samples was computed. The fillers of budgeted rows are samples of their own.
    causal = [(q, k, masked) for q, k, is_causal, masked in spy.calls if is_causal]
    assert {q for q, _, _ in causal} == set(segment_lengths(packed["position_ids"]))
    assert set(lengths) <= {q for q, _, _ in causal}
    assert all(q == k and not masked for q, k, masked in causal)


def test_varlen_attention_leaves_padded_batches_and_generation_unchanged(sdpa_model, rows):
    model, processor = sdpa_model
    model.eval()
    padded = TinyLlavaCollator(processor)(rows)
    inputs = {k: v for k, v in padded.items() if k != "labels"}
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "What shape is it?"}]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    greedy = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(**inputs).logits
        tokens = model.generate(**prompt, **greedy)
        assert use_varlen_attention(model)
        torch.testing.assert_close(model(**inputs).logits, logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(model.generate(**prompt, **greedy), tokens)


def test_varlen_attention_keeps_an_explicit_eager_choice(parts):
    args = ModelArguments(
        llm=str(parts["llm"]), vision_tower=str(parts["siglip"]), template="llama", attn_implementation="eager"
    )
    model, _ = build_from_parts(args)
    assert not use_varlen_attention(model)  # eager is asked for (attention weights, soft-capping): kept
    assert model.config.text_config._attn_implementation == "eager"


def test_varlen_attention_refuses_what_it_cannot_split():
    module = torch.nn.Module()
    query = key = value = torch.randn(1, 2, 6, 4)
    with pytest.raises(ValueError, match="sliding_window"):
        varlen_sdpa_attention_forward(module, query, key, value, None, sliding_window=4)
