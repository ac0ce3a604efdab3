"""Training components, in-process: masks, packing, DeepSpeed config, schedule, LoRA counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from med42ray.train.deepspeed_config import build_deepspeed_config, deep_merge
from med42ray.train.optim import lr_lambda
from med42ray.train.packing import best_fit_bins, build_rows, collate, pack_samples
from med42ray.train.tokenize import IGNORE_INDEX, tokenize_chat

FIXTURE = Path(__file__).parent / "fixtures" / "train" / "chat.jsonl"
CHATS = [
    [
        {"role": "system", "content": "You are a careful clinician."},
        {"role": "user", "content": "What is the antidote for heparin?"},
        {"role": "assistant", "content": "Protamine sulfate."},
        {"role": "user", "content": "And for warfarin?"},
        {"role": "assistant", "content": "Vitamin K and prothrombin complex concentrate."},
    ],
    [
        {"role": "user", "content": "Which nerve is compressed in carpal tunnel syndrome?"},
        {"role": "assistant", "content": "The median nerve."},
    ],
    [
        {"role": "user", "content": "Which organism causes syphilis?"},
        {"role": "assistant", "content": "Treponema pallidum."},
    ],
]


@pytest.fixture(scope="module")
def tokenizer(tiny_config, tiny_model_path):
    from med42ray.models import load_tokenizer

    return load_tokenizer(tiny_config.model, str(tiny_model_path))


@pytest.fixture(scope="module")
def model(tiny_config, tiny_model_path):
    from med42ray.models import load_model

    return load_model(tiny_config.model, str(tiny_model_path)).eval()


# ------------------------------------------------------------------------- masking
def test_labels_cover_exactly_the_assistant_turns(tokenizer):
    sample = tokenize_chat(tokenizer, CHATS[0], max_seq_len=1024)
    ids, labels = sample.input_ids, sample.labels
    assistant_id = tokenizer.convert_tokens_to_ids("<|assistant|>")
    eos = tokenizer.eos_token_id
    expected = [IGNORE_INDEX] * len(ids)
    turns = [m["content"] for m in CHATS[0] if m["role"] == "assistant"]
    starts = [i for i, t in enumerate(ids) if t == assistant_id]
    assert len(starts) == len(turns) == 2
    for start, content in zip(starts, turns, strict=True):
        assert tokenizer.decode([ids[start + 1]]) == ":"  # the prompt's colon is not trained
        end = ids.index(eos, start)  # the turn's </s> is trained: the model learns to stop
        for i in range(start + 2, end + 1):
            expected[i] = ids[i]
        assert tokenizer.decode(ids[start + 2 : end]) == content
        assert tokenizer.decode([ids[end + 1]]) == "\n"  # template newline: masked
    assert labels == expected
    # the system and user turns, the role markers and the newline after </s>: all masked
    assert sum(x != IGNORE_INDEX for x in labels) == sum(
        len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for c in turns
    )


def test_long_chats_are_truncated_and_counted(tokenizer):
    sample = tokenize_chat(tokenizer, CHATS[0], max_seq_len=20)
    assert sample.truncated and len(sample.input_ids) == len(sample.labels) == 20
    _, stats = build_rows([sample], 20, tokenizer.pad_token_id, packing=True)
    assert stats.truncated == 1
    # a truncated chat whose assistant turn was cut off entirely is dropped, not trained on
    short = tokenize_chat(tokenizer, CHATS[1], max_seq_len=5)
    _, stats = build_rows([short], 5, tokenizer.pad_token_id, packing=True)
    assert stats.dropped_no_labels == 1 and stats.rows == 0


def test_chat_without_assistant_turn_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="no assistant tokens"):
        tokenize_chat(tokenizer, [{"role": "user", "content": "hi"}], 64)


# ------------------------------------------------------------------------- packing
def test_best_fit_bins_respect_capacity_and_keep_every_sample():
    lengths = [70, 10, 50, 30, 64, 64, 5, 120, 1, 99]
    bins = best_fit_bins(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert len(bins) == math.ceil(sum(lengths) / 128)  # optimal on this set
    assert best_fit_bins(lengths, 128) == bins  # deterministic


def test_packed_row_boundaries_token_by_token(tokenizer):
    samples = [tokenize_chat(tokenizer, chat, 128) for chat in CHATS[1:]]
    total = sum(len(s) for s in samples)
    (row,) = pack_samples(samples, 128, tokenizer.pad_token_id)
    assert row.num_samples == 2 and row.num_tokens == total
    offset = 0
    for s in samples:
        n = len(s)
        assert row.input_ids[offset : offset + n].tolist() == s.input_ids
        assert row.position_ids[offset : offset + n].tolist() == list(range(n))
        assert row.labels[offset] == IGNORE_INDEX  # never predicted from the previous sample
        assert row.labels[offset + 1 : offset + n].tolist() == s.labels[1:]
        offset += n
    assert (row.input_ids[offset:] == tokenizer.pad_token_id).all()
    assert (row.labels[offset:] == IGNORE_INDEX).all()
    assert row.position_ids[offset:].tolist() == list(range(128 - offset))
    batch = collate([row], tokenizer.pad_token_id)
    assert "attention_mask" not in batch["inputs"]
    # flattened: the padding tail is not computed at all
    assert batch["inputs"]["input_ids"].shape == (1, total)
    assert batch["num_real_tokens"] == batch["num_tokens"] == total


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_forward_equals_each_sample_alone(tokenizer, model, attn):
    """No attention across samples: a packed row's logits and loss are the samples' own."""
    model.config._attn_implementation = attn
    samples = [tokenize_chat(tokenizer, chat, 128) for chat in CHATS]
    rows = pack_samples(samples, 256, tokenizer.pad_token_id)
    assert len(rows) == 1
    packed = collate(rows, tokenizer.pad_token_id)["inputs"]
    with torch.no_grad():
        out = model(**packed, use_cache=False)
        offset, total_loss, total_tokens = 0, 0.0, 0
        for s in samples:
            ids = torch.tensor([s.input_ids])
            alone = model(input_ids=ids, labels=torch.tensor([s.labels]), use_cache=False)
            n = len(s)
            torch.testing.assert_close(
                out.logits[0, offset : offset + n], alone.logits[0], atol=1e-5, rtol=1e-5
            )
            count = sum(x != IGNORE_INDEX for x in s.labels[1:])
            total_loss += alone.loss.item() * count
            total_tokens += count
            offset += n
    assert out.loss.item() == pytest.approx(total_loss / total_tokens, abs=1e-5)
    model.config._attn_implementation = "sdpa"


def packed_rows(tokenizer, width: int = 48):
    """The test chats packed into several rows (the last chat alone is 40 tokens long)."""
    samples = [tokenize_chat(tokenizer, chat, width) for chat in CHATS[1:] * 3]
    return samples, pack_samples(samples, width, tokenizer.pad_token_id)


def test_packed_micro_batch_is_flattened_into_one_row(tokenizer):
    """Several packed rows -> one row of their real tokens: per-sample position ids (which
    transformers' mask builder reads as one sequence per sample) and, for flash kernels,
    `cu_seq_lens` at the sample boundaries."""
    from transformers.masking_utils import find_packed_sequence_indices

    samples, rows = packed_rows(tokenizer)
    assert len(rows) > 1 and any(r.num_tokens < len(r.input_ids) for r in rows)
    batch = collate(rows, tokenizer.pad_token_id)
    inputs = batch["inputs"]
    lengths = [len(samples[i]) for r in rows for i in _row_members(r, samples)]
    assert inputs["input_ids"].shape == (1, sum(lengths)) == (1, batch["num_real_tokens"])
    seq = find_packed_sequence_indices(inputs["position_ids"])[0]
    assert torch.bincount(seq).tolist() == lengths  # one sequence per sample, in order
    assert batch["attention_pairs"] == sum(n * n for n in lengths)
    flash = collate(rows, tokenizer.pad_token_id, "flash_attention_2")["inputs"]
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert flash["cu_seq_lens_q"].tolist() == flash["cu_seq_lens_k"].tolist() == bounds
    assert flash["max_length_q"] == max(lengths)
    assert "cu_seq_lens_q" not in inputs  # sdpa/eager take no varlen arguments


def _row_members(row, samples) -> list[int]:
    """Indices of `samples` in `row`, read back from its position ids (order of the row)."""
    from med42ray.train.packing import sample_lengths

    lengths = sample_lengths(row.position_ids[: row.num_tokens]).tolist()
    out, start = [], 0
    for n in lengths:
        ids = row.input_ids[start : start + n].tolist()
        out.append(next(i for i, s in enumerate(samples) if s.input_ids == ids))
        start += n
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager", "med42ray_varlen_sdpa"])
def test_flattened_batch_gives_each_sample_its_own_token_losses(tokenizer, model, attn):
    """Per-token losses of the flattened micro-batch equal those of each sample alone: under
    transformers' sdpa and eager (block-diagonal mask from the position ids) and under our
    per-sample sdpa (`cu_seq_lens`), the training default with packing."""
    from med42ray.train.attention import register_varlen_sdpa

    register_varlen_sdpa()
    model.config._attn_implementation = attn
    samples, rows = packed_rows(tokenizer)
    inputs = collate(rows, tokenizer.pad_token_id, attn)["inputs"]
    assert ("cu_seq_lens_q" in inputs) == (attn == "med42ray_varlen_sdpa")
    try:
        with torch.no_grad():
            logits = model(**inputs, use_cache=False).logits[0]
            offset = 0
            for r in rows:
                for i in _row_members(r, samples):
                    ids = torch.tensor([samples[i].input_ids])
                    alone = model(input_ids=ids, use_cache=False).logits[0]
                    n = ids.shape[1]
                    torch.testing.assert_close(
                        logits[offset : offset + n], alone, atol=1e-5, rtol=1e-5
                    )
                    offset += n
    finally:
        model.config._attn_implementation = "sdpa"


def test_guard_refuses_packed_rows_a_kernel_could_read_across(tokenizer):
    from med42ray.train.packing import check_isolated

    _, rows = packed_rows(tokenizer)
    stacked = {  # the old layout: [B, L] packed rows, position ids, no mask
        k: torch.from_numpy(np.stack([getattr(r, k) for r in rows[:2]]))
        for k in ("input_ids", "labels", "position_ids")
    }
    for attn in ("flash_attention_2", "sdpa", "eager"):
        with pytest.raises(ValueError, match="attend across samples"):
            check_isolated(stacked, attn)
        check_isolated(collate(rows, tokenizer.pad_token_id, attn)["inputs"], attn)
    unpacked, _ = build_rows([tokenize_chat(tokenizer, c, 64) for c in CHATS], 64, 0, packing=False)
    check_isolated(collate(unpacked, tokenizer.pad_token_id)["inputs"], "flash_attention_2")


def test_output_layer_on_label_positions_only_gives_the_same_loss_and_gradients(tokenizer, model):
    """`trained_positions`: logits only where a next token trains, for a flattened packed
    row and for padded rows of different lengths; loss and every gradient as the HF forward
    over all positions, with a fraction of the logits."""
    import copy

    from med42ray.train.engines import trained_positions

    samples = [tokenize_chat(tokenizer, chat, 128) for chat in CHATS[:3]]
    packed, _ = build_rows(samples, 128, tokenizer.pad_token_id, packing=True)
    unpacked, _ = build_rows(samples, 128, tokenizer.pad_token_id, packing=False)
    for rows in (packed[:2], unpacked):
        inputs = collate(rows, tokenizer.pad_token_id)["inputs"]
        nets = [copy.deepcopy(model).train() for _ in range(2)]
        full = nets[0](**inputs, use_cache=False)
        kept = nets[1](**inputs, **trained_positions(inputs["labels"]), use_cache=False)
        assert kept.logits.shape[1] < 0.8 * full.logits.shape[1]
        torch.testing.assert_close(kept.loss, full.loss, rtol=1e-6, atol=0)
        full.loss.backward()
        kept.loss.backward()
        for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7)


def test_step_loss_is_the_token_mean_over_uneven_micro_batches(tiny_config, tokenizer, model):
    """One optimiser step over micro-batches with very different label-token counts (a short
    answer, then long dialogues) moves the weights exactly as one big batch whose loss is
    the token mean over all of them: the recipe's step through the DDP engine (SGD, lr 1)."""
    import copy

    from med42ray.train.engines import DDPEngine
    from med42ray.train.recipe import FinetuneRecipe

    samples = [tokenize_chat(tokenizer, chat, 128) for chat in (CHATS[2], CHATS[0], CHATS[1])]
    rows = [pack_samples([s], 128, tokenizer.pad_token_id)[0] for s in samples]
    micro = [collate([rows[0]], tokenizer.pad_token_id), collate(rows[1:], tokenizer.pad_token_id)]
    counts = [b["num_label_tokens"] for b in micro]
    assert max(counts) > 2.5 * min(counts)

    net = copy.deepcopy(model).train()
    engine = DDPEngine.__new__(DDPEngine)
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.max_grad_norm = 0.0
    engine.cfg, engine.world, engine.precision, engine.accum, engine.micro = cfg, 1, "fp32", 2, 0
    engine.module = engine.model = net
    engine.device = torch.device("cpu")
    engine.optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    engine.scheduler = torch.optim.lr_scheduler.LambdaLR(engine.optimizer, lambda _: 1.0)
    recipe = FinetuneRecipe.__new__(FinetuneRecipe)
    recipe.engine, recipe.device = engine, engine.device
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    sums = recipe._train_step(micro)

    ref = copy.deepcopy(model).train()
    whole = collate(rows, tokenizer.pad_token_id)["inputs"]
    loss = ref(**whole, use_cache=False).loss  # token mean over the whole step
    loss.backward()
    assert sums["loss"] == pytest.approx(loss.item(), rel=1e-5)
    with torch.no_grad():  # what a mean of micro-batch means would have trained on instead
        naive = sum(ref(**b["inputs"], use_cache=False).loss.item() for b in micro) / 2
    assert abs(naive - loss.item()) > 0.01
    assert sums["num_label_tokens"] == sum(counts)
    for name, param in ref.named_parameters():
        moved = before[name] - dict(net.named_parameters())[name].detach()
        torch.testing.assert_close(moved, param.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_unpacked_batches_pad_per_batch(tokenizer):
    samples = [tokenize_chat(tokenizer, chat, 128) for chat in CHATS]
    rows, stats = build_rows(samples, 128, tokenizer.pad_token_id, packing=False)
    assert stats.rows == 3 and stats.padding_share == 0
    batch = collate(rows[1:], tokenizer.pad_token_id)
    width = max(len(s) for s in samples[1:])
    assert batch["inputs"]["input_ids"].shape == (2, width)
    mask = batch["inputs"]["attention_mask"]
    assert mask.sum().item() == batch["num_real_tokens"] == sum(len(s) for s in samples[1:])


def test_packing_fixture_is_near_optimal(tokenizer):
    from med42ray.train.tokenize import normalize_messages

    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    samples = [
        tokenize_chat(tokenizer, normalize_messages(json.loads(x)["messages"]), 512) for x in lines
    ]
    assert len(lines) >= 40
    for width in (128, 256, 512):
        _, stats = build_rows(samples, width, tokenizer.pad_token_id, packing=True)
        assert stats.samples == len(lines) and stats.truncated == 0
        # at most one row more than the tokens need: the only slack is a last, part-full row
        assert stats.rows <= math.ceil(stats.real_tokens / width) + 1
        if width != 256:  # 256 leaves a mostly empty 13th row on these 3045 tokens
            assert stats.padding_share < 0.05


# -------------------------------------------------------------------- deepspeed config
def test_deepspeed_config_from_train_config(tiny_config):
    train = tiny_config.train.model_copy(
        update={"gradient_accumulation_steps": 4, "max_grad_norm": 0.7}
    )
    ds = build_deepspeed_config(train, world_size=8, precision="bf16")
    assert ds["train_micro_batch_size_per_gpu"] == train.micro_batch_size
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == train.micro_batch_size * 4 * 8
    assert ds["gradient_clipping"] == 0.7
    assert ds["bf16"] == {"enabled": True} and ds["fp16"]["enabled"] is False
    assert ds["zero_optimization"]["stage"] == 2
    assert "offload_optimizer" not in ds["zero_optimization"]
    params = ds["optimizer"]["params"]
    assert ds["optimizer"]["type"] == "AdamW" and params["torch_adam"] is True
    assert params["lr"] == train.optimizer.lr and params["betas"] == list(train.optimizer.betas)
    assert "scheduler" not in ds  # the schedule is the torch LambdaLR, shared with DDP


def test_deepspeed_gpu_settings(tiny_config):
    """On GPU: reduction overlapped with backward, buckets from the hidden size (the HF
    Trainer's `auto`), torch's fused AdamW; none of it on CPU."""
    from med42ray.config import DeepSpeedConfig

    train = tiny_config.train.model_copy(update={"deepspeed": DeepSpeedConfig(zero_stage=3)})
    gpu = build_deepspeed_config(train, 8, "bf16", on_gpu=True, hidden_size=4096)
    zero = gpu["zero_optimization"]
    assert zero["overlap_comm"] is True and zero["reduce_bucket_size"] == 4096**2
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 4096**2)
    assert zero["stage3_param_persistence_threshold"] == 40960
    assert gpu["optimizer"]["params"]["fused"] is True
    cpu = build_deepspeed_config(train, 8, "bf16")
    assert cpu["zero_optimization"]["overlap_comm"] is False
    assert "fused" not in cpu["optimizer"]["params"]


def test_mfu_counts_lora_backward_and_attention_per_sample(tiny_config, model):
    """Full: 6N per token; LoRA: 4N + 2·N_trainable; attention per sample, not per row."""
    from med42ray.train.metrics import ModelFlops, device_peak_flops, mfu

    full = ModelFlops.of(model, trainable_params=sum(p.numel() for p in model.parameters()))
    n, cfg = full.matmul_params, model.config
    assert n == sum(p.numel() for p in model.parameters()) - (
        0 if cfg.tie_word_embeddings else model.get_input_embeddings().weight.numel()
    )
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * (100**2 + 20**2)
    assert full.step_flops(120, 100**2 + 20**2) == pytest.approx(6 * n * 120 + attn, rel=1e-6)
    frozen = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    for weight in frozen:  # as under LoRA: frozen
        weight.requires_grad_(False)
    try:
        lora = ModelFlops.of(model, trainable_params=1000)
    finally:
        for weight in frozen:
            weight.requires_grad_(True)
    assert lora.step_flops(120, 0) == pytest.approx((4 * n + 2 * 1000) * 120)
    # the output layer only on the 30 label positions: its FLOPs on the other 90 are not done
    head = model.get_output_embeddings().weight.numel()
    assert full.step_flops(120, 0, head_tokens=30) == pytest.approx(
        (6 * n - 6 * head * 90 / 120) * 120
    )
    assert lora.step_flops(120, 0, 30) == pytest.approx((4 * n + 2 * 1000) * 120 - 4 * head * 90)
    assert device_peak_flops("NVIDIA H200", "bf16") == 989e12
    assert device_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert mfu(494.5e12, 989e12) == pytest.approx(0.5) and mfu(1.0, None) is None


def test_deepspeed_zero3_offload(tiny_config):
    from med42ray.config import DeepSpeedConfig

    train = tiny_config.train.model_copy(
        update={
            "deepspeed": DeepSpeedConfig(zero_stage=3, offload_optimizer=True, offload_param=True)
        }
    )
    zero = build_deepspeed_config(train, 2, "fp32")["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"]
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    opt = build_deepspeed_config(train, 2, "fp32")["optimizer"]["params"]
    assert opt["torch_adam"] is False  # offloaded optimisers run DeepSpeed's CPUAdam


def test_user_deepspeed_json_overrides_keys(tiny_config, tmp_path):
    from med42ray.config import DeepSpeedConfig

    user = {
        "zero_optimization": {"stage": 3, "overlap_comm": True},
        "gradient_clipping": 0.25,
        "optimizer": {"params": {"lr": 5e-5}},
        "activation_checkpointing": {"partition_activations": True},
    }
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    train = tiny_config.train.model_copy(
        update={"deepspeed": DeepSpeedConfig(zero_stage=2, config_path=str(path))}
    )
    ds = build_deepspeed_config(train, 2, "fp32")
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["overlap_comm"]
    assert ds["zero_optimization"]["contiguous_gradients"] is True  # merged, not replaced
    assert ds["gradient_clipping"] == 0.25
    assert ds["optimizer"]["params"]["lr"] == 5e-5
    assert ds["optimizer"]["params"]["betas"] == list(train.optimizer.betas)
    assert ds["optimizer"]["type"] == "AdamW"
    assert ds["activation_checkpointing"] == {"partition_activations": True}
    path.write_text("{not json")
    with pytest.raises(ValueError, match="invalid DeepSpeed JSON"):
        build_deepspeed_config(train, 2, "fp32")


def test_deep_merge_does_not_mutate_inputs():
    base = {"a": {"b": 1, "c": 2}}
    merged = deep_merge(base, {"a": {"b": 3}, "d": 4})
    assert merged == {"a": {"b": 3, "c": 2}, "d": 4} and base == {"a": {"b": 1, "c": 2}}


# ----------------------------------------------------------------------------- schedule
def test_lr_schedule_warmup_then_decay(tiny_config):
    sched = tiny_config.train.schedule.model_copy(
        update={"name": "cosine", "warmup_ratio": 0.1, "min_lr_ratio": 0.1}
    )
    f = lr_lambda(sched, 100)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(100) == pytest.approx(0.1)
    lin = lr_lambda(sched.model_copy(update={"name": "linear", "warmup_ratio": 0.0}), 10)
    assert [round(lin(s), 3) for s in (0, 5, 10)] == [1.0, 0.55, 0.1]
    const = lr_lambda(sched.model_copy(update={"name": "constant", "warmup_ratio": 0.0}), 10)
    assert {const(s) for s in range(12)} == {1.0}


# ---------------------------------------------------------------------------------- lora
def test_lora_trainable_parameters_match_peft_and_analytics(tiny_config, tiny_model_path):
    from med42ray.models import load_model
    from med42ray.train.strategies import LoraStrategy, count_parameters, lora_parameter_count

    cfg = tiny_config.model_copy(deep=True)
    cfg.train.strategy = "lora"
    strategy = LoraStrategy(cfg, str(tiny_model_path))
    peft_model = strategy.adapt(load_model(cfg.model, str(tiny_model_path)))
    trainable, total = count_parameters(peft_model)
    peft_trainable, peft_total = peft_model.get_nb_trainable_parameters()
    m = peft_model.base_model.model.config
    assert trainable == peft_trainable == lora_parameter_count(m, cfg.train.lora) > 0
    assert total == peft_total
    per_layer = cfg.train.lora.r * (
        4 * 2 * m.hidden_size + 3 * (m.hidden_size + m.intermediate_size)
    )
    assert trainable == per_layer * m.num_hidden_layers  # 2 heads x 64 = hidden: no GQA here
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert all("lora_A" in n or "lora_B" in n for n in names)


def test_chat_files_resolves_folders(tmp_path):
    from med42ray.train.data import chat_files

    (tmp_path / "b.jsonl").write_text("{}\n")
    (tmp_path / "a.jsonl").write_text("{}\n")
    files, fmt = chat_files(tmp_path)
    assert fmt == "json" and [p.rsplit("/", 1)[1] for p in files] == ["a.jsonl", "b.jsonl"]
    (tmp_path / "c.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="one format"):
        chat_files(tmp_path)
    with pytest.raises(FileNotFoundError):
        chat_files(tmp_path / "missing")


def test_deepspeed_skips_its_inference_only_shm_op():
    """The engine keeps DeepSpeed from compiling its CPU shm all-reduce op (inference only)."""
    import importlib

    from med42ray.train.engines import skip_inference_comm_op

    ds_torch = importlib.import_module("deepspeed.comm.torch")
    assert hasattr(ds_torch, "build_shm_op")  # a DeepSpeed without it needs no skipping
    skip_inference_comm_op()
    assert ds_torch.build_shm_op() is None


def test_small_files_are_read_by_the_driver_local_or_in_object_storage(
    ray_session, s3_bucket, tmp_path, monkeypatch
):
    from ray.data.dataset import MaterializedDataset

    from med42ray import storage
    from med42ray.train import data

    line = '{"messages": [{"role": "user", "content": "q"}]}\n'
    chat = tmp_path / "chat.jsonl"
    chat.write_text(line * 10)
    files, _ = data.chat_files(chat)
    assert data.small_files(files)
    small = data.read_chat_dataset(chat)
    assert isinstance(small, MaterializedDataset) and small.count() == 10  # read now
    # a bucket folder of two shards: read by the driver too, in file order, no Ray Data task
    storage.write_text(f"{s3_bucket}/train/part-0.jsonl", line * 3)
    storage.write_text(f"{s3_bucket}/train/part-1.jsonl", line.replace('"q"', '"r"') * 2)
    remote = data.read_chat_dataset(f"{s3_bucket}/train")
    assert isinstance(remote, MaterializedDataset)
    assert [r["messages"][0]["content"] for r in remote.take_all()] == ["q"] * 3 + ["r"] * 2
    monkeypatch.setattr(data, "IN_DRIVER_MAX_BYTES", chat.stat().st_size - 1)
    assert not data.small_files(files)  # too big: streamed by Ray Data tasks
    assert not isinstance(data.read_chat_dataset(chat), MaterializedDataset)
    assert isinstance(data.read_chat_dataset(chat, in_driver=True), MaterializedDataset)


def test_ray_train_runs_are_named_by_what_the_weights_depend_on() -> None:
    """Full and LoRA never share a Ray Train run; changed settings or data train a new run;
    only the run's length (and how often it logs or checkpoints) continues the same one."""
    from med42ray.config import with_overrides
    from med42ray.train.trainer import run_name

    from .conftest import small_config

    cfg = small_config()
    data = {"train/part-00000.parquet": "abc"}
    name = run_name(cfg, data)
    assert name.startswith(f"{cfg.name}-full-")
    assert run_name(cfg, data) == name
    longer = {
        "train.max_steps": 99,
        "train.checkpoint_every": 3,
        "train.max_failures": 2,
        "train.curve.eval_every_checkpoint": 2,  # what is scored along the way
    }
    assert run_name(with_overrides(cfg, longer), data) == name
    for changed in (
        {"train.strategy": "lora"},
        {"train.optimizer.lr": 1e-5},
        {"train.deepspeed.zero_stage": 3},
        {"seed": 7},
        {"resources.num_workers": 4},
    ):
        assert run_name(with_overrides(cfg, changed), data) != name, changed
    assert run_name(cfg, {"train/part-00000.parquet": "abd"}) != name
    fresh = with_overrides(cfg, {"train.resume": False})
    assert run_name(fresh, data).startswith(name + "-")


def test_eval_keys_local_weights_by_content_not_path(tmp_path) -> None:
    from med42ray.models import weights_identity

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"old weights")
    before = weights_identity(str(folder))
    (folder / "model.safetensors").write_bytes(b"new weights")
    assert weights_identity(str(folder)) != before
    assert weights_identity("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf@main"


def test_curve_scores_every_nth_checkpoint_and_the_last() -> None:
    from med42ray.config import with_overrides
    from med42ray.train.curve import curve_due

    from .conftest import small_config

    cfg = small_config(overrides={"train.checkpoint_every": 10})
    assert not any(curve_due(cfg.train, s, final=s == 100) for s in range(10, 101, 10))
    every3 = with_overrides(cfg, {"train.curve.eval_every_checkpoint": 3}).train
    due = [s for s in range(10, 101, 10) if curve_due(every3, s, final=s == 100)]
    assert due == [30, 60, 90, 100]  # checkpoints 3, 6, 9 and the last
    # the same checkpoints whatever step a resumed run starts from: counted from step 0
    assert curve_due(every3, 60, final=False) and not curve_due(every3, 70, final=False)


def test_curve_points_round_trip_into_curve_csv(tmp_path) -> None:
    import pandas as pd

    from med42ray.train.curve import CURVE_FILE, read_points, write_curve, write_point

    for step, acc in ((10, 0.25), (2, 0.5)):
        benchmarks = {"medqa": {"acc": acc, "acc_stderr": 0.1, "n": 17}}
        benchmarks["pubmedqa"] = {"acc": acc / 2, "acc_stderr": 0.1, "n": 13}
        point = {"step": step, "tokens": 100 * step, "protocol": "letter", "benchmarks": benchmarks}
        write_point(tmp_path / "stage", point)
    (tmp_path / "stage" / "curve" / "parts").mkdir()  # the scoring's parts live beside them
    frame = write_curve(tmp_path / "stage", tmp_path)
    assert frame.equals(pd.read_csv(tmp_path / CURVE_FILE))
    assert list(frame["step"]) == [2, 2, 10, 10]
    assert list(frame["benchmark"]) == ["medqa", "pubmedqa"] * 2
    assert list(frame["tokens"]) == [200, 200, 1000, 1000]
    assert frame.loc[0, "acc"] == 0.5 and frame.loc[3, "n"] == 13
    assert read_points(tmp_path / "nowhere").empty


# ------------------------------------------------------------------------ fixed data shards
def global_steps(world: int, rows_per_worker: int, num_shards: int = 4, steps: int = 12):
    """Each step's rows over all workers (sorted), for `world` workers reading `num_shards`
    fixed shards of 100 numbered rows (row i in shard i % num_shards), one per step."""
    from med42ray.train.data import RowSchedule, ShardedSchedule, owned_shards
    from med42ray.train.packing import PackStats

    per_shard = rows_per_worker * world // num_shards
    ranks = []
    for rank in range(world):
        schedules = [
            RowSchedule([i for i in range(100) if i % num_shards == s], PackStats(), per_shard, 7)
            for s in owned_shards(rank, world, num_shards)
        ]
        schedule = ShardedSchedule(schedules)
        stream = schedule.steps(0, schedule.steps_per_epoch)
        ranks.append([next(stream)[1] for _ in range(steps)])
    return [sorted(row for rank in ranks for row in rank[k]) for k in range(steps)]


def test_fixed_data_shards_give_every_worker_count_the_same_steps():
    """Full on 4 workers (2 rows each) and LoRA on 2 (4 rows) or 1 (8 rows): with 4 fixed
    shards every step holds the same 8 rows, epoch after epoch; one shard per worker does not."""
    four = global_steps(4, 2)
    assert four == global_steps(2, 4) == global_steps(1, 8)
    assert all(len(step) == 8 for step in four) and len({tuple(s) for s in four}) == 12
    assert global_steps(2, 4, num_shards=2) != four  # one per worker: the order moves


def test_data_shards_must_fit_the_workers_and_the_step():
    from med42ray.config import ConfigError, load_config
    from tests.conftest import CONFIGS

    cfg = load_config(CONFIGS / "llama2-7b-full.yaml")  # full: 16 x 2 x 4, LoRA: 8 x 4 x 4
    assert cfg.train.data_shards == 16
    for shards, bad in ((12, True), (8, True), (256, True), (16, False), (32, False), (128, False)):
        try:
            load_config(CONFIGS / "llama2-7b-full.yaml", {"train.data_shards": shards})
        except ConfigError as err:
            assert bad and "train.data_shards" in str(err), err
        else:
            assert not bad, shards
