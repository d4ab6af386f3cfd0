# The two set-up commands (see README):
#   make demo   installs what is needed and runs the main job on the local stack
#   make test   installs everything and runs the whole test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS := compress,eval,bench,lighteval,dev

.PHONY: install demo test lint unit integration clean

install: $(VENV)/.installed

# torch goes first with its exact pin: on these machines pip takes the local CPU build; an
# unpinned torch pulled by another package would fetch several GB of CUDA wheels instead.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt torch
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

demo: install
	$(BIN)/automation demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit -q

test: install lint
	bash scripts/install-browser.sh
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
