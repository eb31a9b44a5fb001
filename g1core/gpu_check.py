"""``g1 gpu-check`` (``make gpu-check``): one command that runs the training stages' GPU paths, tiny model.

Written for a single GPU machine without network (the one the project is lent to check its GPU paths, or a
node of the user's cluster in the g1-gpu image), and runnable on a CPU-only machine in its no-GPU mode. In a
few minutes it:

- records the versions of the libraries the GPU paths use and the ``nvidia-smi`` line of the GPU;
- builds the tiny model and a small distilled data set (oracle teacher, 2048 at 112x112);
- runs SFT and GRPO each in three set-ups: plain (Hugging Face generate), DeepSpeed ZeRO-2 on one process,
  DeepSpeed ZeRO-3 on one process; bf16 on a GPU that has it. Every run is stopped after its first
  checkpoint, started again (it must resume from that checkpoint), and finishes by saving the final model,
  whose dtype is recorded;
- runs one GRPO step with vLLM colocated where vllm imports and a GPU is there, and says why not elsewhere;
- times the plain GRPO step on the GPU against the same step on the CPU (a subprocess without CUDA);
- writes everything to ``<out>/gpu-check.json`` and ends with a table; the exit code is 1 if any run failed.

Every run goes through the stages' own code (``g1core.stages.sft``, ``g1core.stages.grpo``), in one process,
one after the other, as ``g1 bench grpo`` runs its two branches.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from . import envvars

log = logging.getLogger(__name__)

SETUPS = {"plain": None, "zero2": "zero2", "zero3": "zero3"}  # set-up name -> the stages' deepspeed field
LIBRARIES = (
    "torch", "transformers", "accelerate", "trl", "deepspeed", "peft", "vllm", "datasets", "pyarrow",
    "tokenizers",
)  # fmt: skip
SCREEN = 112
SFT = {  # 8 samples in batches of 4: 2 optimizer steps, a checkpoint after each
    "samples": 8, "batch_size": 4, "learning_rate": 1e-4, "heldout_per_game": 2, "eval_every": 0,
    "eval_max_new_tokens": 8, "checkpoint_every": 1, "log_every": 1,
}  # fmt: skip
GRPO = {  # 2 states x 2 answers per step, one forward pass of 4: 2 RL steps, a checkpoint after each
    "gym": {"games": ["2048"], "screen_size": [SCREEN, SCREEN]}, "steps": 2, "states_per_step": 2,
    "num_generations": 2, "batch_size": 4, "max_new_tokens": 32, "learning_rate": 1e-5, "checkpoint_every": 1,
    "use_vllm": "off",
}  # fmt: skip
PIXELS = {"min_pixels": 56 * 56, "max_pixels": SCREEN * SCREEN}


class _Stop(Exception):
    """Stops a run after its first step, as a killed pod would."""


def versions() -> dict[str, str]:
    """Python and every library the GPU paths use ('not installed' where absent), CUDA as torch sees it."""
    import torch

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["torch_cuda"] = str(torch.version.cuda)
    out["cuda_available"] = str(torch.cuda.is_available())
    return out


def nvidia_smi() -> str:
    """The GPU's line: name, driver, memory ('' without a GPU or nvidia-smi)."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _saved_dtype(model_uri: str) -> str:
    from safetensors import safe_open

    from . import storage

    path = storage.local_path(model_uri)
    with safe_open(str(next(path.glob("*.safetensors"))), "pt") as f:
        return str(f.get_tensor(next(iter(f.keys()))).dtype).removeprefix("torch.")


def _stop_then_resume(make_run, finish) -> dict[str, Any]:
    """Run until the first step's metrics, stop there, then run again to the end; the resumed result."""
    run = make_run()

    def stop_after_first_step(metrics: dict, step: int) -> None:
        if step >= 2:
            raise _Stop(step)

    run.emit = stop_after_first_step
    try:
        run.run()
    except _Stop:
        pass
    else:
        raise RuntimeError("the run finished before it could be stopped after its first step")
    t0 = time.perf_counter()
    result = finish()
    out = {
        "resumed_from_step": result.resumed_from_step,
        "steps": result.steps,
        "resume_and_finish_s": round(time.perf_counter() - t0, 2),
        "final_model_dtype": _saved_dtype(result.model_uri),
    }
    if result.resumed_from_step != 1 or result.steps != 2:
        raise RuntimeError(f"expected a resume from step 1 to step 2, got {out}")
    return out


