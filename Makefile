# The two commands of the README: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: all install depends test run bench clean

all: test

$(PY):
	python3 -m venv $(VENV) || { apt-get update -q && apt-get install -y -q python3-venv python3-dev gcc && python3 -m venv $(VENV); }

$(STAMP): $(PY) setup.py requirements.txt requirements-test.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

install: $(STAMP)

depends: $(STAMP)
	$(PY) depends/services.py up

# Every test of every package, against the real MariaDB, Redis and Kafka broker.
test: depends
	VIABTC_REQUIRE_SERVICES=1 $(PY) depends/run_tests.py $(TESTS)

# The whole exchange in one process, state under data/ (DATA=...), until Ctrl-C.
DATA ?= data
run: $(STAMP)
	@mkdir -p $(DATA)/log
	$(PY) -c "from twisted.scripts.twistd import run; run()" -n --pidfile $(DATA)/exchange.pid \
	    --logfile $(DATA)/log/twistd.log exchange --data $(DATA)

bench: $(STAMP)
	$(PY) bench/rpc_echo.py

clean:
	rm -rf $(VENV) _trial_temp* depends/run
