"""Build and push g1's stage images, and re-lock the GPU image, from images/images.yaml.

images.yaml is the one place where images are pinned; this script turns it into ``docker buildx``
commands so that nobody retypes a tag or a base image by hand::

    python images/build.py build --dry-run           # print the commands
    python images/build.py build --push              # build and push every image
    python images/build.py build --image g1-gpu --push
    python images/build.py lock-gpu                  # rewrite images/g1-gpu/constraints-gpu.txt
    python images/build.py gpu-check-wheels          # .whl/: what `make gpu-check` needs on a bare GPU box

``lock-gpu`` resolves the g1 package with its extras and the image's extra requirements against
constraints.txt (less the pins the image cannot use) from PyPI, without installing anything, and writes
every resolved version. It must run on linux x86_64 with CPython 3.11, the image's platform.

``gpu-check-wheels`` downloads (and for DeepSpeed, which PyPI serves as source only, builds) the wheels the
GPU check needs on a machine that has Python, a CUDA torch, transformers' hub client and accelerate but no
network (docs/gpu.md): the packages of :data:`GPU_CHECK_WHEELS` at constraints.txt's versions, about 20 MB.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from packaging.requirements import Requirement

log = logging.getLogger("g1.images")

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGES_FILE = REPO_ROOT / "images" / "images.yaml"
IMAGE_FIELDS = ("image", "stages", "context", "dockerfile", "platforms", "constraints", "build_args")
# What `make gpu-check` installs on a GPU machine without network, beside the torch, accelerate, hub
# client, tokenizers, numpy, pandas and pyarrow it has: TRL and DeepSpeed with what they need that such an
# image lacks, the pinned transformers, and what g1core itself imports (configs, the gym)
GPU_CHECK_WHEELS = (
    "transformers", "trl", "datasets", "dill", "multiprocess", "deepspeed", "hjson", "pydantic",
    "pydantic-core", "annotated-types", "typing-inspection", "gymnasium", "farama-notifications",
)  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def canonical(name: str) -> str:
    """PEP 503 name, so that ``Jinja2``, ``jinja2`` and ``typing_extensions`` compare as pip does."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_images(path: Path = IMAGES_FILE) -> dict:
    """Read images.yaml and check the fields every command relies on, naming the file and field."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), dict) or not data["images"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'images' mapping")
    for key in ("registry", "version"):
        if not data.get(key):
            raise ValueError(f"{path}: top-level field {key!r} is missing")
    for name, spec in data["images"].items():
        missing = [f for f in IMAGE_FIELDS if f not in (spec or {})]
        if missing:
            raise ValueError(f"{path}: images.{name} lacks {', '.join(missing)}")
    return data


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by canonical name (comments and blanks skipped)."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise ValueError(f"{path}:{number}: expected NAME==VERSION, got {raw!r}")
        pins[canonical(name.strip())] = version.strip()
    return pins


def buildx_command(name: str, spec: dict, push: bool) -> list[str]:
    """The ``docker buildx build`` command for one image, run from the repository root.

    ``--push`` builds every platform of images.yaml; without it the image is loaded into the local
    docker, which holds one platform, so only the first is built.
    """
    cmd = ["docker", "buildx", "build", "--file", spec["dockerfile"], "--tag", spec["image"]]
    platforms = spec["platforms"] if push else spec["platforms"][:1]  # --load keeps a single platform
    cmd += ["--platform", ",".join(platforms)]
    for key, value in spec["build_args"].items():
        cmd += ["--build-arg", f"{key}={value}"]
    cmd += ["--label", f"org.opencontainers.image.ref.name={spec['image']}"]
    cmd.append("--push" if push else "--load")
    cmd.append(spec["context"])
    return cmd


def _selected(data: dict, only: list[str] | None) -> dict[str, dict]:
    """The images named on the command line (all when none), with a clear error for unknown names."""
    images = data["images"]
    unknown = sorted(set(only or ()) - set(images))
    if unknown:
        raise ValueError(f"unknown image(s) {', '.join(unknown)}; images.yaml has {', '.join(images)}")
    return {n: s for n, s in images.items() if not only or n in only}


def cmd_build(args: argparse.Namespace) -> int:
    """Build (and push) the selected images, or only print the commands with --dry-run."""
    data = load_images(args.file)
    if args.engine == "podman":
        return _build_with_podman(data, args)
    for name, spec in _selected(data, args.image).items():
        cmd = buildx_command(name, spec, args.push)
        if args.dry_run:
            sys.stdout.write(shlex.join(cmd) + "\n")
            continue
        log.info("building %s: %s", name, shlex.join(cmd))
        subprocess.run(cmd, cwd=REPO_ROOT, check=True)
    return 0


def _build_with_podman(data: dict, args: argparse.Namespace) -> int:
    """Build the selected images here with podman (images/podman.py); with ``--images-file``, write a copy
    of images.yaml whose images are the local tags (for G1_IMAGES_FILE: components then run in them)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import podman_build as podman  # beside this script

    if args.push or args.dry_run:
        raise ValueError("--engine podman builds local images only (no --push, no --dry-run)")
    local = dict(data, images={k: dict(v) for k, v in data["images"].items()})
    for name, spec in _selected(data, args.image).items():
        local["images"][name]["image"] = podman.build(name, spec, args.local_base, args.rebuild)
    if args.images_file:
        Path(args.images_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.images_file).write_text(yaml.safe_dump(local, sort_keys=False))
        log.info(
            "wrote %s: run the pipeline in these images with G1_IMAGES_FILE=%s",
            args.images_file,
            args.images_file,
        )
    return 0


