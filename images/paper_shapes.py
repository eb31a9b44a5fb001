"""The g1-paper preset at its own shapes, every stage in its container, on CPU (``make paper-shapes``).

    python images/paper_shapes.py [--keep-stack]

It runs the g1-paper config through distill, SFT, G0, G1 and evaluation with ``--containers`` and changes
only what cannot run here, listed in ``SWAPS``: the tiny model for Qwen2.5-VL-7B, the oracle for the teacher
API, the digits for CIFAR-10's photos, the step and sample counts, and no DeepSpeed (the g1-cpu image does
not carry it; ``make test`` covers its CPU path). It keeps the 840x640 screens, the pixel budget
(3136..537600 pixels), all four games in every stage, the 8,192-token prompt limit and the 8,192-token
answers of the teacher, GRPO and the evaluation players.

From each stage's MLflow child run it reads the image tokens per prompt and the longest prompt (SFT, G0 and
G1 log them when their model loads, the evaluation per player), and each stage's peak memory. It prints a
JSON object, then a line per stage, and writes both to ``out/paper-shapes.json``. Run it from the
repository root with the project's venv; the g1-cpu image comes from ``make images``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import podman_build  # noqa: E402 (beside this script)
from local_stack import local_stack  # noqa: E402

log = logging.getLogger("g1.images")
REPO_ROOT = podman_build.REPO_ROOT
GAMES = '["2048", shisen-sho, shisen-sho-cifar10, swap]'  # the paper's four; digits for CIFAR-10's photos
# What changes from configs/g1-paper.yaml, and why each must.
SWAPS = {
    "model.name_or_path=tiny": "no model hub here: the tiny Qwen2.5-VL (random weights) for the 7B",
    "distill.teacher={kind: oracle, name: teacher-oracle}": "no teacher API here: the oracle answers",
    "evaluate.policies.1={kind: oracle, name: teacher-oracle}": "the same swap for the teacher as a player",
    f"distill.gym.games={GAMES}": "CIFAR-10 cannot be downloaded here: the bundled digits as photos",
    f"grpo.gym.games={GAMES}": "the same",
    f"evaluate.games={GAMES}": "the same",
    "distill.states_per_game=4": "1,000 states per game cut to 4",
    "sft.heldout_per_game=1": "32 held-out states per game cut to 1 (4 states per game in all)",
    "sft.samples=16": "one optimizer step of the paper's 4 x 4 samples",
    "sft.deepspeed=null": "the g1-cpu image has no DeepSpeed (the GPU image does)",
    "grpo.deepspeed=null": "the same",
    "grpo.steps=1": "450 steps cut to 1",
    "grpo.states_per_step=2": "128 states per step cut to 2 (x 5 answers each)",
    "evaluate.runs=1": "10 runs cut to 1",
    "evaluate.steps=1": "100 steps cut to 1",
}
STAGES = ("distill", "sft", "g0", "g1", "evaluate", "promote")


def run_dag(env: dict[str, str], work: Path, images_file: Path) -> str:
    """Run the DAG; returns its pipeline run id (read from the URI the run prints last)."""
    cmd = [sys.executable, "-m", "g1core.cli", "pipeline", "run", "--local", "--containers"]
    cmd += ["--config", "g1-paper", "--work-dir", str(work), "--images-file", str(images_file)]
    for item in SWAPS:
        cmd += ["--set", item]
    log.info("running: %s", " ".join(cmd))
    last = ""
    with subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:  # the run's log, passed through; its last line is the report's URI
            sys.stdout.write(line)
            last = line.strip() or last
    if proc.returncode != 0:
        raise RuntimeError(f"the g1-paper DAG failed (exit {proc.returncode}); its log is above")
    return last.rstrip("/").split("/")[-2]  # <artifact root>/<name>/<pipeline run id>/evaluate


def stage_figures(tracking_uri: str, pipeline_run_id: str) -> dict[str, dict[str, float]]:
    """Per stage: its MLflow status, image tokens per prompt, longest prompt, peak memory."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("g1-paper")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`g1.pipeline_run_id` = '{pipeline_run_id}'"
    )
    out: dict[str, dict] = {}
    for run in runs:
        stage = run.data.tags.get("g1.stage")
        if not stage:
            continue
        m = run.data.metrics
        row: dict = {"status": run.info.status, "peak_host_gib": round(m.get("memory/peak_host_gib", -1), 2)}
        if "tokens/image_per_prompt" in m:
            row["image_tokens_per_prompt"] = int(m["tokens/image_per_prompt"])
            row["prompt_tokens_max"] = int(m["tokens/prompt_max"])
            row["answer_tokens_max"] = int(m["tokens/answer_max"])
        players = {k.split("/")[0]: None for k in m if k.endswith("/usage/image_tokens_max")}
        for player in players:
            row[f"{player}: image_tokens_per_prompt"] = int(m[f"{player}/usage/image_tokens_max"])
            row[f"{player}: prompt_tokens_max"] = int(m.get(f"{player}/usage/prompt_tokens_max", 0))
            row[f"{player}: generated_tokens"] = int(m.get(f"{player}/usage/generated_tokens", 0))
        out[stage] = row
    return {s: out[s] for s in STAGES if s in out}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", default=str(REPO_ROOT / "out" / "paper-shapes.json"), help="the figures")
    args = parser.parse_args(argv)
    spec = yaml.safe_load((REPO_ROOT / "images" / "images.yaml").read_text())["images"]["g1-cpu"]
    tag = podman_build.build("g1-cpu", spec)
    with local_stack(tag, "g1-paper-shapes-") as run:
        started = time.perf_counter()
        run_id = run_dag(run.env, run.folder / "work", run.images_file)
        seconds = round(time.perf_counter() - started, 1)
        figures = stage_figures(run.mlflow_url, run_id)
    out = {"image": tag, "pipeline_run_id": run_id, "wall_s": seconds, "swaps": SWAPS, "stages": figures}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    sys.stdout.write(json.dumps(out) + "\n")
    for stage, row in figures.items():
        sys.stdout.write(f"{stage}: " + ", ".join(f"{k} {v}" for k, v in row.items()) + "\n")
    missing = [s for s in STAGES if figures.get(s, {}).get("status") != "FINISHED"]
    if missing:
        sys.stdout.write(f"stages not FINISHED in MLflow: {', '.join(missing)}\n")
        return 1
    sys.stdout.write(
        f"g1-paper at its own shapes ran every stage in {tag} in {seconds} s; figures in {args.out}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
