"""A gym policy backed by a vision-language model: the screen and the game prompt in, reply texts out.

``HFPolicy`` samples with transformers' ``generate`` (CPU or GPU). ``backend="vllm"`` hands sampling to
vLLM instead, which only runs on GPUs; it is kept minimal and is not exercised by the CPU test suite.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from g1core.gym.policies import Policy, batch_seed

from .budget import PixelBudget
from .loading import (
    apply_budget,
    build_inputs,
    count_image_tokens,
    load_model,
    load_processor,
    preflight,
    render_prompt,
)

log = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class Sampling:
    """How replies are sampled: pure temperature / top-p sampling (no top-k, no repetition penalty),
    greedy when ``temperature == 0``."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"sampling needs temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1; got temperature="
                f"{self.temperature}, top_p={self.top_p}, max_new_tokens={self.max_new_tokens}"
            )


class _Generator(Protocol):
    def generate(self, images: list[np.ndarray], prompts: list[str], seed: int) -> tuple[list[str], int]:
        """Reply texts for one batch, and how many tokens were generated."""
        ...


class _HFGenerator:
    """Batched ``model.generate`` on left-padded inputs; decodes only the new tokens."""

    def __init__(self, model, processor, sampling: Sampling):
        self.model, self.processor, self.sampling = model, processor, sampling
        eos = model.generation_config.eos_token_id
        self.eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=torch.long)
        pad = processor.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else int(self.eos_ids[0])

    def _generate_kwargs(self) -> dict:
        s = self.sampling
        kwargs = {"max_new_tokens": s.max_new_tokens, "pad_token_id": self.pad_id, "repetition_penalty": 1.0}
        if s.temperature == 0:
            return {**kwargs, "do_sample": False}
        return {**kwargs, "do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": 0}

    def generate(self, images: list[np.ndarray], prompts: list[str], seed: int) -> tuple[list[str], int]:
        device = self.model.device
        inputs = build_inputs(self.processor, images, prompts).to(device)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            output = self.model.generate(**inputs, **self._generate_kwargs())
        new = output[:, inputs["input_ids"].shape[1] :].cpu()
        is_end = torch.isin(new, self.eos_ids)
        lengths = torch.where(is_end.any(dim=1), is_end.int().argmax(dim=1) + 1, new.shape[1])
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        return texts, int(lengths.sum())


class _VLLMGenerator:
    """GPU only: sampling through vLLM (``pip install 'g1[gpu]'``). Not run by the CPU test suite."""

    def __init__(self, model_path: str, processor, sampling: Sampling, budget: PixelBudget | None, seed: int):
        try:
            from vllm import LLM
        except ImportError as err:
            raise ModuleNotFoundError(
                "backend='vllm' needs the vllm package, which runs on GPUs only: pip install 'g1[gpu]'"
            ) from err
        mm_kwargs = (
            {} if budget is None else {"min_pixels": budget.min_pixels, "max_pixels": budget.max_pixels}
        )
        self.llm = LLM(
            model=model_path, seed=seed, limit_mm_per_prompt={"image": 1}, mm_processor_kwargs=mm_kwargs
        )
        self.processor, self.sampling = processor, sampling

    def generate(self, images: list[np.ndarray], prompts: list[str], seed: int) -> tuple[list[str], int]:
        from vllm import SamplingParams

        s = self.sampling
        params = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens)
        requests = [
            {
                "prompt": render_prompt(self.processor, prompt),
                "multi_modal_data": {"image": Image.fromarray(image)},
            }
            for image, prompt in zip(images, prompts, strict=True)
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs], sum(len(o.outputs[0].token_ids) for o in outputs)


