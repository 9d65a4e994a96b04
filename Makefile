# The README's two commands: `make demo` and `make test`. Both create .venv in the repository root,
# install the pinned dependencies and the library, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test venv benchmark clean

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt NotADiagnosisLib/pyproject.toml Training/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e NotADiagnosisLib -e Training
	$(PY) -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/notadiagnosis demo

test: $(STAMP)
	$(PY) -m pytest

benchmark: $(STAMP)
	$(PY) Testing/Benchmarks/benchmark_inference.py
	$(PY) Testing/Benchmarks/benchmark_cohort.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
