"""A tiny Qwen2.5-VL built offline: the default model wherever the model hub cannot be reached.

It has the real architecture (``Qwen2_5_VLForConditionalGeneration``: 14-pixel patches, 2x2 spatial
merge, temporal patch 2, multimodal RoPE), random weights (~0.8M parameters), a byte-level BPE tokenizer
trained here on the games' own text (prompts, boards, oracle replies) so boards tokenize compactly, the
Qwen special tokens and chat format, and a pixel budget that keeps the small game screens exact (a 112x112
screen is 8x8 patches = 16 image tokens). The same seed gives byte-identical files. Everything loads with
``AutoProcessor`` / ``AutoModelForImageTextToText`` or :func:`g1core.models.loading.load_model`.

    g1 model tiny --out models/tiny --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .budget import TINY_BUDGET, PixelBudget

log = logging.getLogger(__name__)

# Qwen2.5-VL's special tokens in Qwen's order; they follow the trained vocabulary, as in Qwen.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen's chat layout: a default system turn, then "<|im_start|>role\n...<|im_end|>\n" per turn; an image
# part becomes <|vision_start|><|image_pad|><|vision_end|> (the processor expands the pad per patch).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH = 14, 2, 2  # as in Qwen2.5-VL
MAX_POSITIONS = 32768  # room for the paper preset's 8,192-token prompt plus its 8,192-token answer
BUILD_INFO = "g1_tiny_build.json"


def cell_names() -> tuple[str, ...]:
    """Every multi-word name a board cell can have in the games' text ('Steel blue triangle'), longest
    first."""
    from g1core import gym

    names = set()
    for game in gym.GAMES:
        tiles = getattr(gym.make(game, render_mode=None).unwrapped, "tiles", None)
        names.update(n for n in getattr(tiles, "names", ()) if " " in n)
    return tuple(sorted(names, key=lambda n: (-len(n), n)))


def game_corpus(seeds: int = 6, moves: int = 8) -> Iterator[str]:
    """Text the tiny tokenizer learns from: chat scaffolding, every game's prompt, every cell name as it
    appears in a board (after a separator and at a row's start), and oracle replies (boards in the exact
    text format, reasons, answers) along short episodes from ``range(seeds)``."""
    from g1core import gym
    from g1core.gym.policies import OraclePolicy

    yield f"system\n{DEFAULT_SYSTEM}\nuser\nassistant\n"
    yield " | ".join(str(2**k) for k in range(1, 18))  # every 2048 tile, so each becomes one token
    names = cell_names()
    yield " " + " | ".join(names)  # each cell name becomes one token, after a space ...
    yield "\n".join(names)  # ... and at a row's start
    for game in gym.GAMES:
        env = gym.make(game, render_mode=None)
        yield env.prompt
        policy = OraclePolicy(skill=0.5, seed=0)  # random moves mixed in: more varied boards
        for seed in range(seeds):
            env.reset(seed=seed)
            for _ in range(moves):
                reply = policy.replies([env])[0]
                yield reply
                if env.step(env.parse_action(reply))[2]:
                    break


# Qwen2's pre-tokenizer split, except that a number stays whole with its leading space (Qwen splits digits
# one by one) and so does a multi-word cell name (' Steel blue triangle'). A 2048 cell then reads as one
# token (" 1024") like a Shisen-Sho or Swap cell, so every cell of a board is the same few tokens and a
# cell's place in the reply does not depend on the board; with one token per digit or per word the tiny
# model has to learn variable-length cells and reads boards far more slowly (measured: see BUILD_VERSION).
QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def split_regex(names: Iterator[str] | tuple[str, ...] = ()) -> str:
    """The pre-tokenizer's split pattern: each of ``names`` whole (with an optional leading space), then
    numbers whole, then Qwen2's rules."""
    words = "|".join(re.escape(n) for n in names)
    return (f" ?(?:{words})|" if words else "") + QWEN_SPLIT_REGEX


