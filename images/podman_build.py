"""Build the stage images with podman on a machine that has no Docker engine and cannot pull base images.

Used by ``python images/build.py build --engine podman`` (``make images``). The Dockerfiles are the ones users
build; only build arguments change:

- **Base**: ``--local-base`` replaces the registry's Python base (``BASE_IMAGE``) by one made here from Debian
  packages: ``debootstrap`` (minbase, Python 3.11 with venv and pip) from the Debian mirror this machine's apt
  already uses, trimmed of documentation, then ``podman import``. Made once; kept by podman.
- **Packages**: RUN steps reach the package index with ``--network host``; this machine's pip settings (its CA
  bundle, its find-links folders, where the CPU build of torch may sit) are read from ``pip config`` at run
  time and mounted read-only into the build, never written into the project.
- **Tags**: ``localhost/<name>:<version>-<content hash>``, the hash over the Dockerfile, its ignore file, the
  build arguments, the base image's id and every file the build context holds; an unchanged tree finds its
  image and does not rebuild.

Everything runs with ``CONTAINERS_CONF=images/containers.conf`` (runc, no default ulimits).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("g1.images")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = REPO_ROOT / "images" / "containers.conf"
DEBIAN_RELEASE = "bookworm"  # Python 3.11, the version the images run
BASE_TAG = f"localhost/g1-base:python3.11-{DEBIAN_RELEASE}"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
TRIMMED = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
)


def podman_env() -> dict[str, str]:
    """The environment every podman call gets: this project's containers.conf unless one is set."""
    return {"CONTAINERS_CONF": str(CONTAINERS_CONF), **os.environ}


def podman(*args: str, capture: bool = False) -> str:
    done = subprocess.run(["podman", *args], env=podman_env(), check=True, text=True, capture_output=capture)
    return done.stdout.strip() if capture else ""


def image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag], env=podman_env()).returncode == 0


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} not found: install Debian's packages (apt-get install podman runc "
            "debootstrap), as `make images` does"
        )


