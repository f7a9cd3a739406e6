# cjdns-formula. `make demo` and `make test` on a fresh Debian 12 machine (as root for the
# namespace-based parts). The venv is made from Debian's python3 so any user can run it.
PYTHON ?= /usr/bin/python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP_INSTALL := -m pip install --quiet --disable-pip-version-check

# `make test-matrix`: the unit and functional tests on each Salt version, one venv each.
# 3007.13 is Qubes' (requirements.txt + constraints.txt); the others pin their own full set.
SALT_MATRIX ?= 3006.29 3007.13 3008.4
TEST_TOOLS  := pytest pytest-testinfra pytest-xdist cryptography PyYAML Jinja2

.PHONY: test test-matrix demo bench venv clean

$(VENV)/.installed: requirements.txt constraints.txt tests/support/patch_salt.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP_INSTALL) -r requirements.txt -c constraints.txt
	$(PY) tests/support/patch_salt.py
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

# Salt 3007's PyPI release declares no dependencies, so it takes requirements.txt; 3006 and 3008
# declare theirs, and constraints-<major>.txt freezes them.
.venv-salt-%/.installed: requirements.txt constraints.txt constraints-3006.txt constraints-3008.txt tests/support/patch_salt.py
	test -x .venv-salt-$*/bin/python || $(PYTHON) -m venv .venv-salt-$*
	if [ "$(firstword $(subst ., ,$*))" = 3007 ]; then \
	    .venv-salt-$*/bin/python $(PIP_INSTALL) -r requirements.txt -c constraints.txt "salt==$*"; \
	else \
	    .venv-salt-$*/bin/python $(PIP_INSTALL) -c constraints-$(firstword $(subst ., ,$*)).txt \
	        "salt==$*" $(TEST_TOOLS); \
	fi
	.venv-salt-$*/bin/python tests/support/patch_salt.py
	touch $@

test-matrix: $(foreach v,$(SALT_MATRIX),.venv-salt-$(v)/.installed)
	@failed=; for v in $(SALT_MATRIX); do \
	    log=.venv-salt-$$v/pytest.log; \
	    .venv-salt-$$v/bin/python -m pytest -q -n 2 tests/unit tests/functional >$$log 2>&1 \
	        || failed="$$failed $$v"; \
	    echo "Salt $$v: $$(tail -n 1 $$log)  (log: $$log)"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-matrix failed for Salt$$failed"; exit 1; fi

demo: $(VENV)/.installed
	$(PY) tests/demo.py

bench: $(VENV)/.installed
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .venv-salt-* demo-out bench/out
