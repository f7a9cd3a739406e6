# cjdns-formula. `make demo` and `make test` on a fresh Debian 12 machine, as root: they install
# the Debian packages they need, the venv (from Debian's python3) and the emulated qubes' root
# filesystem (cached in /var/cache/cjdns-formula-tests) themselves.
PYTHON ?= /usr/bin/python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP_INSTALL := -m pip install --quiet --disable-pip-version-check

# `make test-matrix`: the unit and functional tests on each Salt version, one venv each.
# 3007.13 is Qubes' (requirements.txt + constraints.txt); the others pin their own full set.
SALT_MATRIX ?= 3006.29 3007.13 3008.4
TEST_TOOLS  := pytest pytest-testinfra pytest-xdist cryptography PyYAML Jinja2

# Debian packages the tests and the demo use (gcc and python3-dev: Salt's timelib is compiled).
DEB_PACKAGES := python3 python3-venv python3-dev gcc git iproute2 nftables tcpdump util-linux \
                procps iputils-ping debootstrap systemd-container

.PHONY: test test-matrix demo bench venv deps rootfs clean

# Installs the missing ones only (no apt run when all are there).
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: requirements.txt constraints.txt tests/support/patch_salt.py | deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP_INSTALL) -r requirements.txt -c constraints.txt
	$(PY) tests/support/patch_salt.py
	touch $@

venv: $(VENV)/.installed

# The Debian 13 root filesystem of the emulated qubes (debootstrap; cached, see tests/emulation/vm).
rootfs: $(VENV)/.installed
	$(PY) tests/emulation/vm/rootfs.py

test: rootfs
	$(PY) -m pytest -q

# Salt 3007's PyPI release declares no dependencies, so it takes requirements.txt; 3006 and 3008
# declare theirs, and constraints-<major>.txt freezes them.
.venv-salt-%/.installed: requirements.txt constraints.txt constraints-3006.txt constraints-3008.txt tests/support/patch_salt.py | deps
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
	    .venv-salt-$$v/bin/python -m pytest -q -n 2 -m "not booted" tests/unit tests/functional >$$log 2>&1 \
	        || failed="$$failed $$v"; \
	    echo "Salt $$v: $$(tail -n 1 $$log)  (log: $$log)"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-matrix failed for Salt$$failed"; exit 1; fi

demo: rootfs
	$(PY) tests/demo.py

bench: rootfs
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .venv-salt-* demo-out bench/out
