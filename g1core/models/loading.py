"""Loading a vision-language model and turning (screen, prompt[, answer]) into model inputs.

Works the same for a Hugging Face hub id (``Qwen/Qwen2.5-VL-7B-Instruct``; needs the hub or its cache)
and for a local folder such as the tiny model from :mod:`g1core.models.tiny`. One :class:`PixelBudget`
sets how large a screen may be once resized, and so how many image tokens it costs; the processor and
:func:`preflight` read it from the same place, so the prompt-length check and the real inputs agree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, BatchFeature
from transformers.image_processing_utils import SizeDict

from .budget import PixelBudget
from .processor import QWEN_VL_MODEL_TYPE, ImageOnlyQwen2_5_VLProcessor, ensure_processor_support

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the loss skips (prompt, image and padding tokens)
END_OF_TURN = "<|im_end|>"  # Qwen chat format: closes every turn; the answer's labels end with it
# processor outputs shaped (batch, sequence): re-padded when answers are appended
PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


def apply_budget(processor, budget: PixelBudget) -> None:
    """Make ``processor`` resize images within ``budget`` (in place)."""
    processor.image_processor.size = SizeDict(shortest_edge=budget.min_pixels, longest_edge=budget.max_pixels)


def _is_local(name_or_path: str | os.PathLike) -> bool:
    text = str(name_or_path)
    return Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") > 1


def _check_source(name_or_path: str | os.PathLike) -> str:
    text = str(name_or_path)
    if _is_local(text) and not Path(text).expanduser().is_dir():
        raise FileNotFoundError(f"model folder {text!r} does not exist")
    return str(Path(text).expanduser()) if _is_local(text) else text


def load_processor(name_or_path: str | os.PathLike, budget: PixelBudget | None = None):
    """The model's processor (tokenizer + image processor + chat template), resizing within ``budget``.

    ``budget=None`` keeps the budget saved with the model. Without torchvision, Qwen2.5-VL models get the
    image-only stand-in processor (see :mod:`g1core.models.processor`); otherwise ``AutoProcessor``.
    """
    source = _check_source(name_or_path)
    if ensure_processor_support() and AutoConfig.from_pretrained(source).model_type == QWEN_VL_MODEL_TYPE:
        processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(source)
    else:
        processor = AutoProcessor.from_pretrained(source)
    if budget is not None:
        apply_budget(processor, budget)
    return processor


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for, but no CUDA GPU is available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on a GPU that supports it, float32 otherwise; else one of ``DTYPES``."""
    if dtype == "auto":
        on_bf16_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_bf16_gpu else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_model(
    name_or_path: str | os.PathLike,
    dtype: str = "auto",
    device: str = "auto",
    attn_implementation: str | None = None,
    budget: PixelBudget | None = None,
):
    """``(model, processor)`` for an image-text-to-text model, in eval mode on ``device``.

    ``attn_implementation`` is passed through (e.g. ``"flash_attention_2"`` or ``"sdpa"`` on GPUs).
    """
    source = _check_source(name_or_path)
    torch_device = resolve_device(device)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, torch_device)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if torch_device.type == "cuda":
        kwargs["device_map"] = {"": str(torch_device)}  # load the weights straight onto the GPU
    model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    if torch_device.type != "cuda":
        model.to(torch_device)
    model.eval()
    processor = load_processor(source, budget)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("loaded %s: %s parameters, %s on %s", source, f"{n_params:,}", kwargs["dtype"], torch_device)
    return model, processor


def build_messages(prompt: str) -> list[dict]:
    """One user turn holding the screen (image first, as Qwen2.5-VL is trained) and the game prompt."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def render_prompt(processor, prompt: str) -> str:
    """The chat-formatted text of one prompt, ready for the assistant's reply (image placeholder once)."""
    return processor.apply_chat_template(build_messages(prompt), tokenize=False, add_generation_prompt=True)


def _pil(image: np.ndarray, index: int) -> Image.Image:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"images[{index}] must be an RGB uint8 array (H, W, 3), got {array.dtype} {array.shape}"
        )
    return Image.fromarray(array)


