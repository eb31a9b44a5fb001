"""The ``g1`` command line. Each subcommand calls the library; nothing here holds logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import import_module
from pathlib import Path

from g1core.errors import G1Error

log = logging.getLogger("g1")


def _size(text: str) -> tuple[int, int]:
    """'840x640' -> (840, 640) as (height, width); '112' -> (112, 112)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"screen size is HEIGHTxWIDTH, e.g. 840x640, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"screen size is HEIGHTxWIDTH, e.g. 840x640, got {text!r}")
    return parts[0], parts[1]


def _games(arg: list[str]) -> list[str]:
    from g1core.gym import GAMES

    return list(GAMES) if arg == ["all"] else arg


def _policy(args):
    from g1core.gym.policies import make_policy
    from g1core.gym.rewards import parse_weights

    if args.policy == "hf":  # a model: an id, a folder, a URI or models:/<name>@<alias> (MLflow's registry)
        from g1core.config import PolicyConfig, load_config
        from g1core.policies import build_policy

        if not args.model:
            raise ValueError("--policy hf needs --model (e.g. models:/g1-paper-g1@champion)")
        cfg = load_config(args.config)  # its model section: the pixel budget, dtype and prompt limit
        player = PolicyConfig(
            kind="hf", model=args.model, max_new_tokens=args.max_new_tokens, seed=args.policy_seed
        )
        return build_policy(player, cfg.model)
    if args.model:
        raise ValueError("--model applies to --policy hf only")
    kwargs = {"seed": args.policy_seed}
    if args.policy == "oracle":
        kwargs["skill"] = args.skill
    if args.policy == "reward-greedy":
        kwargs["weights"] = parse_weights(args.reward or [])
    elif args.reward:
        raise ValueError("--reward applies to --policy reward-greedy only")
    return make_policy(args.policy, **kwargs)


def cmd_gym_play(args) -> int:
    from g1core.gym.protocol import play

    results = []
    for game in _games(args.game):
        result = play(
            game, _policy(args), args.runs, args.steps, args.seed, args.screen, progress=not args.json
        )
        results.append(result)
        if args.json:
            print(json.dumps(result.to_dict()))
    if not args.json:
        print(
            f"{'game':<22}{'policy':<12}{'score':>16}{'unreadable':>12}{'illegal':>9}{'format':>8}{'percept':>9}"
        )
        for r in results:
            print(
                f"{r.game:<22}{r.policy:<12}{r.mean:>9.1f} ± {r.std:<5.1f}{r.unreadable_rate:>12.0%}"
                f"{r.illegal_rate:>9.0%}{r.format_rate:>8.0%}{r.perception_exact_rate:>9.0%}"
            )
    return 0


def cmd_gym_show(args) -> int:
    import numpy as np
    from PIL import Image

    from g1core.gym import make
    from g1core.gym.pool import GameSpec

    spec = GameSpec.parse(args.game)
    env = make(spec.game, screen_size=args.screen, **spec.knobs)
    frame = env.reset(seed=args.seed)[0]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.episode:
        Image.fromarray(frame).save(out)
        print(env.text_observation())
        log.info("wrote %s", out)
        return 0
    policy = _policy(args)
    frames = [Image.fromarray(frame)]
    for _ in range(args.steps):
        action = env.parse_action(policy.replies([env])[0])
        if action is None:
            action = env.random_action(np.random.default_rng(len(frames)))
        frame, _, terminated, _, _ = env.step(action)
        frames.append(Image.fromarray(frame))
        if terminated:
            break
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=int(1000 / args.fps), loop=0)
    log.info("wrote %s (%d frames, score %s)", out, len(frames), env.score)
    return 0


def cmd_gym_bench(args) -> int:
    from g1core.gym import bench

    for game in _games(args.game):
        result = bench.run(game, seconds=args.seconds)
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"{result['game']:<22} env steps/s {result['env_steps_per_s']:>8.0f}   "
                f"score_group {result['score_group_ms']:>6.2f} ms   "
                f"sample_states {result['sample_states_s']:.3f} s"
            )
    return 0


def cmd_gym_fetch_cifar10(args) -> int:
    from g1core.gym.photos import CIFAR10_MD5, CIFAR10_URL, fetch_cifar10

    source = args.source or CIFAR10_URL
    md5 = args.md5 or (CIFAR10_MD5 if source == CIFAR10_URL else None)
    wrote = fetch_cifar10(args.to, source, md5)
    log.info("%s: %s", args.to, "CIFAR-10 written" if wrote else "already there, nothing to do")
    return 0


