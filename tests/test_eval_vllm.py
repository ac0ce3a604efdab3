"""The vLLM engine on CPU: agrees with Transformers, and serves a LoRA adapter unmerged.

One vLLM engine for the whole module, built with LoRA enabled, so it scores the base model (no
adapter request) and the adapter. On CPU its engine core runs in-process: a few seconds to start
instead of ~30 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from med42ray.benchmarks import load_benchmark, load_task
from med42ray.eval.metrics import predict
from med42ray.eval.prompts import PromptFormat

pytest.importorskip("vllm")
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
