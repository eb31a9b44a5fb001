"""Teacher distillation: the perception-enhanced cold-start data set (G1 spec section 6).

For each game, sample states as RL does (reset + random warm-up, reproducible from the seed), ask the
teacher for K answers per state, replace each answer's ``<perception>`` block with the exact board text,
score the result from the state, and keep it when it passes the filter (default: well formed and legal).

Output, under one URI (local folder or s3://):
    images/<sha256>.png      the screens, content-addressed
    shards/<n>.jsonl         append-only progress: one shard per batch of states, written whole
    manifest.jsonl           every kept sample (written at the end from the shards)
    stats.json               acceptance statistics per game

A crash loses at most the batch in flight: on restart the finished states (kept or not) are read back
from the shards and skipped. A state whose teacher request failed is not finished, so it is asked again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .. import storage
from ..config import PipelineConfig
from ..errors import G1Error
from ..gym import answer, make
from ..gym.base import GridGameEnv
from ..gym.pool import EnvPool, GameSpec, SampledState, state_seed
from ..policies import build_policy, try_replies, usage

log = logging.getLogger(__name__)


class DistillError(G1Error):
    """The data set could not be completed or extended as asked; what was done so far is kept."""


@dataclass
class GameStats:
    states: int = 0  # finished states (kept or not)
    answers: int = 0
    kept: int = 0
    failed_requests: int = 0  # states whose teacher call failed (asked again on the next run)
    well_formed: int = 0
    legal: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["acceptance_rate"] = self.kept / self.answers if self.answers else 0.0
        d["kept_per_s"] = self.kept / self.seconds if self.seconds else 0.0
        return d


@dataclass
class DistillResult:
    uri: str
    stats: dict[str, GameStats] = field(default_factory=dict)
    samples: int = 0
    resumed_states: int = 0
    summary: dict = field(default_factory=dict)


def state_key(spec: GameSpec, seed: int) -> str:
    return f"{spec}/{seed}"


def png_bytes(image: np.ndarray, compress_level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _read_shards(uri: str) -> list[dict]:
    records = []
    for shard in sorted(storage.list_uris(storage.join(uri, "shards"))):
        if shard.endswith(".jsonl"):
            records += [json.loads(line) for line in storage.read_bytes(shard).decode().splitlines() if line]
    return records


class Distiller:
    """One distillation run into ``output_uri``; call ``run()``."""

    def __init__(self, cfg: PipelineConfig, output_uri: str, progress: bool = True):
        self.cfg = cfg
        self.d = cfg.distill
        self.uri = output_uri
        self.progress = progress
        self.teacher = build_policy(self.d.teacher, cfg.model)
        g = self.d.gym
        self.pool = EnvPool(g.games, screen_size=g.screen_size, warmup=g.warmup, warmup_draw=g.warmup_draw)
        self._envs: dict[GameSpec, list[GridGameEnv]] = defaultdict(list)
        self._stored_images: set[str] = set()

    # ---- helpers -----------------------------------------------------------------------------
    def _env_for(self, spec: GameSpec, slot: int) -> GridGameEnv:
        envs = self._envs[spec]
        while len(envs) <= slot:
            envs.append(make(spec.game, screen_size=self.d.gym.screen_size, **spec.knobs))
        return envs[slot]

    def _store_image(self, image: np.ndarray) -> tuple[str, str]:
        data = png_bytes(image, self.d.png_compress_level)
        digest = hashlib.sha256(data).hexdigest()
        rel = f"images/{digest}.png"
        if digest not in self._stored_images:
            storage.write_bytes(storage.join(self.uri, rel), data)
            self._stored_images.add(digest)
        return rel, digest

    def _keep(self, scored) -> bool:
        checks = {
            "well_formed": scored.parts.get("format", 0.0) > 0,
            "legal": scored.legal,
            "merged": scored.parts.get("game", -1.0) > 0,
        }
        return all(checks[name] for name in self.d.keep_if)

    # ---- the run -------------------------------------------------------------------------------
    def plan(self) -> list[list[tuple[GameSpec, int]]]:
        """Every (spec, state seed) of the data set, in fixed batches.

        Batches are cut from the whole plan, not from what is left to do, so a resumed run shows the
        teacher the same batches as an uninterrupted one (a model teacher seeds each batch from it).
        """
        states = [
            (spec, state_seed(self.d.seed, i, str(spec)))
            for spec in self.pool.specs
            for i in range(self.d.states_per_game)
        ]
        return [states[i : i + self.d.batch_size] for i in range(0, len(states), self.d.batch_size)]

    def fingerprint(self) -> dict:
        """What decides the content of the data set (not its size): a resume must match it."""
        d = self.d
        return {
            "games": [str(s) for s in self.pool.specs],
            "screen_size": list(d.gym.screen_size),
            "warmup": self.pool.warmup,
            "warmup_draw": self.pool.warmup_draw,
            "seed": d.seed,
            "answers_per_state": d.answers_per_state,
            "keep_if": list(d.keep_if),
            "teacher": d.teacher.model_dump(mode="json"),
            "model": self.cfg.model.name_or_path if d.teacher.kind == "hf" else None,
        }

    def _check_resume(self) -> None:
        path = storage.join(self.uri, "dataset.json")
        mine = self.fingerprint()
        if storage.exists(path):
            theirs = json.loads(storage.read_bytes(path))
            if theirs != mine:
                diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise DistillError(
                    f"{self.uri} holds a data set made with other settings ({', '.join(diff)}); "
                    "resume with the same config or write to another output"
                )
        else:
            storage.write_bytes(path, json.dumps(mine, indent=2).encode())

    def run(self) -> DistillResult:
        self._check_resume()
        previous = _read_shards(self.uri)
        finished = {r["key"] for r in previous if r["type"] == "state"}
        self._stored_images = {r["image_sha256"] for r in previous if r["type"] == "sample"}
        shard_no = len({r["shard"] for r in previous if "shard" in r})
        if finished:
            log.info("resuming %s: %d states already finished", self.uri, len(finished))
        stats: dict[str, GameStats] = defaultdict(GameStats)
        plan = self.plan()
        bar = tqdm(total=sum(map(len, plan)), desc="distill", unit="state", disable=not self.progress)
        bar.update(len(finished))
        for planned in plan:
            todo = [(spec, seed) for spec, seed in planned if state_key(spec, seed) not in finished]
            if not todo:
                continue
            t0 = time.perf_counter()
            batch = [self.pool.sample_state(spec, seed) for spec, seed in todo]
            records = self._distill_batch(batch, stats, shard_no)
            if records:
                shard = storage.join(self.uri, "shards", f"{shard_no:06d}.jsonl")
                storage.write_bytes(shard, "".join(json.dumps(r) + "\n" for r in records).encode())
                shard_no += 1
            elapsed = time.perf_counter() - t0
            for s in batch:
                stats[str(s.spec)].seconds += elapsed / len(batch)
            bar.update(len(batch))
        bar.close()
        result = self._finish(stats, len(finished))
        unfinished = sum(g["remaining"] for g in result.summary["games"].values())
        total = sum(map(len, plan))
        if unfinished > self.d.allow_unfinished * total:
            raise DistillError(
                f"{unfinished} of {total} states got no teacher answer (see the log); the data set so far is "
                f"kept in {self.uri}: run again with the same output to ask for them again"
            )
        return result

    def _distill_batch(
        self, batch: list[SampledState], stats: dict[str, GameStats], shard_no: int
    ) -> list[dict]:
        k = self.d.answers_per_state
        envs = []
        slots: dict[GameSpec, int] = defaultdict(int)
        for s in batch:
            env = self._env_for(s.spec, slots[s.spec])
            slots[s.spec] += 1
            env.set_state(s.state)
            envs += [env] * k
        replies = try_replies(self.teacher, envs)
        records = []
        for i, s in enumerate(batch):
            game = stats[str(s.spec)]
            answers = replies[i * k : (i + 1) * k]
            if any(a is None for a in answers):
                game.failed_requests += 1
                log.warning(
                    "teacher failed on %s; it will be asked again next run", state_key(s.spec, s.seed)
                )
                continue
            enhanced = [answer.with_perception(a, s.text) for a in answers]
            group = self.pool.score_group(s, enhanced)
            kept = 0
            image_rel = digest = None
            for j, (original, reply, scored) in enumerate(zip(answers, enhanced, group.scores, strict=True)):
                game.answers += 1
                game.well_formed += scored.parts.get("format", 0.0) > 0
                game.legal += scored.legal
                if not self._keep(scored):
                    continue
                if image_rel is None:
                    image_rel, digest = self._store_image(s.image)
                kept += 1
                records.append(
                    self._sample_record(s, j, original, reply, scored, image_rel, digest, shard_no)
                )
            game.states += 1
            game.kept += kept
            records.append(
                {
                    "type": "state",
                    "key": state_key(s.spec, s.seed),
                    "game": s.spec.game,
                    "spec": str(s.spec),
                    "answers": k,
                    "kept": kept,
                    "shard": shard_no,
                }
            )
        return records

    def _sample_record(
        self, s: SampledState, j: int, original: str, reply: str, scored, image_rel, digest, shard_no: int
    ) -> dict:
        env = self.pool.scratch(s.spec)
        return {
            "type": "sample",
            "id": f"{state_key(s.spec, s.seed)}/{j}",
            "game": s.spec.game,
            "spec": str(s.spec),
            "difficulty": env.difficulty,
            "seed": s.seed,
            "image": image_rel,
            "image_sha256": digest,
            "image_size": list(s.image.shape[:2]),
            "prompt": s.prompt,
            "prompt_version": env.prompt_version,
            "text_observation": s.text,
            "teacher": self.teacher.name,
            "teacher_answer": original,
            "answer": reply,
            "rewards": {**scored.parts, "total": scored.reward},
            "legal": scored.legal,
            "shard": shard_no,
        }

    def _finish(self, stats: dict[str, GameStats], resumed: int) -> DistillResult:
        records = _read_shards(self.uri)
        samples = [r for r in records if r["type"] == "sample"]
        totals: dict[str, dict] = {str(s): {"states": 0, "answers": 0, "kept": 0} for s in self.pool.specs}
        for r in records:  # over every run that wrote into this data set
            if r["type"] == "state":
                t = totals[r.get("spec", r["game"])]
                t["states"] += 1
                t["answers"] += r["answers"]
                t["kept"] += r["kept"]
        games = {}
        for spec, t in totals.items():
            games[spec] = {
                **t,
                "acceptance_rate": t["kept"] / t["answers"] if t["answers"] else 0.0,
                "remaining": self.d.states_per_game - t["states"],
            }
            if spec in stats:
                games[spec]["this_run"] = stats[spec].to_dict()
        storage.write_bytes(
            storage.join(self.uri, "manifest.jsonl"),
            "".join(
                json.dumps({k: v for k, v in r.items() if k not in ("type", "shard")}) + "\n" for r in samples
            ).encode(),
        )
        summary = {
            "teacher": self.teacher.name,
            "samples": len(samples),
            "games": games,
            "usage": usage(self.teacher),
        }
        storage.write_bytes(storage.join(self.uri, "stats.json"), json.dumps(summary, indent=2).encode())
        log.info("distilled %d samples into %s", len(samples), self.uri)
        return DistillResult(self.uri, dict(stats), len(samples), resumed, summary)


def run(cfg: PipelineConfig, output_uri: str, progress: bool = True) -> DistillResult:
    """Distil ``cfg.distill`` into ``output_uri`` (resuming whatever is already there)."""
    return Distiller(cfg, output_uri, progress).run()


def metrics(result: DistillResult) -> dict[str, float]:
    """Flat numbers for MLflow: per game totals and acceptance, and this run's throughput."""
    from ..tracking import metric_key

    out: dict[str, float] = {"samples": float(result.samples)}
    for key, value in (result.summary.get("usage") or {}).items():
        out[f"teacher.{key}"] = float(value)
    for spec, g in result.summary.get("games", {}).items():
        for key in ("states", "answers", "kept", "acceptance_rate", "remaining"):
            out[metric_key(f"{spec}.{key}")] = float(g[key])
        for key, value in g.get("this_run", {}).items():
            out[metric_key(f"{spec}.run.{key}")] = float(value)
    return out


def load_manifest(uri: str) -> list[dict]:
    """The kept samples of a distilled data set."""
    return [
        json.loads(line)
        for line in storage.read_bytes(storage.join(uri, "manifest.jsonl")).decode().splitlines()
        if line
    ]