def _closure(root: str, installs: dict[str, dict]) -> set[str]:
    """Canonical names of ``root`` and everything it pulls in, with markers evaluated here."""
    visited: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        item = todo.pop()
        if item in visited or item[0] not in installs:
            continue
        visited.add(item)
        name, extras = item
        for text in installs[name]["metadata"].get("requires_dist") or []:
            req = Requirement(text)
            if not req.marker or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((canonical(req.name), frozenset(req.extras)))
    return {name for name, _ in visited}


def resolve_lock(spec: dict, constraints: Path, repo_root: Path = REPO_ROOT) -> list[str]:
    """Resolve the image's packages from PyPI (no install) and return its lock as ``name==version`` lines.

    torch comes from the PyTorch index in the image, with the CUDA libraries that wheel pins, so the
    packages only torch pulls in are left out; its other dependencies keep constraints.txt's pins.
    """
    if (sys.platform, platform.machine(), sys.version_info[:2]) != ("linux", "x86_64", (3, 11)):
        raise RuntimeError("lock-gpu resolves for linux x86_64 CPython 3.11; run it on such a machine")
    lock = spec.get("lock") or {}
    base = read_pins(constraints)
    drop = {canonical(n) for n in lock.get("drop_from_constraints", [])}
    unknown = sorted(drop - set(base))
    if unknown:
        raise ValueError(f"lock.drop_from_constraints names {unknown}, which {constraints} does not pin")
    target = f"{repo_root}[{','.join(spec.get('extras', []))}]" if spec.get("extras") else str(repo_root)
    with tempfile.TemporaryDirectory() as tmp:
        kept = Path(tmp, "constraints.txt")
        kept.write_text("".join(f"{n}=={v}\n" for n, v in base.items() if n not in drop))
        report = Path(tmp, "report.json")
        # --isolated: resolve from PyPI as a docker build does, not from this machine's pip config.
        cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed"]
        cmd += ["--quiet", "--report", str(report), "-c", str(kept), target, *lock.get("requirements", [])]
        log.info("resolving: %s", shlex.join(cmd))
        subprocess.run(cmd, check=True)
        installs = {canonical(i["metadata"]["name"]): i for i in json.loads(report.read_text())["install"]}
    only_torch = _closure("torch", installs) - set(base) - {"torch"}
    return [
        f"{n}=={installs[n]['metadata']['version']}"
        for n in sorted(installs)
        if n != "g1" and n not in only_torch
    ]


