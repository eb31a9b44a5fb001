"""Scale-out of a training stage on one node: DeepSpeed configs, worker processes, ranks.

A stage asked for N > 1 processes (``sft.num_processes``) does not train in its own process. That process
(the *parent*) does once what must happen once (downloads, the tiny model's build), writes a worker spec, and
runs ``accelerate launch`` with the matching config of ``configs/accelerate/`` (``multi-gpu.yaml``, or
``zero2.yaml`` / ``zero3.yaml`` with the DeepSpeed JSON of ``configs/deepspeed/``). Accelerate starts N
workers through torch.distributed (NCCL on GPUs, gloo on CPU); each runs ``python -m g1core.distributed
<spec>``, which calls the stage's worker function, i.e. the same training code as a one-process run.

Rank 0 alone uploads checkpoints and writes the outputs. A metrics callback cannot cross processes, so rank 0
appends its metrics to a JSON-lines file (:class:`MetricsLog`) that the parent tails while it waits and
forwards to its own sink (MLflow) in order; the parent then reads the finished run's ``result.json``.

DeepSpeed on CPU (tests, laptops) runs the same code but never compiles a DeepSpeed C++ op:
:func:`load_deepspeed_config` makes DeepSpeed use torch's AdamW there (no fused or CPU-Adam op) and
:func:`disable_cpu_op_builds` keeps its communication backend from building the shared-memory op
(``deepspeed_shm_comm``) that it otherwise compiles on every CPU start-up; gloo does the collectives.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import envvars
from .config import CONFIG_DIR, DEEPSPEED_PRESETS

log = logging.getLogger(__name__)

MetricsSink = Callable[[dict[str, float], int], None]
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEEPSPEED_SWITCH = "ACCELERATE_USE_DEEPSPEED"  # set by accelerate (and its launcher) when DeepSpeed is on
ERROR_GLOB = "error-rank*.txt"  # a worker's exception and traceback, beside its spec, for the parent to quote
# DeepSpeed's calls of torch.distributed's old collective names: one warning per call, hundreds per run
DEEPSPEED_COLLECTIVE_DEPRECATIONS = (
    r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"
)


# ---- DeepSpeed --------------------------------------------------------------------------------------
def deepspeed_config_path(value: str, field: str = "sft.deepspeed") -> Path:
    """The JSON file of a DeepSpeed preset name (``zero2``, ``zero3``: ``configs/deepspeed/``) or path."""
    path = CONFIG_DIR / "deepspeed" / f"{value}.json" if value in DEEPSPEED_PRESETS else Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"{field}={value!r}: DeepSpeed config {str(path)!r} does not exist")
    return path


def load_deepspeed_config(value: str, cuda: bool, field: str = "sft.deepspeed") -> dict[str, Any]:
    """The DeepSpeed config as a dict for ``TrainingArguments.deepspeed``; off CUDA, DeepSpeed's Adam is
    swapped for torch's AdamW (``torch_adam``): its fused and CPU Adam ops would be compiled at start-up."""
    path = deepspeed_config_path(value, field)
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{field}: {str(path)!r} is not valid JSON: {err}") from err
    config.pop("_comment", None)
    optimizer = config.get("optimizer")
    if not cuda and optimizer and str(optimizer.get("type", "")).lower() in ("adam", "adamw"):
        optimizer.setdefault("params", {})["torch_adam"] = True
    return config


def zero_stage(config: dict[str, Any] | None) -> int:
    """The ZeRO stage of a DeepSpeed config (0 without one)."""
    return int(((config or {}).get("zero_optimization") or {}).get("stage", 0))


def disable_cpu_op_builds() -> None:
    """On DeepSpeed's CPU accelerator, mark the shared-memory collective op as unavailable, so creating the
    communication backend uses gloo alone instead of compiling ``deepspeed_shm_comm`` (no effect on GPUs)."""
    try:
        import deepspeed.ops
        from deepspeed.accelerator import get_accelerator
    except ImportError as err:
        raise ModuleNotFoundError(
            "sft.deepspeed needs the deepspeed package (pip install deepspeed)"
        ) from err
    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


# ---- ranks ------------------------------------------------------------------------------------------
def resolve_num_processes(value: int | str) -> int:
    """``auto`` -> the number of visible CUDA GPUs (1 without any); an int as given."""
    if value == "auto":
        import torch

        return max(1, torch.cuda.device_count())
    return int(value)


