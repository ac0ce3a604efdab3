"""The vLLM engine on CPU: agrees with Transformers, and serves a LoRA adapter unmerged.

One vLLM engine for the whole module, built with LoRA enabled, so it scores the base model (no
adapter request) and the adapter. On CPU its engine core runs in-process: a few seconds to start
instead of ~30 s. vLLM is imported plainly: a broken install fails here, it never skips.
(The engine without LoRA, prompt logprobs on the prefix cache, runs end to end through
`run_eval` in `test_eval_vllm_run.py`.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import vllm  # noqa: F401 - imported, not skipped: a broken vLLM fails CI

from med42ray.benchmarks import load_benchmark, load_task
from med42ray.eval.metrics import predict
from med42ray.eval.prompts import PromptFormat

FIX = Path(__file__).parent / "fixtures" / "benchmarks"


@pytest.fixture(scope="module")
def adapter(tiny_config, tiny_model_path, tmp_path_factory) -> Path:
    """A PEFT LoRA adapter on the tiny model, with non-zero B so it changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model

    from med42ray.models import load_model

    model = load_model(tiny_config.model, str(tiny_model_path))
    peft = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    out = tmp_path_factory.mktemp("adapter") / "lora-tiny"
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def eval_cfg(tiny_config):
    return tiny_config.eval.model_copy(update={"max_model_len": 512, "batch_size": 8})


@pytest.fixture(scope="module")
def vllm_engine(tiny_config, tiny_model_path, eval_cfg, adapter):
    from med42ray.eval.engines import make_engine

    engine = make_engine("vllm", str(tiny_model_path), tiny_config.model, eval_cfg, str(adapter))
    lora = engine.lora
    engine.lora = None  # base model unless a test asks for the adapter
    yield engine, lora
    engine.close()


def requests_and_choices():
    requests, groups = [], []
    files = [("medqa", "medqa.jsonl"), ("headqa", "headqa.jsonl"),
             ("pubmedqa", "pubmedqa_bigbio.jsonl"), ("medmcqa", "medmcqa.jsonl")]  # fmt: skip
    for task, file in files:
        fmt = PromptFormat(load_task(task))
        for item in load_benchmark(task, str(FIX / file)):
            prompt = fmt.render(item)
            groups.append((len(requests), prompt.choices))
            requests += [(prompt.context, c) for c in prompt.continuations]
    return requests, groups


def predictions(scores, groups):
    return [predict(scores[s : s + len(c)], c) for s, c in groups]


def test_vllm_engine_kwargs(tiny_config, tiny_model_path, eval_cfg, adapter):
    from med42ray.eval.engines import vllm_engine_kwargs

    one = vllm_engine_kwargs(str(tiny_model_path), tiny_config.model, eval_cfg, index=3)
    assert one["distributed_executor_backend"] == "uni" and one["seed"] == eval_cfg.seed + 3
    assert one["max_model_len"] == 512 and one["dtype"] == "float32"
    tp = eval_cfg.model_copy(update={"tensor_parallel_size": 4})
    many = vllm_engine_kwargs(str(tiny_model_path), tiny_config.model, tp, str(adapter))
    assert many["distributed_executor_backend"] == "ray" and many["tensor_parallel_size"] == 4
    assert many["enable_lora"] and many["max_lora_rank"] == 8