def cmd_runs_compare(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from g1core import runs
    from g1core.tracking import Tracker

    tracker = Tracker(args.experiment)
    table = runs.compare(tracker, args.run_ids, args.last)
    if not table.runs:
        raise G1Error(f"no pipeline runs in experiment {args.experiment!r} at {tracker.uri}")
    header, body = runs.rows(table)
    view = Table(title=f"{len(body)} pipeline runs of {args.experiment} ({tracker.uri})")
    for name in header:
        view.add_column(name, overflow="fold")
    for row in body:
        view.add_row(*row)
    Console().print(view)
    for path, data in ((args.markdown, runs.markdown(table).encode()), (args.png, None)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data if data is not None else runs.chart(table))
            log.info("wrote %s", path)
    log.info(
        "scores are means ± standard errors; only params that differ are shown. In MLflow: %s", tracker.uri
    )
    return 0


def add_set_flag(p, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable, into ``args.overrides``): config fields over a command's defaults."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _config_args(p) -> None:
    from g1core.config import presets

    p.add_argument("--config", default="local-tiny", help=f"a YAML file or a preset ({', '.join(presets())})")
    add_set_flag(p, "override a config field, e.g. distill.states_per_game=10 (repeatable)")


def _pod_setting_args(p) -> None:
    """What differs between clusters (pipelines.g1_pipeline.PodSettings)."""
    p.add_argument("--kfp-backend", default="2.15", help="the KFP backend version it runs on (2.5 or newer)")
    p.add_argument(
        "--gpu-node-selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="node label of GPU stages",
    )
    p.add_argument(
        "--gpu-toleration",
        action="append",
        default=None,
        metavar="KEY[=VALUE][:EFFECT]",
        help="taint GPU stages tolerate (default nvidia.com/gpu:NoSchedule; give '' for none)",
    )
    p.add_argument("--image-pull-secret", action="append", default=[], help="secret for a private registry")
    p.add_argument("--sft-gpus", type=int, default=8, help="GPUs of the SFT pod (one node)")
    p.add_argument("--grpo-gpus", type=int, default=8, help="GPUs of each GRPO pod (one node)")
    p.add_argument(
        "--resource-limits",
        action="store_true",
        help="CPU and memory limits = requests (for quota namespaces)",
    )


def _run_id(args) -> str:
    import time

    return args.run_id or time.strftime("local-%Y%m%d-%H%M%S")


def cmd_stage(args) -> int:
    from g1core.config import load_config
    from g1core.stages import run_stage

    cfg = load_config(args.config, args.overrides)
    upstream = {"distill": getattr(args, "dataset", None), "sft": getattr(args, "sft", None)}
    uri = run_stage(
        args.stage,
        cfg,
        _run_id(args),
        output_uri=args.output,
        finish_pipeline=args.finish_pipeline,
        upstream=upstream,
    )
    print(uri)
    return 0


def _pod_settings(args):
    from pipelines.g1_pipeline import PodSettings, Toleration
    from pipelines.kfp_api import parse_version

    kwargs = {}
    if args.gpu_node_selector:
        kwargs["gpu_node_selector"] = tuple(tuple(kv.split("=", 1)) for kv in args.gpu_node_selector)
        if any(len(kv) != 2 for kv in kwargs["gpu_node_selector"]):
            raise ValueError("--gpu-node-selector takes KEY=VALUE")
    if args.gpu_toleration is not None:
        kwargs["gpu_tolerations"] = tuple(Toleration.parse(t) for t in args.gpu_toleration if t)
    kwargs["image_pull_secrets"] = tuple(args.image_pull_secret)
    kwargs["sft_gpus"], kwargs["grpo_gpus"] = args.sft_gpus, args.grpo_gpus
    kwargs["resource_limits"] = args.resource_limits
    version = parse_version(args.kfp_backend)
    if version is None:
        raise ValueError(f"--kfp-backend {args.kfp_backend!r}: give a version such as 2.15")
    return PodSettings.for_backend(version, **kwargs)


def cmd_pipeline_compile(args) -> int:
    from pipelines.compile import COMPILED, compile_all

    for path in compile_all(args.out or COMPILED, args.namespace, _pod_settings(args)):
        print(path)
    return 0


def cmd_pipeline_run(args) -> int:
    if not args.local:
        raise ValueError("only --local runs are started from here; use 'g1 pipeline submit' for a cluster")
    from rich.console import Console
    from rich.table import Table

    from g1core.config import load_config
    from g1core.runs import run_summary
    from g1core.tracking import tracking_uri
    from pipelines.local import run_local

    report = run_local(args.config, args.overrides, args.work_dir, args.containers, args.images_file)
    cfg = load_config(args.config, args.overrides)
    header, rows, notes = run_summary(cfg, report, tracking_uri())
    view = Table()
    for name in header:
        view.add_column(name)
    for row in rows:
        view.add_row(*row)
    console = Console(stderr=True)  # stdout's last line stays the report's URI, for scripts
    console.print(f"pipeline {cfg.name}: the evaluation", highlight=False, soft_wrap=True)
    console.print(view)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True)
    print(report)
    return 0


