# scratchdet: `make demo` trains and evaluates the demo detector on the embedded data,
# `make test` runs the test suite. Both create .venv (Python 3.10 + requirements.txt)
# when it is missing or older than requirements.txt / setup.py.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	@set -e; py=$$(bash tools/find_python310.sh); \
	if [ ! -d $(VENV)/lib/python3.10/site-packages/torch ]; then bash tools/check_disk.sh . 7; fi; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then \
	  rm -rf $(VENV); echo "creating $(VENV) with $$py"; $$py -m venv $(VENV); fi
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# --overwrite: a second `make demo` trains again into output/demo (tools/demo.py refuses a
# directory with checkpoints without it)
demo: $(STAMP)
	$(PY) tools/demo.py --output output/demo --overwrite

test: $(STAMP)
	$(PY) -m pytest tests

clean:
	rm -rf output
