"""Qwen2.5-VL processing without torchvision.

transformers' ``Qwen2_5_VLProcessor`` always builds a video processor, and the video processors need
torchvision. Where torchvision is missing (it cannot be installed beside the CPU torch used here), we
use :class:`ImageOnlyQwen2_5_VLProcessor`: the same processor with no video slot, the slow PIL/numpy
image processor, and identical image handling. Where torchvision is present nothing changes.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import cache

from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin

log = logging.getLogger(__name__)

# model_type (config.json) whose processor the image-only one stands in for
QWEN_VL_MODEL_TYPE = "qwen2_5_vl"


def has_torchvision() -> bool:
    """True when torchvision is importable, i.e. transformers' own Qwen processors can be built."""
    return importlib.util.find_spec("torchvision") is not None


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor: images and text only.

    Image placeholders are expanded exactly as in the parent (one ``<|image_pad|>`` per merged patch);
    video inputs are not supported.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        if tokenizer is None:
            raise ValueError("ImageOnlyQwen2_5_VLProcessor needs a tokenizer")
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)


@cache
def ensure_processor_support() -> bool:
    """Make ``AutoProcessor`` able to build Qwen-VL processors here; True when a stand-in was registered.

    Only acts when torchvision is missing: then the Qwen2.5-VL config maps to the image-only processor
    (for model folders that do not name a processor class). With torchvision, the mapping is untouched.
    """
    if has_torchvision():
        return False
    AutoProcessor.register(Qwen2_5_VLConfig, ImageOnlyQwen2_5_VLProcessor, exist_ok=True)
    log.debug("torchvision missing: Qwen2.5-VL configs use ImageOnlyQwen2_5_VLProcessor")
    return True