def train_tokenizer(texts: Iterator[str], vocab_size: int, names: tuple[str, ...] = ()):
    """A byte-level BPE in Qwen2's layout (NFC, split regex, byte-level bytes) trained on ``texts``, with
    the Qwen special tokens appended after the learned vocabulary; numbers and ``names`` stay whole
    (``split_regex``), so BPE learns each as one token when the vocabulary has room."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_regex(names)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


ROPE_THETA = 10.0  # see tiny_config: small heads need high rotary frequencies to tell cells apart
BUILD_VERSION = 5  # bump when the tiny model's recipe changes, so cached builds are not reused


def _mrope_section(head_dim: int) -> list[int]:
    """Rotary dims for (time, height, width): Qwen's 1/4, 3/8, 3/8 split of head_dim / 2."""
    half = head_dim // 2
    side = (half - half // 4) // 2
    return [half - 2 * side, side, side]


def tiny_config(
    token_ids: dict[str, int],
    vocab_size: int,
    text_hidden: int,
    text_layers: int,
    text_heads: int,
    text_kv_heads: int,
    vision_hidden: int,
    vision_depth: int,
    vision_heads: int,
):
    """The ``Qwen2_5_VLConfig`` of the tiny model; special-token ids come from its tokenizer."""
    from transformers import Qwen2_5_VLConfig

    checks = {
        "text_hidden must be a multiple of 2 * text_heads": text_hidden % (2 * text_heads) == 0,
        "text_heads must be a multiple of text_kv_heads": text_heads % text_kv_heads == 0,
        "vision_hidden must be a multiple of 4 * vision_heads": vision_hidden % (4 * vision_heads) == 0,
        "every size must be >= 1": min(text_layers, vision_depth, text_heads, text_kv_heads, vision_heads)
        >= 1,
    }
    for what, ok in checks.items():
        if not ok:
            raise ValueError(
                f"tiny model: {what} (text_hidden={text_hidden}, text_heads={text_heads}, text_kv_heads="
                f"{text_kv_heads}, vision_hidden={vision_hidden}, vision_heads={vision_heads})"
            )
    eot, im_end = token_ids["<|endoftext|>"], token_ids["<|im_end|>"]
    text = {
        "vocab_size": vocab_size,
        "hidden_size": text_hidden,
        "intermediate_size": 2 * text_hidden,
        "num_hidden_layers": text_layers,
        "num_attention_heads": text_heads,
        "num_key_value_heads": text_kv_heads,
        "max_position_embeddings": MAX_POSITIONS,
        "rope_parameters": {
            "rope_type": "default",
            # Qwen's 1e6 leaves a 32-wide head with rotary frequencies so low (columns ~1e-4 rad/step)
            # that the text model cannot tell the image tokens' rows and columns apart, and never learns
            # to read a board; at 10 the 4x4 / 6x6 / 8x8 grids separate (measured: 2048 boards go from
            # 0 % to ~40 % exact within 8.5 min of CPU SFT, and a one-token-per-cell target to 100 %).
            "rope_theta": ROPE_THETA,
            "mrope_section": _mrope_section(text_hidden // text_heads),
        },
        "bos_token_id": eot,
        "eos_token_id": im_end,
        "pad_token_id": eot,
        "tie_word_embeddings": False,
    }
    vision = {
        "depth": vision_depth,
        "hidden_size": vision_hidden,
        "intermediate_size": 2 * vision_hidden,
        "num_heads": vision_heads,
        "out_hidden_size": text_hidden,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH,
        "window_size": 4 * PATCH_SIZE * MERGE_SIZE,  # 4x4 merged tokens per attention window
        "fullatt_block_indexes": [vision_depth - 1],  # last block attends globally, as in Qwen
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _save_processor(out: Path, tokenizer_object, budget: PixelBudget) -> None:
    """Tokenizer, image processor and chat template, saved the way ``AutoProcessor`` reads them anywhere.

    No processor class is named, so ``AutoProcessor`` picks the standard one for the config (the image-only
    stand-in without torchvision); the nested video-processor entry is there for the standard one.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .processor import ImageOnlyQwen2_5_VLProcessor

    # The generic fast tokenizer keeps the trained pre-tokenizer; Qwen2Tokenizer puts Qwen's back on load.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=MAX_POSITIONS,
    )
    sizes = {"patch_size": PATCH_SIZE, "temporal_patch_size": TEMPORAL_PATCH, "merge_size": MERGE_SIZE}
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=budget.min_pixels, max_pixels=budget.max_pixels, **sizes
    )
    processor = ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    size = {"shortest_edge": budget.min_pixels, "longest_edge": budget.max_pixels}
    video = {"video_processor_type": "Qwen2VLVideoProcessor", "size": size, **sizes}
    _edit_json(out / "processor_config.json", drop="processor_class", add={"video_processor": video})
    _edit_json(out / "tokenizer_config.json", drop="processor_class")


def _edit_json(path: Path, drop: str, add: dict | None = None) -> None:
    data = json.loads(path.read_text())
    data.pop(drop, None)
    data.update(add or {})
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    text_hidden: int = 128,
    text_layers: int = 2,
    vision_hidden: int = 64,
    vision_depth: int = 2,
    text_heads: int = 4,
    text_kv_heads: int = 2,
    vision_heads: int = 4,
    vocab_size: int = 2048,
    budget: PixelBudget = TINY_BUDGET,
    corpus_seeds: int = 6,
    overwrite: bool = False,
) -> Path:
    """Build the tiny Qwen2.5-VL into ``out_dir`` (created; must be empty unless ``overwrite``).

    ``vocab_size`` caps the learned vocabulary (the game text may need fewer); the embedding is rounded up
    to a multiple of 64. Files are written to a temporary folder next to ``out_dir`` and moved into place
    at the end, so a failed build leaves nothing half-written.
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"tiny model: out_dir {str(out)!r} exists and is not empty (use overwrite)")
    started = time.perf_counter()
    tokenizer = train_tokenizer(game_corpus(corpus_seeds), vocab_size - len(SPECIAL_TOKENS), cell_names())
    token_ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    padded_vocab = -(-tokenizer.get_vocab_size() // 64) * 64
    config = tiny_config(
        token_ids, padded_vocab, text_hidden, text_layers, text_heads, text_kv_heads,
        vision_hidden, vision_depth, vision_heads,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    eot, im_end = token_ids["<|endoftext|>"], token_ids["<|im_end|>"]
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot)
    n_params = sum(p.numel() for p in model.parameters())

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the model folder is meant to be shared
        model.save_pretrained(staging)
        _save_processor(staging, tokenizer, budget)
        info = {
            "builder": "g1core.models.tiny.build_tiny_model",
            "seed": seed,
            "parameters": n_params,
            "vocab": tokenizer.get_vocab_size(),
            "pixel_budget": {"min_pixels": budget.min_pixels, "max_pixels": budget.max_pixels},
        }
        (staging / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    log.info(
        "built tiny Qwen2.5-VL in %s: %s parameters, vocab %d, %.1f s",
        out, f"{n_params:,}", tokenizer.get_vocab_size(), time.perf_counter() - started,
    )  # fmt: skip
    return out


def cmd_model_tiny(args: argparse.Namespace) -> int:
    """``g1 model tiny``: build the tiny model and print its folder."""
    out = build_tiny_model(args.out, seed=args.seed, overwrite=args.overwrite)
    sys.stdout.write(f"{out}\n")
    return 0


def register_cli(subparsers) -> None:
    """Add ``model`` (with ``tiny``) to the ``g1`` command's subparsers."""
    model = subparsers.add_parser("model", help="vision-language models: build the offline tiny model")
    commands = model.add_subparsers(dest="model_command", required=True)
    tiny = commands.add_parser(
        "tiny", help="build the tiny random-weight Qwen2.5-VL (offline, deterministic)"
    )
    tiny.add_argument("--out", required=True, help="folder to create (must be empty or absent)")
    tiny.add_argument("--seed", type=int, default=0, help="weight seed; the same seed gives identical files")
    tiny.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    tiny.set_defaults(fn=cmd_model_tiny)
