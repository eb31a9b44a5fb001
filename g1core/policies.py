"""Build any player from its config: random, oracle, a local Hugging Face model, or an endpoint.

Every policy answers ``replies(envs) -> list[str]``; model-backed ones also have ``try_replies`` (None
for a request that failed), which distillation uses so that a failed state is retried, not lost.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from . import storage
from .config import ModelConfig, PolicyConfig
from .gym.policies import OraclePolicy, Policy, RandomPolicy

log = logging.getLogger(__name__)


def work_dir() -> Path:
    """Local scratch folder for downloaded and built models (``G1_WORK_DIR``, default ./g1-work)."""
    path = Path(os.environ.get("G1_WORK_DIR", Path.cwd() / "g1-work")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_model(name_or_path: str, seed: int = 0) -> str:
    """A loadable model reference: 'tiny' is built offline (once), ``models:/<name>@<alias>`` (MLflow's
    registry) is the URI its version names, URIs are downloaded, ids pass through."""
    if name_or_path == "tiny":
        from .models.tiny import BUILD_VERSION, build_tiny_model

        out = work_dir() / "models" / f"tiny-v{BUILD_VERSION}-seed{seed}"
        if not (out / "config.json").is_file():
            log.info("building the tiny Qwen2.5-VL model in %s", out)
            build_tiny_model(out, seed=seed)
        return str(out)
    if name_or_path.startswith("models:/"):  # a registered version, by alias or number (its g1.model_uri)
        from .tracking import model_version_uri

        uri = model_version_uri(name_or_path)
        log.info("%s is %s", name_or_path, uri)
        return resolve_model(uri, seed)
    if "://" in name_or_path and not name_or_path.startswith("file://"):
        local = work_dir() / "models" / hashlib.sha256(name_or_path.encode()).hexdigest()[:16]
        if not (local / "config.json").is_file():
            log.info("downloading %s to %s", name_or_path, local)
            storage.get_dir(name_or_path, local)
        return str(local)
    return name_or_path.removeprefix("file://")


def build_policy(cfg: PolicyConfig, model: ModelConfig | None = None) -> Policy:
    """The policy a config describes. ``model: base`` in an hf policy means the pipeline's base model."""
    if cfg.kind == "random":
        policy: Policy = RandomPolicy(seed=cfg.seed)
    elif cfg.kind == "oracle":
        policy = OraclePolicy(skill=cfg.skill, seed=cfg.seed)
    elif cfg.kind == "hf":
        from .models.loading import PixelBudget
        from .models.policy import HFPolicy

        model = model or ModelConfig()
        ref = model.name_or_path if cfg.model == "base" else str(cfg.model)
        policy = HFPolicy(
            model_path=resolve_model(ref),
            budget=PixelBudget(model.pixels.min_pixels, model.pixels.max_pixels),
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            name=cfg.label,
            dtype=model.dtype,
            max_prompt_tokens=model.max_prompt_tokens,
        )
    else:
        from .teachers.openai_compat import OpenAICompatPolicy

        policy = OpenAICompatPolicy(
            model=str(cfg.model),
            base_url=str(cfg.base_url),
            api_key_env=cfg.api_key_env,
            temperature=cfg.temperature,
            max_tokens=cfg.max_new_tokens,
            concurrency=cfg.concurrency,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            price_input_per_mtok=cfg.price_input_per_mtok,
            price_output_per_mtok=cfg.price_output_per_mtok,
            extra_body={**({"top_p": cfg.top_p} if cfg.top_p != 1.0 else {}), **cfg.extra_body} or None,
            name=cfg.label,
        )
    policy.name = cfg.label
    return policy


def usage(policy: Policy) -> dict[str, float]:
    """What a player cost: requests, tokens and USD for endpoints, generation speed for local models."""
    if hasattr(policy, "usage"):
        return dict(policy.usage)
    if hasattr(policy, "stats"):
        return dict(policy.stats())
    return {}


def try_replies(policy: Policy, envs) -> list[str | None]:
    """Replies where a failed request is None (policies without requests never fail)."""
    fn = getattr(policy, "try_replies", None)
    return fn(envs) if fn is not None else policy.replies(envs)
