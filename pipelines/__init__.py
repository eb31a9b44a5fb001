"""The Kubeflow DAGs, their compiler and the local runner. Compiled YAML lives in pipelines/compiled/."""
