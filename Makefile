# The set-up contract: `make run` and `make test` work on a fresh clone.
# `make install` is the idempotent set-up step both use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.meshp2p-installed
LLAMA_CMAKE_ARGS := -DGGML_RPC=ON
# Arguments for `make run`, e.g. make run ARGS="--model path/to/model.gguf"
ARGS ?=
# `make run` serves the default model unless ARGS names what to serve.
DEFAULT_MODEL := gemma-3-270m-Q4_K_M
RUN_MODEL := $(if $(filter --model --model=% --client --standby,$(ARGS)),,--model $(DEFAULT_MODEL))

.PHONY: install run test check lint typecheck pytest bench bench-gateway bench-convergence \
	bench-route bench-affinity bench-transport bench-split bench-spec bench-threads bench-sim interop \
	interop-install clean \
	relay-install browser-install lab-install soak

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "meshp2p needs Python >= 3.11: run make PYTHON=python3.11 ..." >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "installing meshp2p (the first time this builds llama-cpp-python with RPC: ~4 min on 2 cores)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet -e '.[dev]'
	@# pip's wheel cache does not know CMAKE_ARGS: if a cached wheel lacks RPC, rebuild it.
	@$(VENV)/bin/meshp2p doctor || { \
		echo "rebuilding llama-cpp-python with $(LLAMA_CMAKE_ARGS)"; \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet --no-cache-dir \
			--force-reinstall --no-deps llama-cpp-python==0.3.36 && $(VENV)/bin/meshp2p doctor; }
	@# trio ships its own types; the stale stubs of trio-typing (a py-libp2p
	@# dependency, needed at run time) would shadow them for mypy.
	@rm -rf $(VENV)/lib/python*/site-packages/trio-stubs
	@touch $(STAMP)

run: install
	$(VENV)/bin/meshp2p node $(RUN_MODEL) $(ARGS)

lint: install
	$(VENV)/bin/ruff check meshp2p cli tests interop protocols docs/examples
	$(VENV)/bin/ruff format --check meshp2p cli tests interop protocols docs/examples

typecheck: install
	$(VENV)/bin/mypy

check: lint typecheck

# A real Nostr relay for the discovery tests, in a virtual environment of its own
# (its web stack must not mix with the project's dependencies).
RELAY_VENV := .venv-relay
RELAY_STAMP := $(RELAY_VENV)/.meshp2p-installed

relay-install: $(RELAY_STAMP)

$(RELAY_STAMP): Makefile
	@test -x $(RELAY_VENV)/bin/python || $(PYTHON) -m venv $(RELAY_VENV)
	$(RELAY_VENV)/bin/python -m pip install --quiet nostr-relay==1.14
	@touch $@

# Debian's Chromium for the console's browser tests (Playwright for Python, from the
# dev extras, drives it; it downloads no browser of its own). Needs root for apt-get.
browser-install:
	@bash tests/browser/install.sh

pytest: install relay-install browser-install lab-install
	@# pytest exits 5 when it collects no tests: not a failure of the build.
	$(VENV)/bin/pytest $(PYTEST_ARGS) || test $$? -eq 5

test: check pytest interop

# nftables for the network lab's NAT routers (tests/lab: namespaces, needs root).
lab-install:
	@bash tests/lab/install.sh

# 15 minutes of mixed load and random faults on a lab mesh (root; not part of `make test`):
# prints requests=N answered=A resumed=R errors=E hung=H and fails unless hung=0.
SOAK_SECONDS ?= 900
soak: install lab-install
	$(PY) tests/lab/soak.py --seconds $(SOAK_SECONDS)

# The js-libp2p interop peer: Node 22 and js-libp2p from npm (versions pinned by
# interop/package-lock.json), redis-server from Debian packages into interop/.deps.
INTEROP_STAMP := interop/node_modules/.meshp2p-installed

interop-install: $(INTEROP_STAMP)

$(INTEROP_STAMP): interop/package.json interop/package-lock.json interop/redis.py interop/install.sh
	PYTHON=$(PYTHON) interop/install.sh
	@touch $@

interop: install interop-install
	$(PY) interop/run.py

# Benchmarks print ratios against a baseline measured in the same run and
# write their numbers to docs/benchmarks/, which docs/performance.md quotes.
bench: bench-gateway bench-route bench-affinity bench-convergence bench-transport bench-split \
	bench-spec bench-threads bench-sim

bench-gateway: install
	$(PY) tests/bench/bench_gateway.py

bench-convergence: install
	$(PY) tests/bench/bench_convergence.py

bench-route: install
	$(PY) tests/bench/bench_route.py

bench-affinity: install
	$(PY) tests/bench/bench_affinity.py

bench-transport: install
	$(PY) tests/bench/bench_transport.py

bench-split: install
	$(PY) tests/bench/bench_split.py

# Speculative against plain decoding, solo and split; prints copy_ratio free_ratio split_rt_per_token.
bench-spec: install
	$(PY) tests/bench/bench_spec.py

bench-threads: install
	$(PY) tests/bench/bench_threads.py

bench-sim: install
	$(PY) tests/bench/bench_sim.py

clean:
	rm -rf $(VENV) $(RELAY_VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache interop/node_modules interop/.deps
