"""Compile every DAG to KFP IR YAML and to Kubernetes-native Pipeline/PipelineVersion manifests."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from kfp import compiler
from kfp.compiler.compiler_utils import KubernetesManifestOptions

from .g1_pipeline import PodSettings

log = logging.getLogger(__name__)
COMPILED = Path(__file__).resolve().parent / "compiled"


def compile_ir(path: str | Path, settings: PodSettings = PodSettings(), name: str = "g1_pipeline") -> Path:  # noqa: B008
    """The KFP IR of pipeline ``name`` (for the KFP UI or API) with ``settings``, written to ``path``."""
    from .g1_pipeline import PIPELINES

    compiler.Compiler().compile(PIPELINES[name](settings), str(path))
    return Path(path)


def compile_all(
    out_dir: str | Path = COMPILED,
    namespace: str = "kubeflow",
    settings: PodSettings = PodSettings(),  # noqa: B008 (frozen)
) -> list[Path]:
    """Write ``<name>.yaml`` (IR, for the KFP UI/API) and ``<name>.k8s.yaml`` (``kubectl apply``).

    The PipelineVersion is named by the spec's content (``<pipeline>-<hash>``): KFP's webhook refuses a
    changed spec under an existing version, so an edited pipeline must come as a new version, and an
    unchanged one re-applies as is."""
    from .g1_pipeline import PIPELINES
    from .kfp_api import version_name

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in PIPELINES.items():
        ir = compile_ir(out / f"{name}.yaml", settings, name)
        k8s = out / f"{name}.k8s.yaml"
        pipeline = name.replace("_", "-")
        options = KubernetesManifestOptions(
            pipeline_name=pipeline,
            pipeline_display_name=name.replace("_", " "),
            pipeline_version_name=version_name(pipeline, list(yaml.safe_load_all(ir.read_text()))),
            namespace=namespace,
            include_pipeline_manifest=True,
        )
        compiler.Compiler().compile(
            make(settings), str(k8s), kubernetes_manifest_options=options, kubernetes_manifest_format=True
        )
        written += [ir, k8s]
        log.info("compiled %s -> %s, %s", name, ir, k8s)
    return written