def launched() -> bool:
    """True inside a worker started by a launcher (torchrun, accelerate launch): it must train, not launch."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    """This process's global rank (0 outside a launch)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Processes in the whole run (1 outside a launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """Processes on this node (1 outside a launch): they share its CPU cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preserved_env(keys: tuple[str, ...] = LAUNCH_ENV):
    """Restore ``keys`` of the environment (the launch variables by default) as they were before the block.

    A run that sets the launch variables for itself (TRL's colocated vLLM sets RANK, LOCAL_RANK, WORLD_SIZE
    and MASTER_*; :func:`deepspeed_session` sets them all) must not leave them behind: a later run in the
    same process would take itself for a launched worker (:func:`launched`) and neither launch nor set up
    its world.
    """
    return envvars.preserved(keys)


@contextmanager
def deepspeed_session() -> Iterator[None]:
    """What a DeepSpeed run in this process needs, undone when it ends (a later run starts afresh).

    Without a launcher, a one-process torch.distributed world on 127.0.0.1 (DeepSpeed wants one), destroyed
    afterwards. In every case the global switches a DeepSpeed Trainer leaves on are reset: accelerate's
    ``ACCELERATE_USE_DEEPSPEED`` (else every later Trainer here would use DeepSpeed) and transformers' "ZeRO-3
    is on" (else every later ``from_pretrained`` here would shard its weights).
    """
    import torch.distributed as dist
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    own_world = not launched() and not (dist.is_available() and dist.is_initialized())
    with preserved_env((*LAUNCH_ENV, DEEPSPEED_SWITCH)):
        if own_world:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        try:
            yield
        finally:
            unset_hf_deepspeed_config()
            if own_world and dist.is_available() and dist.is_initialized():
                import deepspeed.comm

                deepspeed.comm.destroy_process_group()  # also drops DeepSpeed's cached groups of this world


def any_rank(flag: bool, device: Any = "cpu") -> bool:
    """True when ``flag`` is true on any rank (a collective: every rank must call it at the same point)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    """Wait for every rank (no-op in a one-process run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# ---- metrics across processes -----------------------------------------------------------------------
class MetricsLog:
    """Metrics as JSON lines: a worker appends ``(metrics, step)``; the parent reads them back in order.

    The parent keeps its read offset and only consumes whole lines, so it can poll while the file grows.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._offset = 0

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        """The worker side: a metrics sink."""
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "metrics": metrics}) + "\n")

    def forward(self, sink: MetricsSink | None) -> int:
        """The parent side: pass each whole line written since the last call to ``sink``; returns how many."""
        if not self.path.is_file():
            return 0
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        lines = [line for line in complete.decode().splitlines() if line.strip()]
        for line in lines:
            record = json.loads(line)
            if sink is not None:
                sink(record["metrics"], record["step"])
        return len(lines)


# ---- launching --------------------------------------------------------------------------------------
def accelerate_config(deepspeed: str | None) -> Path:
    """The accelerate config of a launch: ``zero2``/``zero3`` for those presets, ``zero2.yaml`` as the
    DeepSpeed plugin of a custom JSON (whose path is passed on the command line), ``multi-gpu`` without."""
    name = "multi-gpu" if deepspeed is None else deepspeed if deepspeed in DEEPSPEED_PRESETS else "zero2"
    path = CONFIG_DIR / "accelerate" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"accelerate config {str(path)!r} is missing (G1_CONFIG_DIR={CONFIG_DIR})")
    return path


def launch_command(spec_path: Path, num_processes: int, deepspeed: str | None, port: int) -> list[str]:
    """``accelerate launch`` of ``num_processes`` workers on this node running ``g1core.distributed``."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--config_file", str(accelerate_config(deepspeed))]
    cmd += ["--num_processes", str(num_processes), "--num_machines", "1", "--machine_rank", "0"]
    cmd += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    if deepspeed is not None:  # an absolute path: the yaml's relative one only holds in the repo root
        cmd += ["--deepspeed_config_file", str(deepspeed_config_path(deepspeed).resolve())]
    return cmd + ["-m", __name__, str(spec_path)]