def _uploaded(args, client):
    """Compile with the command's pod settings and upload as a version named by the spec's content."""
    import tempfile

    from pipelines import kfp_api
    from pipelines.compile import compile_ir

    with tempfile.TemporaryDirectory() as tmp:
        ir = compile_ir(Path(tmp) / "g1_pipeline.yaml", _pod_settings(args))
        return kfp_api.upload(client, ir, args.pipeline_name, args.namespace)


def cmd_pipeline_upload(args) -> int:
    from pipelines import kfp_api

    client = kfp_api.connect(args.host, args.namespace)
    kfp_api.check_backend(kfp_api.backend_info(client), kfp_api.parse_version(args.kfp_backend))
    uploaded = _uploaded(args, client)
    print(uploaded.version_name)
    return 0


def cmd_pipeline_submit(args) -> int:
    from g1core.config import config_to_json, load_config
    from pipelines import kfp_api

    cfg = load_config(args.config, args.overrides)
    client = kfp_api.connect(args.host, args.namespace)
    kfp_api.check_backend(kfp_api.backend_info(client), kfp_api.parse_version(args.kfp_backend))
    uploaded = _uploaded(args, client)
    experiment = kfp_api.experiment_id(client, args.experiment, args.namespace)
    if args.if_idle:
        running = kfp_api.active_runs(client, experiment, args.namespace)
        if running:
            log.info(
                "not submitting: run(s) %s of experiment %s have not ended",
                ", ".join(running),
                args.experiment,
            )
            return 0
    run = client.run_pipeline(
        experiment_id=experiment,
        job_name=args.run_name or cfg.name,
        params={"config_json": config_to_json(cfg)},
        pipeline_id=uploaded.pipeline_id,
        version_id=uploaded.version_id,
        service_account=args.service_account,
    )
    log.info("started run %s of %s in experiment %s", run.run_id, uploaded.version_name, args.experiment)
    print(run.run_id)
    return 0