def build_inputs(
    processor,
    images: Sequence[np.ndarray],
    prompts: Sequence[str],
    answers: Sequence[str] | None = None,
) -> BatchFeature:
    """A left-padded batch of model inputs, one (screen, prompt) per row; never truncated.

    With ``answers`` (training), each row continues with its answer and the end-of-turn token, and
    ``labels`` hold those tokens only (``-100`` on padding, prompt and image tokens).
    """
    if len(images) != len(prompts) or not prompts:
        raise ValueError(
            f"need as many images as prompts (>= 1), got {len(images)} images, {len(prompts)} prompts"
        )
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"need one answer per prompt, got {len(answers)} answers for {len(prompts)} prompts")
    texts = [render_prompt(processor, prompt) for prompt in prompts]
    pil = [_pil(image, i) for i, image in enumerate(images)]
    batch = processor(text=texts, images=pil, padding=True, padding_side="left", return_tensors="pt")
    if answers is None:
        return batch
    tokenizer = processor.tokenizer
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    answer_ids = [ids + [end] for ids in tokenizer(list(answers), add_special_tokens=False)["input_ids"]]
    return _append_answers(batch, answer_ids, pad_id=tokenizer.pad_token_id)


def _append_answers(batch: BatchFeature, answer_ids: list[list[int]], pad_id: int) -> BatchFeature:
    """Append each row's answer after its (left-padded) prompt, re-pad on the left and add ``labels``."""
    input_ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    per_token = [key for key in PER_TOKEN_KEYS if key in batch]
    lengths = [int(m.sum()) + len(a) for m, a in zip(mask, answer_ids, strict=True)]
    width = max(lengths)
    fill = {key: (pad_id if key == "input_ids" else 0) for key in per_token}
    out = {key: torch.full((len(lengths), width), fill[key], dtype=batch[key].dtype) for key in per_token}
    labels = torch.full((len(lengths), width), IGNORE_INDEX, dtype=torch.long)
    for row, (answer, length) in enumerate(zip(answer_ids, lengths, strict=True)):
        answer_t = torch.tensor(answer, dtype=input_ids.dtype)
        tails = {"input_ids": answer_t, "attention_mask": torch.ones_like(answer_t)}  # other keys: zeros
        start = width - length
        for key in per_token:
            kept = batch[key][row][mask[row]]
            tail = tails.get(key, torch.zeros_like(answer_t))
            out[key][row, start:] = torch.cat([kept, tail.to(kept.dtype)])
        labels[row, width - len(answer) :] = answer_t
    data = {**batch, **out, "labels": labels}
    return BatchFeature(data=data, tensor_type="pt")


def count_image_tokens(processor, image_hw: tuple[int, int]) -> int:
    """How many image tokens a screen of ``(height, width)`` costs under the processor's pixel budget."""
    height, width = (int(v) for v in image_hw)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_hw must be positive (height, width), got {image_hw}")
    image_processor = processor.image_processor
    patches = image_processor.get_number_of_image_patches(height, width, {})
    return patches // image_processor.merge_size**2


def preflight(processor, image_hw: tuple[int, int], prompt: str, max_prompt_tokens: int) -> int:
    """The prompt's token count (image tokens included); ValueError when it exceeds ``max_prompt_tokens``.

    Run it before training or sampling: a prompt that does not fit would otherwise be cut, and a cut
    through the image tokens breaks the model's input.
    """
    text = render_prompt(processor, prompt)
    image_token = processor.image_token
    n_text = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"]) - text.count(image_token)
    n_image = count_image_tokens(processor, image_hw)
    total = n_text + n_image
    if total > max_prompt_tokens:
        budget = PixelBudget.of(processor)
        raise ValueError(
            f"prompt needs {total} tokens ({n_image} image tokens for a {image_hw[0]}x{image_hw[1]} screen "
            f"at max_pixels={budget.max_pixels}, {n_text} text tokens) but "
            f"max_prompt_tokens={max_prompt_tokens}; raise max_prompt_tokens or lower the pixel budget "
            "(image tokens must never be truncated)"
        )
    return total
