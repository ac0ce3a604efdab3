"""Inference engines behind one interface: Hugging Face Transformers and vLLM.

Both score ``(context, continuation)`` pairs the way lm-evaluation-harness's ``hf`` model does
(:func:`encode_pairs`: trailing spaces of the context move to the continuation, the pair is
encoded whole and split at the context's length, the tokenizer's default special tokens, BOS
for Llama) and generate greedily. The scoring modes (:mod:`~med42ray.eval.scoring`) drive
either through :class:`InferenceEngine` without knowing which one they have; :func:`make_engine`
is the one factory. (Training has engines of its own, the DeepSpeed and DDP wrappers of
:mod:`med42ray.train.engines`.)
"""

from __future__ import annotations

import abc
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from med42ray.config import EvalConfig, ModelConfig
from med42ray.models import load_model, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TokenPair = tuple[Sequence[int], Sequence[int]]


# ----------------------------------------------------------------------------- tokenisation
def tok_encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """lm-eval's ``tok_encode``: default special tokens, unless the text already has BOS."""
    bos = tokenizer.bos_token
    plain = [i for i, t in enumerate(texts) if not (bos and t.startswith(bos))]
    out: list[list[int]] = [[] for _ in texts]
    if plain:
        for i, ids in zip(plain, tokenizer([texts[i] for i in plain])["input_ids"], strict=True):
            out[i] = list(ids)
    rest = [i for i in range(len(texts)) if i not in set(plain)]
    if rest:
        enc = tokenizer([texts[i] for i in rest], add_special_tokens=False)["input_ids"]
        for i, ids in zip(rest, enc, strict=True):
            out[i] = list(ids)
    return out


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]]
) -> list[tuple[list[int], list[int]]]:
    """lm-eval's ``_encode_pair`` for many pairs: ``(context_ids, continuation_ids)``."""
    contexts, wholes = [], []
    for context, continuation in pairs:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        contexts.append(context)
        wholes.append(context + continuation)
    unique = list(dict.fromkeys(contexts))  # options of one question share their context
    ctx_ids = dict(zip(unique, tok_encode(tokenizer, unique), strict=True))
    out = []
    for context, whole in zip(contexts, tok_encode(tokenizer, wholes), strict=True):
        if not context:  # lm-eval conditions an empty context on the prefix (BOS/EOS) token
            prefix = tokenizer.bos_token_id
            prefix = tokenizer.eos_token_id if prefix is None else prefix
            out.append(([prefix], whole))
            continue
        ctx = ctx_ids[context]
        out.append((ctx, whole[len(ctx) :]))
    return out


def max_model_len(model_path: str, model_cfg: ModelConfig, eval_cfg: EvalConfig) -> int:
    """The eval length limit, capped by the model's position embeddings."""
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(model_path, trust_remote_code=model_cfg.trust_remote_code)
    limit = getattr(hf, "max_position_embeddings", None) or eval_cfg.max_model_len
    return min(eval_cfg.max_model_len, int(limit))


# --------------------------------------------------------------------------------- interface
class InferenceEngine(abc.ABC):
    """Scores continuations and generates text for one model (+ optional LoRA adapter)."""

    name: str
    tokenizer: PreTrainedTokenizerBase
    max_length: int

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        """Summed log-probability of each continuation given its context."""
        return self.loglikelihood_tokens(encode_pairs(self.tokenizer, requests))

    @abc.abstractmethod
    def loglikelihood_tokens(self, requests: Sequence[TokenPair]) -> list[float]:
        """As :meth:`loglikelihood`, on already encoded ``(context, continuation)`` ids."""

    @abc.abstractmethod
    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy completions of `prompts` (the prompt itself not included)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model (engines with worker processes override this)."""


def _truncate(ctx: Sequence[int], cont: Sequence[int], limit: int) -> tuple[list[int], int]:
    """lm-eval's left truncation: the scored sequence keeps its last `limit` tokens."""
    if not cont:
        raise ValueError("empty continuation")
    whole = (list(ctx) + list(cont))[-limit:]
    return whole, len(cont)


