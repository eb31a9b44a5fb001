# One entry point for set-up and every routine job. `make run` and `make test` work on a fresh
# machine with only python3 (>= 3.11): they create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
# deepspeed (dev extra) installs without building any C++ op; its CPU path needs none
export DS_BUILD_OPS := 0

.PHONY: install run learn test test-containers bench bench-containers paper-shapes gpu-check images lint lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job: the whole pipeline (distill -> sft -> evaluate) through kfp.local on the tiny model, with the
# embedded local-tiny preset. Outputs, the MLflow store and KFP's files land in g1-work/.
run: $(STAMP)
	$(BIN)/g1 pipeline run --local --config local-tiny

# The recipe learning through the same pipeline (~35 min on 2 CPU cores): SFT reads the 2x2 2048 board, GRPO
# takes G1 past its teacher; the figures in docs/findings.md.
learn: $(STAMP)
	$(BIN)/g1 pipeline run --local --config local-learn

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/g1 gym bench --json

# The g1-cpu image built here from its Dockerfile with podman, on a Debian-package Python base made here
# (images/podman_build.py); Debian's podman, runc and debootstrap are installed first when missing (as root).
# An unchanged tree finds its image by content tag. out/images-local.yaml names the local tags.
IMAGE_TOOLS := podman runc debootstrap
images: $(STAMP)
	@missing=$$(for t in $(IMAGE_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi
	$(BIN)/python images/build.py build --engine podman --local-base --image g1-cpu --images-file out/images-local.yaml

# Every stage in its container (tests/test_containers.py): the image above, then the local-tiny DAG with each
# stage in it (artifacts in S3, runs in MLflow), the pod's hygiene inside the image, and a training stage's
# container killed mid-run and started again.
test-containers: images
	G1_CONTAINER_TESTS=1 $(BIN)/python -m pytest -q tests/test_containers.py

# Figures of the containers path (docs/containers.md): cold and warm build, image size, the local-tiny DAG in
# containers beside the same DAG as host processes, on one S3 and MLflow stack.
bench-containers: images
	$(BIN)/python images/bench.py --cold

# The g1-paper preset at its own shapes (840x640 screens, its pixel budget, all four games, 8,192-token prompts
# and answers) through every stage in containers, with the tiny model, the oracle teacher and cut step counts
# (images/paper_shapes.py lists each change). Image tokens per prompt and peak memory per stage:
# out/paper-shapes.json.
paper-shapes: images
	$(BIN)/python images/paper_shapes.py

# SFT and GRPO's GPU paths on the tiny model (docs/gpu.md); on a CPU-only machine its no-GPU mode. Where a
# folder .whl holds the wheels of `python images/build.py gpu-check-wheels` and no .venv exists (a GPU machine
# without network, that has python3 with a CUDA torch), it installs them beside that torch and uses it.
# Results: $OUT/gpu-check.json (default out/gpu-check/).
WHEEL_SITE := /tmp/g1-gpu-check-site
gpu-check:
	@if [ -d .whl ] && [ ! -x $(BIN)/python ]; then \
	  $(PYTHON) -m pip install -q --no-index --no-deps --no-compile --upgrade --target $(WHEEL_SITE) .whl/*.whl \
	  && PYTHONPATH=$(WHEEL_SITE):$(CURDIR) $(PYTHON) -m g1core.cli gpu-check; \
	else \
	  $(MAKE) --no-print-directory install && $(BIN)/g1 gpu-check; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check g1core components pipelines tests images/*.py
	$(BIN)/ruff format --check g1core components pipelines tests images/*.py
	$(BIN)/hadolint images/*/Dockerfile
	$(BIN)/g1 pipeline compile --out .compiled-check >/dev/null && diff -r .compiled-check pipelines/compiled; \
	  status=$$?; rm -rf .compiled-check; exit $$status

# Re-pin every version in constraints.txt from what the .venv holds now.
lock: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze | grep -v -E '^(-e |g1==|g1 @)' | sed 's/+cpu$$//'; } > constraints.lock
	mv constraints.lock constraints.txt

clean:
	rm -rf $(VENV) out g1-work .pytest_cache .ruff_cache .hypothesis
