# deepfleet: the two set-up commands of the README.
#   make demo   deploy to one disposable local host and print a real answer
#   make test   run the test suite (unit + real test hosts over SSH)
# Both create .venv and, on Debian/Ubuntu as root, install and start a Docker engine if none runs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo down test setup setup-test host-tools test-tools

demo: setup host-tools
	$(BIN)/deepfleet demo

down: setup
	$(BIN)/deepfleet demo --down

# The suite runs as two streams at once, since fleet tests mostly wait on their hosts: the unit tests
# then the rollout fleet (the longest module) and the Ray cluster in one, every other fleet module in
# the other (the two take about as long). The first stream's output is printed whole once both are
# done. `.venv/bin/python -m pytest` runs it all in one.
FIRST_STREAM_FLEET = tests/fleet/test_rollout.py tests/fleet/test_ray_cluster.py
test: setup-test test-tools
	@( $(BIN)/python -m pytest -p no:cacheprovider -m "not fleet"; unit=$$?; \
	   $(BIN)/python -m pytest -p no:cacheprovider $(FIRST_STREAM_FLEET); exit $$(( unit || $$? )) \
	 ) > .test-stream.log 2>&1 & stream=$$!; \
	$(BIN)/python -m pytest -m fleet $(FIRST_STREAM_FLEET:%=--ignore=%); fleet=$$?; \
	wait $$stream; first=$$?; echo "==== the other stream: unit tests, then $(FIRST_STREAM_FLEET)"; \
	cat .test-stream.log; echo "==== exit codes: unit+rollout+ray $$first, other fleet modules $$fleet"; \
	[ $$first = 0 ] && [ $$fleet = 0 ]

# setup: the control venv and what the demo builds with (the tiny model needs transformers).
# setup-test: plus the engines the tests run in-process (llama.cpp compiles) and the test tools.
setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml runtime/pyproject.toml runtime/constraints.txt runtime/constraints-cpu.txt
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	  else echo "deepfleet: $(PYTHON) cannot create virtualenvs; install python3-venv (Python >= 3.11)"; exit 1; fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint runtime/constraints-cpu.txt -e 'runtime[transformers]' -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	@# llama-cpp-python compiles llama.cpp from source (about 7 minutes on 2 cores; pip caches the wheel)
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" $(BIN)/pip install --quiet --constraint runtime/constraints-cpu.txt \
	  -e 'runtime[transformers,quantization,llamacpp]' -e '.[test]'
	touch $@

# host-tools: what the demo's disposable host needs: a Docker engine and debootstrap.
# test-tools adds what the test suite also runs for real: a redis-server (the gateways' limits store,
# started by the tests themselves), createrepo_c, dnf and rpmbuild (the bundle's dnf repository for
# Rocky/RHEL hosts, made and installed from in tests/bundle/test_rpms.py).
TOOLS ?= debootstrap:debootstrap dockerd:docker.io
TEST_TOOLS := $(TOOLS) redis-server:redis-server createrepo_c:createrepo-c dnf:dnf rpmbuild:rpm

test-tools:
	@$(MAKE) --no-print-directory host-tools TOOLS="$(TEST_TOOLS)"

host-tools:
	@missing=""; for tool in $(TOOLS); do \
	  command -v $${tool%%:*} >/dev/null || missing="$$missing $${tool#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> installing$$missing"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing debian-archive-keyring >/dev/null; \
	  else echo "deepfleet: please install$$missing (Debian/Ubuntu: apt-get install$$missing), then retry"; exit 1; fi; \
	fi; \
	if ! docker info >/dev/null 2>&1; then \
	  if [ "$$(id -u)" != 0 ]; then echo "deepfleet: the Docker engine is not running; start it (sudo systemctl start docker) and retry"; exit 1; fi; \
	  echo "==> starting the Docker engine"; \
	  systemctl start docker 2>/dev/null || (nohup dockerd >/var/log/dockerd.log 2>&1 &); \
	  for i in $$(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done; \
	  docker info >/dev/null 2>&1 || { echo "deepfleet: dockerd did not start; see /var/log/dockerd.log"; exit 1; }; \
	fi