# ------------------------------------------------------------------------------ Transformers
class HFEngine(InferenceEngine):
    """Transformers on CPU or one GPU: batched, right-padded forward passes.

    A question's options share their context: inputs are deduplicated (one-token options such
    as " A".." D" all need the same input, the context, so a question costs one forward row),
    and an input that is a prefix of another's is read from the longer row. Only the positions
    that are scored go through the LM head (``logits_to_keep``).
    """

    name = "hf"

    def __init__(
        self,
        model_path: str,
        model_cfg: ModelConfig,
        eval_cfg: EvalConfig,
        adapter: str | None = None,
        device: str | None = None,
    ) -> None:
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model_cfg, model_path)
        model = load_model(model_cfg, model_path, use_gpu=self.device.startswith("cuda"))
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)  # served unmerged
        self.model = model.to(self.device).eval()
        self.batch_size = eval_cfg.batch_size
        self.max_length = max_model_len(model_path, model_cfg, eval_cfg)

    def loglikelihood_tokens(self, requests: Sequence[TokenPair]) -> list[float]:
        import torch

        # Each request reads logits at positions [start, end) of some input row.
        wholes = [_truncate(c, k, self.max_length + 1) for c, k in requests]
        inputs: list[tuple[int, ...]] = []
        index: dict[tuple[int, ...], int] = {}
        for whole, _ in wholes:
            inp = tuple(whole[:-1])
            if inp not in index:
                index[inp] = len(inputs)
                inputs.append(inp)
        # an input that is a prefix of a longer one (same question) is served by the longer
        by_ctx: dict[tuple[int, ...], list[int]] = {}
        for (_ctx, _), (whole, n) in zip(requests, wholes, strict=True):
            by_ctx.setdefault(tuple(whole[: len(whole) - n]), []).append(index[tuple(whole[:-1])])
        host = list(range(len(inputs)))
        for rows in by_ctx.values():
            rows = sorted(set(rows), key=lambda r: -len(inputs[r]))
            for i, short in enumerate(rows):
                for long in rows[:i]:
                    if inputs[long][: len(inputs[short])] == inputs[short]:
                        host[short] = host[long]
                        break
        needed = sorted({host[r] for r in range(len(inputs))}, key=lambda r: -len(inputs[r]))
        # per input row: the target tokens read from it, as (request, start, targets)
        reads: dict[int, list[tuple[int, int, list[int]]]] = {}
        for i, (whole, n) in enumerate(wholes):
            row = host[index[tuple(whole[:-1])]]
            reads.setdefault(row, []).append((i, len(whole) - 1 - n, whole[-n:]))

        scores = [0.0] * len(requests)
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for b in range(0, len(needed), self.batch_size):
                rows = needed[b : b + self.batch_size]
                width = max(len(inputs[r]) for r in rows)
                first = min(start for r in rows for _, start, _ in reads[r])
                keep = width - first
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                for j, r in enumerate(rows):
                    ids[j, : len(inputs[r])] = torch.tensor(inputs[r])
                logits = self.model(input_ids=ids.to(self.device), logits_to_keep=keep).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
                for j, r in enumerate(rows):
                    for req, start, targets in reads[r]:
                        pos = torch.arange(start, start + len(targets)) - first
                        picked = logprobs[j, pos, torch.tensor(targets)]
                        scores[req] = float(picked.sum())
        return scores

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        import torch

        tok = self.tokenizer
        out: list[str] = []
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            with torch.inference_mode():
                for b in range(0, len(prompts), self.batch_size):
                    chunk = list(prompts[b : b + self.batch_size])
                    enc = tok(
                        chunk,
                        return_tensors="pt",
                        padding=True,
                        truncation=True,
                        max_length=max(1, self.max_length - max_new_tokens),
                    ).to(self.device)
                    gen = self.model.generate(
                        **enc,
                        do_sample=False,
                        max_new_tokens=max_new_tokens,
                        pad_token_id=tok.pad_token_id,
                    )
                    new = gen[:, enc["input_ids"].shape[1] :]
                    out.extend(tok.batch_decode(new, skip_special_tokens=True))
        finally:
            tok.padding_side = side
        return out

    def close(self) -> None:
        self.model = None