def cmd_pipeline_schedule(args) -> int:
    from g1core.config import config_to_json, load_config
    from pipelines import kfp_api

    cfg = load_config(args.config, args.overrides)
    client = kfp_api.connect(args.host, args.namespace)
    kfp_api.check_backend(kfp_api.backend_info(client), kfp_api.parse_version(args.kfp_backend))
    uploaded = _uploaded(args, client)
    recurring = kfp_api.schedule(
        client,
        uploaded,
        cron=args.cron,
        experiment=args.experiment,
        job_name=args.name or f"{cfg.name}-scheduled",
        params={"config_json": config_to_json(cfg)},
        namespace=args.namespace,
        service_account=args.service_account,
    )
    log.info("recurring run %s: %s at %s (KFP cron, seconds first), one at a time",
             recurring.recurring_run_id, uploaded.version_name, kfp_api.cron6(args.cron))  # fmt: skip
    print(recurring.recurring_run_id)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="g1", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    top = parser.add_subparsers(dest="command", required=True)

    gym = top.add_parser("gym", help="VLM-Gym: play, show and benchmark the games").add_subparsers(
        dest="gym_command", required=True
    )

    def policy_args(p):
        p.add_argument(
            "--policy",
            choices=["random", "oracle", "reward-greedy", "hf"],
            default="random",
            help="who plays: random moves, the oracle, the best one-step move for a reward, or a model",
        )
        p.add_argument("--model", default=None, help="hf only: a model, e.g. models:/g1-paper-g1@champion")
        p.add_argument("--max-new-tokens", type=int, default=1024, help="hf only: the answer's token budget")
        p.add_argument(
            "--config", default="local-tiny", help="hf only: the config whose model section applies"
        )
        p.add_argument("--skill", type=float, default=1.0, help="oracle only: chance of the oracle's move")
        p.add_argument(
            "--reward",
            action="append",
            metavar="NAME=WEIGHT",
            help="reward-greedy only: a reward weight over the paper's (repeatable), e.g. survival=2",
        )
        p.add_argument("--policy-seed", type=int, default=0, help="seed of the policy's own randomness")

    play = gym.add_parser("play", help="score a policy under the paper's evaluation protocol")
    play.add_argument("--game", nargs="+", default=["all"], help="game names (or game:knob=value), or 'all'")
    policy_args(play)
    play.add_argument("--runs", type=int, default=10, help="runs per game from fresh boards (paper: 10)")
    play.add_argument("--steps", type=int, default=100, help="steps per run (paper: 100)")
    play.add_argument("--seed", type=int, default=0, help="run i starts from reset(seed + i)")
    play.add_argument("--screen", type=_size, default=(840, 640), help="screen HEIGHTxWIDTH the policy sees")
    play.add_argument("--json", action="store_true", help="one JSON object per game")
    play.set_defaults(fn=cmd_gym_play)

    show = gym.add_parser("show", help="write a game's screen as PNG, or a whole episode as GIF")
    show.add_argument("--game", required=True, help="a game name, or game:knob=value,...")
    show.add_argument("--seed", type=int, default=0, help="the board's seed")
    show.add_argument("-o", "--output", required=True, help="the PNG (or, with --episode, GIF) to write")
    show.add_argument("--screen", type=_size, default=(840, 640), help="HEIGHTxWIDTH (default 840x640)")
    show.add_argument("--episode", action="store_true", help="play an episode and write an animated GIF")
    show.add_argument("--steps", type=int, default=100, help="--episode: moves at the most")
    show.add_argument("--fps", type=float, default=4.0, help="--episode: frames per second of the GIF")
    policy_args(show)
    show.set_defaults(fn=cmd_gym_show, policy="oracle")

    bench = gym.add_parser("bench", help="speed of the envs, scoring and state sampling (spec section 8)")
    bench.add_argument("--game", nargs="+", default=["all"], help="game names, or 'all'")
    bench.add_argument("--seconds", type=float, default=2.0, help="time spent stepping each game")
    bench.add_argument("--json", action="store_true", help="one JSON object per game")
    bench.set_defaults(fn=cmd_gym_bench)

    fetch = gym.add_parser(
        "fetch-cifar10", help="put CIFAR-10 (python version) where shisen-sho-cifar10's tiles= points"
    )
    fetch.add_argument("--to", required=True, help="an S3 URI (what the pipeline reads) or a local folder")
    fetch.add_argument("--source", default=None, help="the archive's URL or path (default: its authors' URL)")
    fetch.add_argument("--md5", default=None, help="the archive's checksum (default: the official one)")
    fetch.set_defaults(fn=cmd_gym_fetch_cifar10)

    for stage, text in (
        ("distill", "teacher distillation: the cold-start data set"),
        ("sft", "perception-enhanced SFT (cold start) on the distilled data set"),
        ("g0", "GRPO RL from the base model (G0)"),
        ("g1", "GRPO RL from the sft stage's model (G1)"),
        ("evaluate", "score players under the paper's protocol, with a report"),
        ("promote", "the promotion gate: does this run's model become the registered champion?"),
    ):
        p = top.add_parser(stage, help=text)
        _config_args(p)
        p.add_argument(
            "--run-id",
            help="pipeline run id: groups the stages in MLflow and names the output folder; reuse it (or "
            "--output) to resume an interrupted run. Default: a new timestamp",
        )
        p.add_argument(
            "--finish-pipeline", action="store_true", help="mark the pipeline's MLflow run finished"
        )
        p.add_argument("--output", help="output URI (default: <artifact root>/<name>/<run id>/<stage>)")
        if stage == "sft":
            p.add_argument(
                "--dataset",
                metavar="URI",
                help="the distilled data set (default: the distill stage's output of the same --run-id)",
            )
        if stage == "g1":
            p.add_argument(
                "--sft",
                metavar="URI",
                help="the sft stage's output to start from (default: that of the same --run-id)",
            )
        p.set_defaults(fn=cmd_stage, stage=stage)

    pipe = top.add_parser("pipeline", help="compile, run locally, or submit the Kubeflow pipeline")
    pipe_cmds = pipe.add_subparsers(dest="pipeline_command", required=True)
    comp = pipe_cmds.add_parser("compile", help="write the IR YAML and Kubernetes manifests")
    comp.add_argument("--out", default=None, help="folder (default: pipelines/compiled)")
    comp.add_argument(
        "--namespace",
        default="kubeflow",
        help="namespace of the Pipeline resources (a profile's, multi-user)",
    )
    _pod_setting_args(comp)
    comp.set_defaults(fn=cmd_pipeline_compile)
    run = pipe_cmds.add_parser("run", help="run the whole DAG on this machine with kfp.local")
    run.add_argument("--local", action="store_true", help="required: run here, not on a cluster")
    run.add_argument("--work-dir", default=None, help="where artifacts, MLflow and KFP outputs go")
    run.add_argument(
        "--containers",
        action="store_true",
        help="every stage in its image (make images), artifacts in S3 and runs in MLflow (g1 stack up)",
    )
    run.add_argument("--images-file", default=None, help="--containers: images.yaml with local tags")
    _config_args(run)
    run.set_defaults(fn=cmd_pipeline_run)

    def api_args(p, config: bool = True):
        p.add_argument(
            "--host", required=True, help="KFP API, e.g. http://ml-pipeline.kubeflow.svc.cluster.local:8888"
        )
        p.add_argument("--namespace", default=None, help="your profile namespace (multi-user KFP)")
        p.add_argument("--pipeline-name", default="g1", help="the KFP pipeline the version goes under")
        _pod_setting_args(p)
        if config:
            p.add_argument("--experiment", default="g1", help="the KFP experiment the runs go under")
            p.add_argument(
                "--service-account", default=None, help="pods' service account (g1-pipeline-runner)"
            )
            _config_args(p)

    upload = pipe_cmds.add_parser("upload", help="upload the pipeline as a version named by its content")
    api_args(upload, config=False)
    upload.set_defaults(fn=cmd_pipeline_upload)
    sub = pipe_cmds.add_parser("submit", help="start a run on a Kubeflow Pipelines server")
    api_args(sub)
    sub.add_argument("--run-name", default=None, help="the KFP run's name (default: the config's name)")
    sub.add_argument(
        "--if-idle", action="store_true", help="start nothing while a run of the experiment has not ended"
    )
    sub.set_defaults(fn=cmd_pipeline_submit, config="g1-paper")
    sched = pipe_cmds.add_parser("schedule", help="a KFP recurring run: one run at a time, no catch-up")
    api_args(sched)
    sched.add_argument("--cron", required=True, help="e.g. '0 3 * * 1' (5 fields) or KFP's 6 (seconds first)")
    sched.add_argument(
        "--name", default=None, help="the recurring run's name (default <config name>-scheduled)"
    )
    sched.set_defaults(fn=cmd_pipeline_schedule, config="g1-paper")

    runs = top.add_parser("runs", help="pipeline runs in MLflow").add_subparsers(
        dest="runs_command", required=True
    )
    comp_runs = runs.add_parser("compare", help="the last pipeline runs (or given ones) side by side")
    comp_runs.add_argument("run_ids", nargs="*", help="parent run ids (default: the experiment's last runs)")
    comp_runs.add_argument(
        "--experiment", default="g1-local", help="MLflow experiment (the config's tracking)"
    )
    comp_runs.add_argument("--last", type=int, default=5, help="how many of the newest pipeline runs")
    comp_runs.add_argument("--markdown", default=None, help="also write the table as markdown to this file")
    comp_runs.add_argument("--png", default=None, help="also write a bar chart of the scores to this file")
    comp_runs.set_defaults(fn=cmd_runs_compare)

    for module in ("g1core.models.tiny", "g1core.stack", "g1core.bench", "g1core.gpu_check"):
        try:
            import_module(module).register_cli(top)
        except ModuleNotFoundError as err:  # an optional part that is not installed
            log.debug("no %s commands: %s", module, err)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from g1core.distributed import settle_deepspeed_accelerator

    settle_deepspeed_accelerator()
    try:
        return args.fn(args)
    except (G1Error, ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
