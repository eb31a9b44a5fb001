"""Compile every DAG to KFP IR YAML and to Kubernetes-native Pipeline/PipelineVersion manifests."""

from __future__ import annotations

import logging
from pathlib import Path

from kfp import compiler
from kfp.compiler.compiler_utils import KubernetesManifestOptions

from g1core import __version__

log = logging.getLogger(__name__)
COMPILED = Path(__file__).resolve().parent / "compiled"


def compile_all(out_dir: str | Path = COMPILED, namespace: str = "kubeflow") -> list[Path]:
    """Write ``<name>.yaml`` (IR, for the KFP UI/API) and ``<name>.k8s.yaml`` (``kubectl apply``)."""
    from .g1_pipeline import PIPELINES

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in PIPELINES.items():
        ir = out / f"{name}.yaml"
        compiler.Compiler().compile(fn, str(ir))
        k8s = out / f"{name}.k8s.yaml"
        options = KubernetesManifestOptions(
            pipeline_name=name.replace("_", "-"),
            pipeline_display_name=name.replace("_", " "),
            pipeline_version_name=f"{name.replace('_', '-')}-v{__version__.replace('.', '-')}",
            namespace=namespace,
            include_pipeline_manifest=True,
        )
        compiler.Compiler().compile(
            fn, str(k8s), kubernetes_manifest_options=options, kubernetes_manifest_format=True
        )
        written += [ir, k8s]
        log.info("compiled %s -> %s, %s", name, ir, k8s)
    return written
