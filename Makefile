# fsev: `sudo make top` installs what fsev needs to run, and runs the live view;
# `sudo make test` installs that and what only the tests need (test-deps), and
# runs the whole suite against the real kernel. Both need root.
PREFIX ?= /opt/fsev
VENV   := $(PREFIX)/venv
export FSEV_VENV := $(VENV)

.PHONY: install test-deps test top trace bench test-vm

install:
	@bash scripts/install.sh

test-deps: install
	@bash scripts/install-test-deps.sh

test: test-deps
	@bash scripts/run-tests.sh

top: install
	$(VENV)/bin/fsev top

trace: install
	$(VENV)/bin/fsev trace

test-vm: test-deps
	FSEV_VM=1 $(VENV)/bin/pytest -p no:cacheprovider -v tests/vm

bench: test-deps
	@bash scripts/run-bench.sh
