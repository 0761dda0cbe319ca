# fsev: `sudo make top` installs and runs the live view; `sudo make test` installs
# and runs the whole suite against the real kernel. Both need root.
PREFIX ?= /opt/fsev
VENV   := $(PREFIX)/venv
export FSEV_VENV := $(VENV)

.PHONY: install test top trace bench test-vm

install:
	@bash scripts/install.sh

test: install
	@bash scripts/run-tests.sh

top: install
	$(VENV)/bin/fsev top

trace: install
	$(VENV)/bin/fsev trace

test-vm: install
	FSEV_VM=1 $(VENV)/bin/pytest -p no:cacheprovider -v tests/vm

bench: install
	@bash scripts/run-bench.sh
