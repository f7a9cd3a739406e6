# cjdns-formula. `make demo` and `make test` on a fresh Debian 12 machine (as root for the
# namespace-based parts). The venv is made from Debian's python3 so any user can run it.
PYTHON ?= /usr/bin/python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: test demo bench venv clean

$(VENV)/.installed: requirements.txt constraints.txt tests/support/patch_salt.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(PY) tests/support/patch_salt.py
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

demo: $(VENV)/.installed
	$(PY) tests/demo.py

bench: $(VENV)/.installed
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) demo-out bench/out
