# One entry point for set-up and every routine job. `make run` and `make test` work on a fresh
# machine with only python3 (>= 3.11): they create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install run test bench lint lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job. Until the pipeline stages land, it plays the protocol on every game with the
# random and oracle policies (spec section 7) and writes a screen of each game to out/.
run: $(STAMP)
	mkdir -p out
	$(BIN)/g1 gym play --game all --policy random --runs 10 --steps 100
	$(BIN)/g1 gym play --game all --policy oracle --runs 10 --steps 100
	for g in 2048 shisen-sho shisen-sho-cifar10 swap; do $(BIN)/g1 gym show --game $$g --seed 0 -o out/$$g.png; done

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/g1 gym bench --json

lint: $(STAMP)
	$(BIN)/ruff check g1core tests
	$(BIN)/ruff format --check g1core tests

# Re-pin every version in constraints.txt from what the .venv holds now.
lock: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze | grep -v -E '^(-e |g1==|g1 @)' | sed 's/+cpu$$//'; } > constraints.lock
	mv constraints.lock constraints.txt

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .hypothesis