class HFPolicy(Policy):
    """Replies sampled from a vision-language model, in batches of ``batch_size``.

    Give ``model_path`` (hub id or local folder; loaded on ``device``) or an already loaded ``model`` and
    ``processor``. ``budget`` overrides the processor's pixel budget. With ``max_prompt_tokens``, every
    prompt is checked by :func:`preflight` first. Sampling is reproducible from ``seed`` and the states
    shown: a call is seeded by (seed, the exact states of its envs), so the same batch gives the same
    answers in any run, and the global torch RNG is left untouched. ``tokens_per_s`` holds the
    last call's generation speed; ``generated_tokens`` and ``generate_seconds`` the running totals.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        model=None,
        processor=None,
        budget: PixelBudget | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        seed: int = 0,
        device: str = "auto",
        name: str | None = None,
        backend: str = "hf",
        dtype: str = "auto",
        max_prompt_tokens: int | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if (model_path is None) == (model is None) or (model is not None and processor is None):
            raise ValueError("HFPolicy needs either model_path, or both model and processor")
        if backend == "vllm" and model_path is None:
            raise ValueError("backend='vllm' loads the model itself: give model_path, not model")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sampling = Sampling(float(temperature), float(top_p), int(max_new_tokens))
        self.batch_size, self.seed, self.max_prompt_tokens = int(batch_size), int(seed), max_prompt_tokens
        self.name = name or (f"hf:{os.path.basename(str(model_path).rstrip('/'))}" if model_path else "hf")
        if backend == "vllm":
            self.processor = load_processor(model_path, budget)
            self._generator: _Generator = _VLLMGenerator(
                str(model_path), self.processor, sampling, budget, seed
            )
        else:
            if model is None:
                model, processor = load_model(model_path, dtype=dtype, device=device, budget=budget)
            elif budget is not None:
                apply_budget(processor, budget)
            self.model, self.processor = model, processor
            self._generator = _HFGenerator(model, processor, sampling)
        self._calls = 0
        self.tokens_per_s = 0.0
        self.generated_tokens = 0
        self.generate_seconds = 0.0
        self.image_tokens_max = 0  # the most image tokens a screen shown so far cost
        self.prompt_tokens_max = (
            0  # the longest prompt shown so far (image tokens included; when preflighted)
        )

    def stats(self) -> dict[str, float]:
        """Generation counters and the largest prompt seen, for metrics."""
        out = {
            "tokens_per_s": self.tokens_per_s,
            "generated_tokens": float(self.generated_tokens),
            "generate_seconds": self.generate_seconds,
            "image_tokens_max": float(self.image_tokens_max),
        }
        if self.prompt_tokens_max:
            out["prompt_tokens_max"] = float(self.prompt_tokens_max)
        return out

    def _observe(self, env) -> tuple[np.ndarray, str]:
        """The env's screen and prompt, checked (and preflighted when ``max_prompt_tokens`` is set)."""
        frame = env.render()
        if frame is None:
            raise ValueError(f"{type(env).__name__} rendered no frame: make it with render_mode='rgb_array'")
        prompt = env.unwrapped.prompt
        self.image_tokens_max = max(
            self.image_tokens_max, count_image_tokens(self.processor, frame.shape[:2])
        )
        if self.max_prompt_tokens is not None:
            total = preflight(self.processor, frame.shape[:2], prompt, self.max_prompt_tokens)
            self.prompt_tokens_max = max(self.prompt_tokens_max, total)
        return frame, prompt

    def check(self, env) -> None:
        """Raise now if ``env``'s screen and prompt cannot be answered (preflight), before any work."""
        self._observe(env)

    def _call_seed(self, envs: Sequence) -> int:
        self._calls += 1
        return batch_seed(envs, self.seed)

    def _generate(self, items: list[tuple[np.ndarray, str]], seed: int) -> list[str]:
        started = time.perf_counter()
        texts, n_tokens = self._generator.generate([i[0] for i in items], [i[1] for i in items], seed)
        seconds = time.perf_counter() - started
        self.generated_tokens += n_tokens
        self.generate_seconds += seconds
        return texts

    def _finish(self, tokens_before: int, seconds_before: float) -> None:
        seconds = self.generate_seconds - seconds_before
        self.tokens_per_s = (self.generated_tokens - tokens_before) / seconds if seconds > 0 else 0.0

    def replies(self, envs: Sequence) -> list[str]:
        """One sampled reply per env; raises on the first failure."""
        before = (self.generated_tokens, self.generate_seconds)
        items = [self._observe(env) for env in envs]
        seed = self._call_seed(envs)
        out: list[str] = []
        for start in range(0, len(items), self.batch_size):
            out += self._generate(items[start : start + self.batch_size], seed + start)
        self._finish(*before)
        return out

    def try_replies(self, envs: Sequence) -> list[str | None]:
        """Like :meth:`replies`, but an env that fails (render, preflight, generation) gets None."""
        before = (self.generated_tokens, self.generate_seconds)
        results: list[str | None] = [None] * len(envs)
        ready: list[tuple[int, tuple[np.ndarray, str]]] = []
        for index, env in enumerate(envs):
            try:
                ready.append((index, self._observe(env)))
            except Exception as err:  # any failure of one env is that env's None
                log.warning("env %d: no reply (%s)", index, err)
        seed = self._call_seed(envs)
        for start in range(0, len(ready), self.batch_size):
            chunk = ready[start : start + self.batch_size]
            try:
                texts: list[str | None] = list(self._generate([item for _, item in chunk], seed + start))
            except Exception as err:  # retry one by one to isolate the failing env
                log.warning("batch at %d failed (%s); retrying its envs one by one", start, err)
                texts = [self._try_one(item, seed + start + k) for k, (_, item) in enumerate(chunk)]
            for (index, _), text in zip(chunk, texts, strict=True):
                results[index] = text
        self._finish(*before)
        return results

    def _try_one(self, item: tuple[np.ndarray, str], seed: int) -> str | None:
        try:
            return self._generate([item], seed)[0]
        except Exception as err:  # this env alone failed
            log.warning("no reply (%s)", err)
            return None