# ------------------------------------------------------------------------------------ vLLM
def lora_rank(adapter: str) -> int:
    """The rank `r` of a PEFT adapter folder."""
    return int(json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_engine_kwargs(
    model_path: str,
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    adapter: str | None = None,
    index: int = 0,
) -> dict[str, Any]:
    """Arguments of ``vllm.LLM`` (and of ray.data.llm's ``engine_kwargs``) for engine `index`.

    Tensor parallelism runs in-process for one shard (``uni``) and on Ray workers otherwise;
    each engine gets its own seed (``eval.seed + index``); LoRA adapters are served unmerged;
    prefix caching on (the options of a question share its prefill); safetensors weights only.
    """
    tp = eval_cfg.tensor_parallel_size
    kwargs: dict[str, Any] = {
        "model": model_path,
        "tokenizer": model_path,
        "dtype": "auto" if model_cfg.dtype == "auto" else model_cfg.dtype,
        "max_model_len": max_model_len(model_path, model_cfg, eval_cfg),
        "tensor_parallel_size": tp,
        "distributed_executor_backend": "uni" if tp == 1 else "ray",
        "seed": eval_cfg.seed + index,
        "trust_remote_code": model_cfg.trust_remote_code,
        # the options of a question re-read its prefix from the cache (VLLMEngine)
        "enable_prefix_caching": True,
        # never the pickled .bin files vLLM falls back to when both are there
        "load_format": "safetensors",
    }
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    if not _cuda_available():
        kwargs["enforce_eager"] = True  # no CUDA graphs on CPU
    if adapter:
        kwargs.update(enable_lora=True, max_lora_rank=max(8, lora_rank(adapter)), max_loras=1)
    return kwargs


class VLLMEngine(InferenceEngine):
    """vLLM: one prefill per question, greedy generation, LoRA served unmerged.

    The options of a question are continuations of one shared prefix. :meth:`loglikelihood_tokens`
    prefills each distinct prefix once and reads the first token of every option at its one
    sampled position (``logprob_token_ids``: a lettered question costs one prefill and no prompt
    logits). The other tokens of a longer option come from ``prompt_logprobs`` of a second
    request that finds the prefix in vLLM's prefix cache, so only the option's own block is
    computed. An engine built with LoRA reads those tokens at sampled positions too (one request
    per option prefix, also on the cached prefix): vLLM v1's LoRA logits processor indexes
    adapters by sampled position, so ``prompt_logprobs`` of several requests at once fail there
    (vllm-project/vllm#29955, #16668). Each wave is one ``generate`` call for the whole batch,
    with the engine's adapter as its ``LoRARequest``.
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        model_cfg: ModelConfig,
        eval_cfg: EvalConfig,
        adapter: str | None = None,
        index: int = 0,
        **overrides: Any,
    ) -> None:
        import vllm
        from vllm.lora.request import LoRARequest

        kwargs = vllm_engine_kwargs(model_path, model_cfg, eval_cfg, adapter, index)
        kwargs.update(overrides)
        self.max_length = kwargs["max_model_len"]
        start = time.perf_counter()
        if not _cuda_available() and kwargs["tensor_parallel_size"] == 1:
            # On CPU the engine core runs in this process: as its own process (vLLM's default,
            # which overlaps scheduling with GPU work) it only re-imports vLLM on the same
            # cores, ~30 s more per engine on 2. `VLLM_ENABLE_V1_MULTIPROCESSING=1` keeps it.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.llm = vllm.LLM(**kwargs)
        log.info("vLLM engine up in %.1fs", time.perf_counter() - start)
        self.tokenizer = load_tokenizer(model_cfg, model_path)
        self.lora = LoRARequest("adapter", 1, str(adapter)) if adapter else None
        self.lora_enabled = bool(kwargs.get("enable_lora"))

    def loglikelihood_tokens(self, requests: Sequence[TokenPair]) -> list[float]:
        split: list[tuple[tuple[int, ...], list[int]]] = []
        for c, k in requests:
            # the prompt plus one generated token must fit: keep the last max_length - 1 tokens
            whole, n = _truncate(c, k, self.max_length - 1)
            n = min(n, len(whole) - 1)  # a prompt needs a token; the first has no logprob
            split.append((tuple(whole[:-n]), whole[-n:]))
        # wave 1: every distinct prefix once, read for the first token of each of its options
        firsts: dict[tuple[int, ...], set[int]] = {}
        for prefix, cont in split:
            firsts.setdefault(prefix, set()).add(cont[0])
        read = self._next_token_logprobs(firsts)
        scores = [read[prefix, cont[0]] for prefix, cont in split]
        # wave 2: the other tokens of longer options, on the prefixes wave 1 left in the cache
        longer = [i for i, (_, cont) in enumerate(split) if len(cont) > 1]
        if longer and self.lora_enabled:
            nexts: dict[tuple[int, ...], set[int]] = {}
            for i in longer:
                prefix, cont = split[i]
                for j in range(1, len(cont)):
                    nexts.setdefault(prefix + tuple(cont[:j]), set()).add(cont[j])
            read = self._next_token_logprobs(nexts)
            for i in longer:
                prefix, cont = split[i]
                scores[i] += sum(
                    read[prefix + tuple(cont[:j]), cont[j]] for j in range(1, len(cont))
                )
        elif longer:
            tails = self._tail_logprobs([split[i] for i in longer])
            for i, tail in zip(longer, tails, strict=True):
                scores[i] += tail
        return scores

    def _generate(self, prompts: Sequence[Sequence[int]], params: Any) -> list[Any]:
        """One ``generate`` call on token prompts, with the engine's adapter if it serves one."""
        from vllm.inputs import TokensPrompt

        return self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            params,
            lora_request=self.lora,
            use_tqdm=False,
        )

    def _next_token_logprobs(
        self, reads: dict[tuple[int, ...], set[int]]
    ) -> dict[tuple[tuple[int, ...], int], float]:
        """``log p(token | prompt)`` for every prompt of `reads` and each of its tokens: one
        request per prompt, read at its sampled position (at most 128 tokens a request)."""
        from vllm import SamplingParams
        from vllm.sampling_params import MAX_LOGPROB_TOKEN_IDS as MAX_IDS

        prompts: list[tuple[int, ...]] = []
        params: list[Any] = []
        for prompt, tokens in reads.items():
            ordered = sorted(tokens)
            for s in range(0, len(ordered), MAX_IDS):
                prompts.append(prompt)
                params.append(
                    SamplingParams(
                        max_tokens=1,
                        temperature=0.0,
                        detokenize=False,
                        logprob_token_ids=ordered[s : s + MAX_IDS],
                    )
                )
        out: dict[tuple[tuple[int, ...], int], float] = {}
        results = self._generate(prompts, params)
        for prompt, param, res in zip(prompts, params, results, strict=True):
            got = res.outputs[0].logprobs[0]
            for token in param.logprob_token_ids:
                out[prompt, token] = float(got[token].logprob)
        return out

    def _tail_logprobs(self, split: Sequence[tuple[tuple[int, ...], list[int]]]) -> list[float]:
        """The summed ``prompt_logprobs`` of every continuation token but the first.

        The prefixes are cached (wave 1), so vLLM computes only from their last full block on.
        A request whose cache hit reached past its prefix (another option with the same first
        tokens was computed before it) lacks those rows: it is scored again, cache unread.
        """
        from vllm import SamplingParams

        wanted = list(
            dict.fromkeys((prefix + tuple(cont), len(cont) - 1) for prefix, cont in split)
        )
        sums: dict[tuple[tuple[int, ...], int], float] = {}
        for read_cache in (True, False):
            todo = [w for w in wanted if w not in sums]
            if not todo:
                break
            params = SamplingParams(
                max_tokens=1,
                temperature=0.0,
                detokenize=False,
                prompt_logprobs=0,
                skip_reading_prefix_cache=not read_cache,
            )
            results = self._generate([whole for whole, _ in todo], params)
            for (whole, n), res in zip(todo, results, strict=True):
                if not read_cache or (res.num_cached_tokens or 0) <= len(whole) - n - 1:
                    sums[whole, n] = sum_prompt_logprobs(res.prompt_logprobs, whole, n)
        return [sums[prefix + tuple(cont), len(cont) - 1] for prefix, cont in split]

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        outputs = self.llm.generate(list(prompts), params, lora_request=self.lora, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]

    def close(self) -> None:
        self.llm = None