def test_vllm_loglikelihood_agrees_with_transformers(vllm_engine, tiny_config, tiny_model_path,
                                                      eval_cfg):  # fmt: skip
    from med42ray.eval.engines import HFEngine

    engine, _ = vllm_engine
    # on CPU the engine core runs in this process, not in one of its own
    assert type(engine.llm.llm_engine.engine_core).__name__ == "InprocClient"
    requests, groups = requests_and_choices()
    hf = HFEngine(str(tiny_model_path), tiny_config.model, eval_cfg).loglikelihood(requests)
    got = engine.loglikelihood(requests)
    assert got == pytest.approx(hf, abs=1e-3)
    assert predictions(got, groups) == predictions(hf, groups)
    texts = engine.generate(["Question: Which drug?\nAnswer:", "Abstract: x\nAnswer:"], 5)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_vllm_serves_lora_adapter(vllm_engine, tiny_config, tiny_model_path, eval_cfg, adapter):
    from med42ray.eval.engines import HFEngine

    engine, lora = vllm_engine
    requests, _ = requests_and_choices()
    requests = requests[:12]
    base = engine.loglikelihood(requests)
    prompts = ["Question: Which drug?\nAnswer:", "Abstract: x\nAnswer:"]
    base_text = engine.generate(prompts, 6)
    engine.lora = lora
    try:
        tuned = engine.loglikelihood(requests)
        tuned_text = engine.generate(prompts, 6)
    finally:
        engine.lora = None
    assert max(abs(a - b) for a, b in zip(base, tuned, strict=True)) > 0.1
    assert tuned_text != base_text
    # and it is the adapter PEFT applies in Transformers (unmerged in both)
    hf = HFEngine(str(tiny_model_path), tiny_config.model, eval_cfg, adapter=str(adapter))
    assert tuned == pytest.approx(hf.loglikelihood(requests), abs=1e-3)


def spy_generate(engine) -> list[tuple[int, object]]:
    """Record each `llm.generate` call of `engine`: (number of prompts, its LoRA request)."""
    calls: list[tuple[int, object]] = []
    real = engine.llm.generate

    def generate(prompts, *args, **kwargs):
        calls.append((len(prompts), kwargs.get("lora_request")))
        return real(prompts, *args, **kwargs)

    engine.llm.generate = generate
    return calls


def test_one_prefill_per_question_in_one_call(vllm_engine):
    """Lettered options: one prompt per question, the whole batch in one `generate`, the adapter
    as its one LoRA request; option texts add one call for their other tokens."""
    engine, lora = vllm_engine
    fmt = PromptFormat(load_task("medqa"))
    items = load_benchmark("medqa", str(FIX / "medqa.jsonl"))
    prompts = [fmt.render(i) for i in items]
    requests = [(p.context, c) for p in prompts for c in p.continuations]
    calls = spy_generate(engine)
    try:
        engine.lora = lora
        engine.loglikelihood(requests)
        assert calls == [(len(prompts), lora)]  # 4 options each, one prefill each
        calls.clear()
        texts = [
            (p.context, " " + c) for p, i in zip(prompts, items, strict=True) for c in i.choices
        ]
        engine.loglikelihood(texts)
        assert len(calls) == 2 and calls[0] == (len(prompts), lora)
    finally:
        engine.lora = None
        del engine.llm.generate


def test_tail_rescored_when_the_cache_covers_it(vllm_engine, tiny_config, tiny_model_path,
                                                eval_cfg):  # fmt: skip
    """A continuation whose own blocks are already cached (scored before) has no prompt
    logprobs for them: scored again without reading the cache, to the same sum."""
    from med42ray.eval.engines import HFEngine

    engine, _ = vllm_engine
    prefix, cont = tuple(range(10, 20)), [(7 * i) % 1500 + 30 for i in range(140)]
    hf = HFEngine(str(tiny_model_path), tiny_config.model, eval_cfg)
    want = (
        hf.loglikelihood_tokens([(prefix, cont)])[0]
        - hf.loglikelihood_tokens([(prefix, cont[:1])])[0]
    )
    calls = spy_generate(engine)
    try:
        first = engine._tail_logprobs([(prefix, cont)])  # one request: LoRA engine can
        again = engine._tail_logprobs([(prefix, cont)])
    finally:
        del engine.llm.generate
    assert [n for n, _ in calls] == [1, 1, 1]  # the second read the cache, then did not
    assert first == pytest.approx([want], abs=1e-3) and again == pytest.approx(first, abs=1e-4)