def launch(
    entry: str,
    args: dict[str, Any],
    num_processes: int,
    folder: str | os.PathLike,
    deepspeed: str | None = None,
    on_metrics: MetricsSink | None = None,
    poll_s: float = 0.5,
) -> None:
    """Run ``entry(args)`` (``"module:function"``) in ``num_processes`` workers and wait for them.

    ``args`` must be JSON; the workers find a :class:`MetricsLog` path in ``args["metrics_log"]`` and their
    rank 0 writes to it; its records reach ``on_metrics`` while the workers run. A failed worker raises.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(folder / "metrics.jsonl")
    metrics.path.unlink(missing_ok=True)
    for stale in folder.glob(ERROR_GLOB):  # a failure report is about this launch, never an earlier one
        stale.unlink()
    spec_path = folder / "worker.json"
    spec_path.write_text(json.dumps({"entry": entry, "args": {**args, "metrics_log": str(metrics.path)}}))
    env = dict(os.environ)
    if deepspeed is None:
        env.pop(DEEPSPEED_SWITCH, None)  # the workers' Trainers follow the config, not a leftover switch
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one node: keep gloo's sockets on the loopback interface
    cmd = launch_command(spec_path, num_processes, deepspeed, _free_port())
    log.info("launching %d worker processes: %s", num_processes, " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env)
    try:
        while proc.poll() is None:
            metrics.forward(on_metrics)
            time.sleep(poll_s)
    except BaseException:
        proc.terminate()  # the launcher passes it on to its workers
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    finally:
        metrics.forward(on_metrics)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{num_processes} worker processes of {entry} failed (exit code {proc.returncode}); "
            f"their log is above. {worker_errors(folder)}"
        )


def worker_errors(folder: Path, lines: int = 12) -> str:
    """What the failed workers of a launch in ``folder`` reported: each rank's exception with the end of its
    traceback, so the error itself names the cause even where the workers' long log was cut."""
    reports = sorted(folder.glob(ERROR_GLOB))
    if not reports:
        return "No worker reported an exception (one may have been killed, e.g. out of memory)."
    ranks_by_tail: dict[str, list[str]] = {}  # ranks that failed alike are named together, their report once
    for report in reports:
        tail = "\n".join(report.read_text().rstrip().splitlines()[-lines:])
        ranks_by_tail.setdefault(tail, []).append(report.stem.removeprefix("error-"))
    return "\n".join(f"{', '.join(ranks)} raised:\n{tail}" for tail, ranks in ranks_by_tail.items())


def main(argv: list[str] | None = None) -> int:
    """Worker entry: ``python -m g1core.distributed <spec.json>`` calls the spec's entry with its args."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m g1core.distributed", description=main.__doc__)
    parser.add_argument("spec", type=Path, help="the worker spec JSON written by launch()")
    spec_path = parser.parse_args(argv).spec
    spec = json.loads(spec_path.read_text())
    logging.basicConfig(
        level=logging.INFO if rank() == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank()} %(levelname)s %(name)s: %(message)s",
    )
    warnings.filterwarnings("ignore", message=DEEPSPEED_COLLECTIVE_DEPRECATIONS, category=FutureWarning)
    module, _, function = spec["entry"].partition(":")
    try:
        getattr(importlib.import_module(module), function)(spec["args"])
    except BaseException:  # the parent quotes this report in its own error; the exception still ends the rank
        report = spec_path.parent / ERROR_GLOB.replace("*", str(rank()))
        report.write_text(traceback.format_exc())
        raise
    end_world()
    return 0


def end_world() -> None:
    """After a rank's work succeeded: wait for the others, then destroy the process group.

    A rank that exits with its gloo group alive while another still saves can abort in gloo's destructor
    ("terminate called without an active exception", pytorch/pytorch#190489), and the launch then fails. Only
    on success: a destroy while another rank died mid-collective would hang instead (torchtitan#1342).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def settle_deepspeed_accelerator() -> None:
    """Tell DeepSpeed it is on a CPU when no GPU is visible, before anything imports it.

    Otherwise its accelerator detection, run when transformers or accelerate import it, prints a warning
    on stdout, which must stay clean for ``--json`` output. A user's own ``DS_ACCELERATOR`` is kept.
    """
    if "DS_ACCELERATOR" in os.environ or importlib.util.find_spec("deepspeed") is None:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


if __name__ == "__main__":
    sys.exit(main())