def sum_prompt_logprobs(prompt_logprobs: Sequence[Any], tokens: Sequence[int], n: int) -> float:
    """Sum of the logprobs vLLM reports for the last `n` prompt tokens (their own entries).

    Read from the end: the list ends at the last prompt token whichever model runner made it
    (V2 leaves out the rows a prefix-cache hit skipped; V1 keeps them, unfilled).
    """
    if n <= 0:
        return 0.0
    entries = list(prompt_logprobs)[-n:]
    if len(entries) < n or any(e is None for e in entries):
        raise RuntimeError(f"vLLM returned {len(entries)} prompt logprobs, {n} needed")
    total = 0.0
    for entry, token in zip(entries, tokens[-n:], strict=True):
        got = entry[token]
        total += got["logprob"] if isinstance(got, dict) else got.logprob
    return float(total)


# ----------------------------------------------------------------------------------- factory
def make_engine(
    kind: str,
    model_path: str,
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    adapter: str | None = None,
    index: int = 0,
    **overrides: Any,
) -> InferenceEngine:
    """The engine named by `kind` (``eval.engine``: ``hf`` or ``vllm``)."""
    if kind == "hf":
        return HFEngine(model_path, model_cfg, eval_cfg, adapter=adapter, **overrides)
    if kind == "vllm":
        return VLLMEngine(
            model_path, model_cfg, eval_cfg, adapter=adapter, index=index, **overrides
        )
    raise ValueError(f"unknown engine {kind!r}; known: hf, vllm")