def check_sft(root: Path, data: str, deepspeed: str | None) -> dict[str, Any]:
    from .stages import sft

    cfg = sft.SftRunConfig.model_validate(
        {"model": {"pixels": PIXELS}, "sft": {**SFT, "deepspeed": deepspeed}}
    )
    out, work = str(root / "out"), root / "work"
    return _stop_then_resume(
        lambda: sft.SftRun(cfg, data, out, progress=False, work_dir=work),
        lambda: sft.run(cfg, data, out, progress=False, work_dir=work),
    )


def _grpo_cfg(deepspeed: str | None = None, **fields):
    from .stages import grpo

    settings = {**GRPO, "deepspeed": deepspeed, **fields}
    return grpo.GrpoRunConfig.model_validate({"model": {"pixels": PIXELS}, "grpo": settings})


def check_grpo(root: Path, deepspeed: str | None) -> dict[str, Any]:
    from .stages import grpo

    cfg, out, work = _grpo_cfg(deepspeed), str(root / "out"), root / "work"
    result = _stop_then_resume(
        lambda: grpo.GrpoRun(cfg, out, progress=False, work_dir=work),
        lambda: grpo.run(cfg, out, progress=False, work_dir=work),
    )
    return {**result, **_step_times(grpo.run(cfg, str(root / "timed"), progress=False, work_dir=work))}


def _step_times(result) -> dict[str, float]:
    """The last step's wall time (the first also compiles and warms up) and its split."""
    last = result.history[-1]
    return {f"{part}_s": round(last[f"time/{part}"], 3) for part in ("step", "generation", "update")}


def check_vllm(root: Path) -> dict[str, Any]:
    """One GRPO step with vLLM colocated, where it can run."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no GPU"}
    if importlib.util.find_spec("vllm") is None:
        return {
            "skipped": "vllm is not installed (pip install 'g1[gpu]', or run this check in the g1-gpu image)"
        }
    from .stages import grpo

    cfg = _grpo_cfg(use_vllm="on", steps=1, vllm_gpu_memory_utilization=0.3, vllm_sleep_mode=True)
    result = grpo.run(cfg, str(root / "out"), progress=False, work_dir=root / "work")
    return {"steps": result.steps, **_step_times(result)}


def cpu_grpo_step(root: Path) -> dict[str, Any]:
    """The plain GRPO step on the CPU, in a subprocess that sees no GPU."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", __name__, "--cpu-step", str(root)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"the CPU step failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _attempt(results: dict, name: str, fn) -> None:
    log.info("gpu-check: %s", name)
    t0 = time.perf_counter()
    try:
        results[name] = {"ok": True, **fn()}
    except Exception as err:  # one failing path must not hide the others: it is reported, the check fails
        log.error("gpu-check: %s failed: %s", name, err)
        results[name] = {
            "ok": False,
            "error": f"{type(err).__name__}: {err}",
            "trace": traceback.format_exc(),
        }
    results[name]["wall_s"] = round(time.perf_counter() - t0, 1)


