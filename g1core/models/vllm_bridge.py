"""What the GRPO stage hands a colocated vLLM engine, made to agree with what training scores.

TRL (1.16) builds its colocated ``vllm.LLM`` from the policy's folder (``model.name_or_path``) and feeds it
the prompt ids that the Hugging Face processor made, with the screens beside them. Left alone, three things
would differ between the answers vLLM samples and the inputs training scores, none of them with an error:

- **Pixel budget.** vLLM builds its own image processor from the folder's ``preprocessor_config.json``; a hub
  model's (max_pixels 12,845,056) turns an 840x640 screen into 690 image tokens where our budget gives 660.
  :func:`budgeted_model_folder` gives vLLM a folder whose processor config is ours (weights linked).
- **Image tokens twice.** The processor has already expanded ``<|image_pad|>`` into one token per merged
  patch; vLLM 0.30 replaces the *first* pad of that run with its own expansion and keeps the other N-1 as
  plain text tokens. :func:`collapse_image_runs` leaves one pad per image for vLLM to expand, and
  :func:`guard_generation` compares the prompt vLLM then ran with the trainer's: any difference stops the
  run at the first step, naming both image-token counts.
- **A sampled image token.** Hugging Face generate suppresses ``<|image_pad|>`` in TRL, vLLM does not; one
  sampled pad breaks the training forward ("Image features and image tokens do not match").
  :func:`suppress_image_token` is the sampling setting that forbids it.

:func:`release` frees an engine once its run is over, so that a second run in the same process (``g1 bench
grpo`` trains G1, then G0) can build its own.
"""

from __future__ import annotations

import gc
import logging
import shutil
from collections.abc import Callable, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# vLLM's logit bias on the image token: exp(-100) makes it unsamplable, and vLLM's validation accepts it
SUPPRESSING_BIAS = -100.0
# what a processor (its image processor, tokenizer and chat template) reads from a model folder, in this or an
# older transformers' layout: never linked from the start model, whose budget they would bring back
PROCESSOR_FILES = (
    "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json", "chat_template.*",
    "tokenizer*", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
)  # fmt: skip


def collapse_image_runs(ids: Sequence[int], image_token_id: int) -> list[int]:
    """``ids`` with every run of ``image_token_id`` shortened to one token (the unexpanded placeholder)."""
    out: list[int] = []
    for token in ids:
        if token == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(int(token))
    return out


def image_runs(ids: Sequence[int], image_token_id: int) -> list[int]:
    """The length of each run of image tokens in ``ids``, in order (one run per image)."""
    runs: list[int] = []
    previous = None
    for token in ids:
        if token == image_token_id:
            if previous == image_token_id:
                runs[-1] += 1
            else:
                runs.append(1)
        previous = token
    return runs


def expansion_mismatch(
    trainer_ids: Sequence[int], engine_ids: Sequence[int], image_token_id: int
) -> str | None:
    """Why the prompt the engine ran differs from the trainer's, or None when they are the same tokens."""
    if list(trainer_ids) == list(engine_ids):
        return None
    ours, theirs = image_runs(trainer_ids, image_token_id), image_runs(engine_ids, image_token_id)
    if ours != theirs:
        return (
            f"vLLM expanded the screen to image-token runs {theirs} where training uses {ours}: the two "
            "processors resize the screen differently (pixel budget) or the placeholder was expanded twice"
        )
    return f"vLLM ran a prompt of {len(engine_ids)} tokens, training scores one of {len(trainer_ids)}"


def guard_generation(generation: Any, image_token_id: int) -> None:
    """Make ``generation`` (TRL's ``VLLMGeneration``) get one placeholder per image and check what vLLM ran.

    Its ``generate(prompts, images, num_generations, profiler)`` is wrapped in place: the prompts go to vLLM
    collapsed, and the expanded prompts vLLM reports back must equal the trainer's token for token."""
    raw: Callable = generation.generate

    def generate(prompts, images, num_generations, profiler=None):
        collapsed = [collapse_image_runs(ids, image_token_id) for ids in prompts]
        out = raw(prompts=collapsed, images=images, num_generations=num_generations, profiler=profiler)
        for k, (ours, theirs) in enumerate(zip(prompts, out[0], strict=True)):
            why = expansion_mismatch(ours, theirs, image_token_id)
            if why is not None:
                raise RuntimeError(f"prompt {k} of the step: {why}; its answers would train on another input")
        return (list(prompts), *out[1:])

    generation.generate = generate


def suppress_image_token(image_token_id: int) -> dict[str, Any]:
    """vLLM sampling settings (TRL's ``generation_kwargs``) that never sample the image placeholder."""
    return {"logit_bias": {int(image_token_id): SUPPRESSING_BIAS}}


def _local_snapshot(source: str) -> Path:
    """A model's local folder: itself, or a hub id's cached snapshot (downloaded by now, or fetched)."""
    if Path(source).is_dir():
        return Path(source).resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source))


def budgeted_model_folder(source: str, processor, dest: str | Path) -> Path:
    """``dest``: ``source``'s weights and configs linked, and ``processor`` saved in place of its processor.

    vLLM, pointed at ``dest``, then resizes screens within the pixel budget that ``processor`` applies, as
    training does; the weights are symbolic links, so nothing large is copied. The folder's processor is read
    back: a budget that does not survive the round trip is an error here, not a silent mismatch later."""
    from .budget import PixelBudget
    from .loading import load_processor

    src, dest = _local_snapshot(source), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    processor.save_pretrained(dest)
    for item in src.iterdir():
        owned = any(fnmatch(item.name, pattern) for pattern in PROCESSOR_FILES)
        if not owned and not (dest / item.name).exists():
            (dest / item.name).symlink_to(item.resolve())
    wanted, saved = PixelBudget.of(processor), PixelBudget.of(load_processor(dest))
    if saved != wanted:
        raise RuntimeError(f"the processor saved in {dest} resizes within {saved}, not {wanted}")
    return dest


def release(generation: Any, own_world: bool) -> None:
    """Free a colocated engine: its model runner's weights, KV cache and allocator pools, and vLLM's
    parallel groups; with ``own_world`` (neither a launcher nor a DeepSpeed session set up torch.distributed:
    vLLM did) that world too."""
    llm = getattr(generation, "llm", None)
    if llm is None:
        return
    import torch
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    llm.llm_engine.model_executor.shutdown()
    generation.llm = None
    del llm
    destroy_model_parallel()
    if own_world:
        destroy_distributed_environment()
    gc.collect()
    torch.cuda.empty_cache()
    log.info("vLLM engine released")
