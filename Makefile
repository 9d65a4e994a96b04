# The README's two commands: `make demo` and `make test`. Both create .venv in the repository root,
# install the pinned dependencies and the library, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test venv benchmark bundled-model clean

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
	$(PY) Testing/Benchmarks/benchmark_runtimes.py
	$(PY) Testing/Benchmarks/benchmark_inference.py
	$(PY) Testing/Benchmarks/benchmark_cohort.py
	$(PY) Testing/Benchmarks/benchmark_measure.py

# Re-export the bundled default model in place from its own files (.safetensors + card): writes its
# .onnx, .saliency.onnx, .safetensors and .json again, byte for byte the same unless the card or the exporter changed
# (the ONNX files up to the last bit of batch-norm folding on another CPU; see Training/README.md).
# After a card change (edit a copy, then CARD=copy.json), or a new VERSION=x.y.z, it rebinds all four;
# update notadiagnosis.weights' pinned sha256 with the printed hashes.
BUNDLED := NotADiagnosisLib/notadiagnosis/models/default
bundled-model: $(STAMP)
	$(VENV)/bin/nadtrain export --from-model $(BUNDLED).json --out $(BUNDLED) $(if $(CARD),--card $(CARD)) $(if $(VERSION),--version $(VERSION))

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