def run_check(out: Path, work: Path, setups: list[str] | None = None) -> dict[str, Any]:
    """Every check, into ``out/gpu-check.json``; returns what it wrote. The tiny model and the data set are
    kept in ``work`` for a later check; the runs start afresh each time."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "runs", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    with envvars.set_for_block({"G1_WORK_DIR": str(work)}):  # the tiny model is built there
        return _run_checks(out, work, setups)


def _run_checks(out: Path, work: Path, setups: list[str] | None) -> dict[str, Any]:
    import torch

    from .config import load_config
    from .policies import resolve_model
    from .stages import distill

    runs = work / "runs"
    gpu = torch.cuda.is_available()
    report: dict[str, Any] = {"mode": "gpu" if gpu else "cpu (no GPU: fp32, no vLLM)", "versions": versions()}
    report["nvidia_smi"] = nvidia_smi()
    report["bf16"] = gpu and torch.cuda.is_bf16_supported()
    log.info("gpu-check: %s; %s", report["nvidia_smi"] or "no GPU", report["versions"])
    t0 = time.perf_counter()
    resolve_model("tiny")
    data = str(work / "data")
    overrides = ["distill.gym.games=[2048]", f"distill.gym.screen_size=[{SCREEN},{SCREEN}]"]
    overrides += ["distill.states_per_game=12", "distill.teacher.skill=1.0"]
    distill.run(load_config(None, overrides), data, progress=False)
    report["setup_s"] = round(time.perf_counter() - t0, 1)
    results: dict[str, Any] = {}
    for name in setups or list(SETUPS):
        deepspeed = SETUPS[name]
        _attempt(results, f"sft/{name}", lambda d=deepspeed, n=name: check_sft(runs / "sft" / n, data, d))
        _attempt(results, f"grpo/{name}", lambda d=deepspeed, n=name: check_grpo(runs / "grpo" / n, d))
    _attempt(results, "grpo/vllm", lambda: check_vllm(runs / "vllm"))
    if gpu:
        _attempt(results, "grpo/plain-on-cpu", lambda: cpu_grpo_step(runs / "cpu"))
        on_gpu, on_cpu = results.get("grpo/plain", {}), results["grpo/plain-on-cpu"]
        if on_gpu.get("ok") and on_cpu.get("ok"):
            report["grpo_step_speedup_gpu_over_cpu"] = round(on_cpu["step_s"] / on_gpu["step_s"], 2)
    report["results"] = results
    report["ok"] = all(r["ok"] for r in results.values())
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    return report


def summary(report: dict[str, Any], path: Path) -> str:
    """The table the command ends with, and where the details are."""
    lines = [f"gpu-check ({report['mode']}): {report['nvidia_smi'] or 'no GPU'}"]
    for name, r in report["results"].items():
        if not r["ok"]:
            status = f"FAILED  {r['error'][:150]}"
        elif "skipped" in r:
            status = f"skipped {r['skipped']}"
        else:
            facts = {k: r[k] for k in ("resumed_from_step", "final_model_dtype", "step_s") if k in r}
            status = "ok      " + ", ".join(f"{k} {v}" for k, v in facts.items())
        lines.append(f"  {name:<20} {status}  ({r['wall_s']} s)")
    if "grpo_step_speedup_gpu_over_cpu" in report:
        lines.append(f"  GRPO step on the GPU: {report['grpo_step_speedup_gpu_over_cpu']}x the CPU's speed")
    verdict = "every path ran" if report["ok"] else "some paths FAILED (tracebacks in the JSON)"
    lines.append(f"{verdict}; details in {path}")
    return "\n".join(lines)


def cmd_gpu_check(args) -> int:
    out = Path(args.out or os.environ.get("OUT") or "out/gpu-check")
    report = run_check(out, Path(args.work_dir or out / "work"), args.setup)
    sys.stdout.write(summary(report, out / "gpu-check.json") + "\n")
    return 0 if report["ok"] else 1


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "gpu-check", help="run SFT and GRPO's GPU paths on the tiny model (docs/gpu.md)"
    )
    p.add_argument(
        "--out", default=None, help="where gpu-check.json goes (default: $OUT, else out/gpu-check)"
    )
    p.add_argument("--work-dir", default=None, help="models, data and checkpoints (default: <out>/work)")
    p.add_argument("--setup", action="append", choices=list(SETUPS), help="only these set-ups (repeatable)")
    p.set_defaults(fn=cmd_gpu_check)


def _cpu_step_main(root: str) -> int:
    """``python -m g1core.gpu_check --cpu-step DIR``: the plain GRPO timing run, printed as JSON."""
    from .stages import grpo

    result = grpo.run(_grpo_cfg(), str(Path(root) / "out"), progress=False, work_dir=Path(root) / "work")
    sys.stdout.write(json.dumps({"steps": result.steps, **_step_times(result)}) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--cpu-step":
        logging.basicConfig(level=logging.WARNING)
        sys.exit(_cpu_step_main(sys.argv[2]))
    sys.exit("usage: python -m g1core.gpu_check --cpu-step DIR (the check itself: g1 gpu-check)")
