# The two commands of the README: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Modules compiled with Cython: those with a .pxd beside them (setup.py)
PXD := $(wildcard */*.pxd)
BUILT := $(VENV)/.compiled-stamp

.PHONY: all install build depends test run bench clean FORCE

all: test

$(PY):
	python3 -m venv $(VENV) || { apt-get update -q && apt-get install -y -q python3-venv python3-dev gcc && python3 -m venv $(VENV); }

$(STAMP): $(PY) setup.py requirements.txt requirements-test.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

# An extension module older than its source would still be imported in its place: whenever a
# compiled module's .py or .pxd changes, it is compiled again, in place.
$(BUILT): $(STAMP) $(PXD) $(PXD:.pxd=.py) $(wildcard */*.h)
	$(PY) setup.py -q build_ext --inplace
	touch $(BUILT)

# and whenever one of the extension modules is missing
ifneq ($(words $(wildcard $(PXD:.pxd=.*.so))),$(words $(PXD)))
$(BUILT): FORCE
endif
FORCE:

install: $(BUILT)

build: $(BUILT)

depends: $(BUILT)
	$(PY) depends/services.py up

# Every test of every package, against the real MariaDB, Redis and Kafka broker.
test: depends
	VIABTC_REQUIRE_SERVICES=1 VIABTC_REQUIRE_COMPILED=1 $(PY) depends/run_tests.py $(TESTS)

# The whole exchange in one process, state under data/ (DATA=...), until Ctrl-C.  A pid file
# left by a kill -9 whose pid another program has taken since is removed first.
DATA ?= data
run: $(BUILT)
	@mkdir -p $(DATA)/log
	@$(PY) -m exchange.pidfile $(DATA)/exchange.pid
	$(PY) -c "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()" -n --pidfile $(DATA)/exchange.pid \
	    --logfile $(DATA)/log/twistd.log exchange --data $(DATA)

bench: $(BUILT)
	$(PY) bench/rpc_echo.py

clean:
	rm -rf $(VENV) _trial_temp* depends/run build
	rm -f $(PXD:.pxd=.*.so)