def cmd_lock_gpu(args: argparse.Namespace) -> int:
    """Rewrite the lock of every image that has a ``lock`` section (g1-gpu)."""
    data = load_images(args.file)
    for name, spec in _selected(data, args.image).items():
        if "lock" not in spec:
            continue
        lines = resolve_lock(spec, REPO_ROOT / "constraints.txt")
        lock = spec["lock"]
        dropped = ", ".join(lock.get("drop_from_constraints", [])) or "nothing"
        added = ", ".join(lock.get("requirements", [])) or "nothing"
        header = [
            f"# The lock of the {name} image: written by `python images/build.py lock-gpu`; do not edit.",
            f"# constraints.txt without {dropped}, plus {added}, resolved for {lock.get('platform')}.",
            "# The CUDA libraries that only torch pulls in come with torch from the PyTorch index.",
        ]
        out = REPO_ROOT / spec["constraints"]
        out.write_text("\n".join(header + lines) + "\n")
        log.info("wrote %s (%d pins)", out, len(lines))
    return 0


def cmd_gpu_check_wheels(args: argparse.Namespace) -> int:
    """Download the GPU check's wheels for ``--python`` on linux x86_64 into ``--dest`` (emptied first)."""
    pins = read_pins(REPO_ROOT / "constraints.txt")
    missing = [name for name in GPU_CHECK_WHEELS if canonical(name) not in pins]
    if missing:
        raise ValueError(f"constraints.txt pins no version of {', '.join(missing)}")
    dest = Path(args.dest)
    for old in dest.glob("*.whl"):
        old.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    source_only = {"deepspeed"}  # built here without its C++ ops (DS_BUILD_OPS=0): a pure-Python wheel
    wanted = [f"{name}=={pins[canonical(name)]}" for name in GPU_CHECK_WHEELS if name not in source_only]
    pip = [sys.executable, "-m", "pip"]
    download = [*pip, "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest)]
    download += ["--python-version", args.python, "--implementation", "cp"]
    for tag in PLATFORMS:
        download += ["--platform", tag]
    subprocess.run([*download, *wanted], check=True)
    build = [*pip, "wheel", "--no-deps", "--wheel-dir", str(dest)]
    build += [f"{name}=={pins[canonical(name)]}" for name in sorted(source_only)]
    subprocess.run(build, check=True, env={**os.environ, "DS_BUILD_OPS": "0"})
    wheels = sorted(dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    log.info(
        "%d wheels, %.1f MiB, in %s: carry it to the GPU machine and run `make gpu-check` there",
        len(wheels),
        size,
        dest,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--file", type=Path, default=IMAGES_FILE, help="images.yaml to read")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="docker buildx build every image (or --image NAME)")
    build.add_argument("--image", action="append", help="only this image (repeatable)")
    build.add_argument("--push", action="store_true", help="push to the registry instead of --load")
    build.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    build.add_argument(
        "--engine", choices=["buildx", "podman"], default="buildx", help="docker buildx, or podman here"
    )
    build.add_argument(
        "--local-base",
        action="store_true",
        help="podman: a Debian-package Python base made here instead of the registry's (podman_build.py)",
    )
    build.add_argument(
        "--rebuild", action="store_true", help="podman: build even when the content tag exists"
    )
    build.add_argument("--images-file", help="podman: write images.yaml with the built local tags here")
    build.set_defaults(fn=cmd_build)
    relock = sub.add_parser("lock-gpu", help="rewrite the lock of the images that have their own")
    relock.add_argument("--image", action="append", help="only this image (repeatable)")
    relock.set_defaults(fn=cmd_lock_gpu)
    wheels = sub.add_parser(
        "gpu-check-wheels", help="the wheels `make gpu-check` installs on a bare GPU machine"
    )
    wheels.add_argument(
        "--dest", default=str(REPO_ROOT / ".whl"), help="folder for the wheels (default .whl)"
    )
    wheels.add_argument("--python", default="3.12", help="the GPU machine's Python version (default 3.12)")
    wheels.set_defaults(fn=cmd_gpu_check_wheels)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse the arguments and run the subcommand."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, RuntimeError, subprocess.CalledProcessError) as err:
        log.error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