# ---- this machine's settings, read at run time -------------------------------------------------------------
def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The first Debian archive this machine's apt uses (deb822 ``.sources`` or one-line ``.list`` files)."""
    files = sorted((apt_dir / "sources.list.d").glob("*.sources")) + [apt_dir / "sources.list"]
    files += sorted((apt_dir / "sources.list.d").glob("*.list"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        for uri in re.findall(r"^URIs:\s*(\S+)", text, flags=re.M) + re.findall(
            r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, flags=re.M
        ):
            if "security" not in uri:
                return uri
    raise RuntimeError(f"no Debian mirror found in {apt_dir}/sources.list(.d)")


def pip_settings() -> dict[str, list[str]]:
    """This machine's pip ``cert`` and ``find-links`` (local folders only), from ``pip config list``."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    )
    values: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        values[key.split(".")[-1]] = value.strip().strip("'\"")
    cert = values.get("cert") or os.environ.get("PIP_CERT", "")
    links = (values.get("find-links") or os.environ.get("PIP_FIND_LINKS", "")).split()
    return {
        "cert": [cert] if cert and Path(cert).is_file() else [],
        "find_links": [link for link in links if Path(link).is_dir()],
    }


# ---- the base ----------------------------------------------------------------------------------------------
def local_base(rebuild: bool = False) -> str:
    """The Debian-package Python base image (made once): its tag."""
    if image_exists(BASE_TAG) and not rebuild:
        return BASE_TAG
    require_tools("podman", "debootstrap")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="g1-base-") as tmp:
        root = Path(tmp) / "rootfs"
        log.info("debootstrap %s from %s into %s", DEBIAN_RELEASE, mirror, root)
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
        subprocess.run([*cmd, DEBIAN_RELEASE, str(root), mirror], check=True, stdout=subprocess.DEVNULL)
        for part in TRIMMED:
            shutil.rmtree(root / part, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["podman", "import", "--change", 'CMD ["python3"]', "-", BASE_TAG],
            stdin=tar.stdout, env=podman_env(), check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrapped root failed")
    log.info("base image %s made", BASE_TAG)
    return BASE_TAG


# ---- the build ---------------------------------------------------------------------------------------------
def context_files(spec: dict) -> list[Path]:
    """The build context's files: the tracked files that the Dockerfile's allowlist lets in."""
    ignore = Path(REPO_ROOT / spec["dockerfile"]).with_name(Path(spec["dockerfile"]).name + ".dockerignore")
    allowed, excluded = [], []
    for line in ignore.read_text().splitlines():
        line = line.strip()
        if line.startswith("!"):
            allowed.append(line[1:].rstrip("/"))
        elif line and not line.startswith("#") and line != "*":
            excluded.append(line.removeprefix("**/").rstrip("/"))
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    files = []
    for rel in filter(None, tracked):
        inside = any(rel == a or rel.startswith(a + "/") for a in allowed)
        dropped = any(fnmatch.fnmatch(rel, e) or rel.startswith(e + "/") for e in excluded)
        if inside and not dropped and (REPO_ROOT / rel).is_file():
            files.append(Path(rel))
    return files


def content_tag(name: str, spec: dict, build_args: dict[str, str], base_id: str) -> str:
    """``localhost/<name>:<version>-<hash>``: the hash of everything that decides the image."""
    digest = hashlib.sha256()
    for rel in (spec["dockerfile"], spec["dockerfile"] + ".dockerignore"):
        digest.update(rel.encode() + b"\0" + (REPO_ROOT / rel).read_bytes())
    digest.update(json.dumps(build_args, sort_keys=True).encode() + base_id.encode())
    for rel in context_files(spec):
        digest.update(str(rel).encode() + b"\0" + (REPO_ROOT / rel).read_bytes())
    return f"localhost/{name}:{spec['build_args'].get('G1_VERSION', 'dev')}-{digest.hexdigest()[:12]}"


def build(
    name: str, spec: dict, use_local_base: bool = True, rebuild: bool = False, no_cache: bool = False
) -> str:
    """Build ``name`` from its Dockerfile with podman (unless its content tag exists); returns the tag.
    ``no_cache``: reuse no layer of an earlier build (the base image is kept)."""
    require_tools("podman", "runc")
    args = dict(spec["build_args"])
    if use_local_base:
        args["BASE_IMAGE"] = local_base()
        if "PYTHON_IMAGE" in args:
            args["PYTHON_IMAGE"] = args["BASE_IMAGE"]
    settings = pip_settings()
    if settings["find_links"] and "TORCH_INDEX_URL" in args:
        args["TORCH_INDEX_URL"] = "https://pypi.org/simple"  # torch's CPU build then comes from find-links
    base_id = podman("image", "inspect", "--format", "{{.Id}}", args["BASE_IMAGE"], capture=True)
    tag = content_tag(name, spec, args, base_id)
    if image_exists(tag) and not rebuild:
        log.info("%s is up to date: %s", name, tag)
        return tag
    with tempfile.TemporaryDirectory(prefix="g1-build-") as tmp:
        cmd = ["build", "--network", "host", "--pull=never", "--tag", tag, "--file", spec["dockerfile"]]
        cmd += ["--ignorefile", spec["dockerfile"] + ".dockerignore"] + (["--no-cache"] if no_cache else [])
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        pip_conf = ["[global]"]
        for cert in settings["cert"]:
            cmd += ["--volume", f"{cert}:{cert}:ro"]
            pip_conf.append(f"cert = {cert}")
        for folder in settings["find_links"]:
            cmd += ["--volume", f"{folder}:{folder}:ro"]
        if settings["find_links"]:
            pip_conf.append(f"find-links = {' '.join(settings['find_links'])}")
        conf = Path(tmp) / "pip.conf"
        conf.write_text("\n".join(pip_conf) + "\n")
        conf.chmod(0o644)
        Path(tmp).chmod(0o755)
        cmd += ["--volume", f"{conf}:/etc/pip.conf:ro", spec["context"]]
        log.info("building %s as %s", name, tag)
        subprocess.run(["podman", *cmd], cwd=REPO_ROOT, env=podman_env(), check=True)
    return tag
