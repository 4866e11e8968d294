"""Tests for utils.config: field types, defaults, error messages and the shared sections."""

import json
import os
from decimal import Decimal

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from utils import config, testing
from utils.config import (
    ALERT, CLI, HTTP_SERVER, KAFKA_CONSUMER, LOG, MONITOR, MYSQL, PLAIN_SERVER, PROCESS,
    REDIS_SENTINEL, RPC_CLIENT, RPC_SERVER, WEBSOCKET_SERVER, Address, Bool, Brokers,
    ConfigError, ConfigSection, DecimalStr, HostPort, HttpUrl, Int, List, Real, Section, Str,
    UInt, load, load_data)

ACCESSHTTP_CONFIG = {
    "debug": True,
    "process": {"file_limit": 1000000, "core_limit": 1000000000},
    "log": {"path": "/var/log/trade/accesshttp", "flag": "fatal,error,warn,info,debug,trace",
            "num": 10},
    "alert": {"host": "accesshttp", "addr": "127.0.0.1:4444"},
    "svr": {"bind": ["tcp@0.0.0.0:8080"], "max_pkg_size": 102400},
    "monitor": {"bind": "tcp@0.0.0.0:8081", "max_pkg_size": 1024},
    "worker_num": 4,
    "timeout": 1.0,
    "matchengine": {"name": "matchengine", "addr": ["tcp@127.0.0.1:7316"],
                    "max_pkg_size": 2000000},
}

ACCESSHTTP_SCHEMA = Section({
    "process": PROCESS,
    "log": LOG,
    "alert": ALERT,
    "svr": HTTP_SERVER,
    "monitor": PLAIN_SERVER,
    "matchengine": RPC_CLIENT,
    "timeout": Real(1.0),
    "worker_num": Int(1, min=1),
})


class _Recorder:
    """Collects the messages of warning events from utils.config."""

    def __init__(self, test):
        self.events = []
        test.patch(config, "log", Logger(namespace="utils.config",
                                         observer=self.events.append))

    @property
    def messages(self):
        from twisted.logger import formatEvent
        return [formatEvent(event) for event in self.events]


class FieldTypeTests(SynchronousTestCase):

    def check_error(self, schema, data, message):
        with self.assertRaises(ConfigError) as caught:
            load_data(data, schema, "conf/config.json")
        self.assertEqual(str(caught.exception), "conf/config.json: " + message)

    def test_int_is_strict(self):
        """An integer key refuses booleans, reals, strings and null."""
        schema = Section({"n": Int()})
        self.assertEqual(load_data({"n": 5}, schema).n, 5)
        for value, name in [(True, "boolean"), (1.0, "real"), ("1", "string"), (None, "null")]:
            self.check_error(schema, {"n": value}, "n: expected an integer, got " + name)

    def test_int_bounds(self):
        """Bounds are checked and named in the message."""
        self.check_error(Section({"n": UInt()}), {"n": -1}, "n: -1 is less than 0")
        self.check_error(Section({"n": Int(max=3)}), {"n": 4}, "n: 4 is greater than 3")

    def test_real_accepts_integers(self):
        """A real key takes JSON integers or reals and stores a float."""
        schema = Section({"x": Real()})
        value = load_data({"x": 2}, schema).x
        self.assertEqual((value, type(value)), (2.0, float))
        self.check_error(schema, {"x": False}, "x: expected a number, got boolean")

    def test_timer_periods_above_zero(self):
        """A timer's period (accessws' polls, marketprice's flush) must be above 0: 0
        would poll without pause, a negative value stop the daemon at start; the error
        names the key."""
        from accessws import config as accessws_config
        from marketprice import config as marketprice_config
        for module, key in ((accessws_config, "price_interval"),
                            (marketprice_config, "flush_interval")):
            with open(os.path.join(testing.ROOT, module.__name__.split(".")[0], "conf",
                                   "config.json")) as f:
                data = json.load(f)
            for value in (0, -1):
                data[key] = value
                with self.assertRaises(ConfigError) as caught:
                    module.load_data(data)
                self.assertIn("%s: %r must be greater than 0" % (key, float(value)),
                              str(caught.exception))
            data[key] = 0.25
            self.assertEqual(module.load_data(data)[key], 0.25)

    def test_bool_and_str(self):
        """Booleans must be true/false and strings strings."""
        schema = Section({"b": Bool(), "s": Str(choices=("a", "b"))})
        loaded = load_data({"b": False, "s": "a"}, schema)
        self.assertEqual((loaded.b, loaded.s), (False, "a"))
        self.check_error(schema, {"b": 1, "s": "a"}, "b: expected a boolean, got integer")
        self.check_error(schema, {"b": True, "s": "c"}, "s: 'c' is not one of 'a', 'b'")

    def test_str_max_length(self):
        """max_length counts UTF-8 bytes."""
        schema = Section({"s": Str(max_length=3)})
        self.assertEqual(load_data({"s": "abc"}, schema).s, "abc")
        self.check_error(schema, {"s": "\u00e9\u00e9"}, "s: '\u00e9\u00e9' is longer than 3 bytes")

    def test_brokers(self):
        """Kafka broker lists: each entry a broker address, the error naming the key."""
        schema = Section({"brokers": Brokers()})
        for value in ("127.0.0.1:9092", "k1:9092, k2:9093", "kafka", "[::1]:9092"):
            self.assertEqual(load_data({"brokers": value}, schema).brokers, value)
        self.check_error(schema, {"brokers": ""}, "brokers: must not be empty")
        self.check_error(schema, {"brokers": " , "}, "brokers: names no broker")
        self.check_error(schema, {"brokers": "k1:9092,k2:x"},
                         "brokers: 'k2:x' is not a broker address (host:port)")
        self.check_error(schema, {"brokers": ["k1:9092"]},
                         "brokers: expected a string of Kafka broker addresses, got array")

    def test_http_url(self):
        """URLs of http or https with a host; anything else names the key."""
        schema = Section({"url": HttpUrl()})
        for value in ("http://127.0.0.1:8080", "https://auth.example.com/user/auth?x=1",
                      "HTTP://[::1]:80/"):
            self.assertEqual(load_data({"url": value}, schema).url, value)
        for value in ("127.0.0.1:8080", "not a url", "ftp://host/", "http://", "http://[::1",
                      "http://h:abc/", "http://h:70000/"):
            self.check_error(schema, {"url": value},
                             "url: %r is not an http:// or https:// URL" % value)
        self.check_error(schema, {"url": ""}, "url: must not be empty")

    def test_decimal_string(self):
        """Decimal strings become Decimal values; numbers and junk are refused."""
        schema = Section({"min_amount": DecimalStr("0.01"), "merge": List(DecimalStr())})
        loaded = load_data({"merge": ["0", "0.00000001"]}, schema)
        self.assertEqual(loaded.min_amount, Decimal("0.01"))
        self.assertEqual(loaded.merge, (Decimal("0"), Decimal("1e-8")))
        self.check_error(schema, {"merge": [0.1]}, "merge[0]: expected a decimal string, got real")
        self.check_error(schema, {"merge": ["NaN"]}, "merge[0]: invalid decimal 'NaN'")

    def test_required_and_defaults(self):
        """A field without default is required; others take their default when absent."""
        schema = Section({"a": Str(), "b": Int(7)})
        self.assertEqual(load_data({"a": "x"}, schema).b, 7)
        self.check_error(schema, {"b": 1}, "a: required key missing")

    def test_nested_paths(self):
        """Errors inside arrays of sections name the whole key path."""
        schema = Section({"markets": List(Section({
            "name": Str(), "stock": Section({"name": Str(), "prec": Int(min=0)})}),
            non_empty=True)})
        data = {"markets": [{"name": "A", "stock": {"name": "BTC", "prec": 8}},
                            {"name": "B", "stock": {"name": "BTC", "prec": "8"}}]}
        self.check_error(schema, data, "markets[1].stock.prec: expected an integer, got string")
        self.check_error(schema, {"markets": []}, "markets: must not be an empty array")
        loaded = load_data(data | {"markets": data["markets"][:1]}, schema)
        self.assertEqual(loaded.markets[0].stock.prec, 8)

    def test_optional_section_defaults(self):
        """An absent optional section is built from its defaults; a wrong type is an error."""
        schema = Section({"process": PROCESS})
        loaded = load_data({}, schema)
        self.assertEqual(loaded.process.to_dict(), {"file_limit": 0, "core_limit": 0})
        self.check_error(schema, {"process": []}, "process: expected an object, got array")

    def test_optional_copy(self):
        """optional() copies a section; absent, it is None when some of its keys are required."""
        schema = Section({"db": MYSQL.optional().extend({"port": Int(3307)})})
        self.assertIsNone(load_data({}, Section({"x": Int(None)})).x)
        self.assertTrue(MYSQL.required)
        self.assertIsNone(load_data({}, schema).db)
        with self.assertRaises(ConfigError) as caught:
            load_data({"db": {}}, schema, "c.json")
        self.assertEqual(str(caught.exception), "c.json: db.host: required key missing")
        loaded = load_data({"db": {"host": "h", "user": "u", "pass": "p", "name": "n"}}, schema)
        self.assertEqual(loaded.db.port, 3307)

    def test_required_section_missing(self):
        """A missing required section is reported by name."""
        self.check_error(Section({"log": LOG}), {}, "log: required key missing")
        self.check_error(Section({"db_log": MYSQL}), {"db_log": {"user": "u"}},
                         "db_log.host: required key missing")

    def test_top_level_must_be_object(self):
        """The document itself must be a JSON object."""
        with self.assertRaises(ConfigError) as caught:
            load_data([1], Section({}), "c.json")
        self.assertEqual(str(caught.exception),
                         "c.json: the configuration must be a JSON object, got array")

    def test_unknown_keys_warned(self):
        """Unknown keys are ignored but each one is reported with its path."""
        recorder = _Recorder(self)
        loaded = load_data({"a": 1, "typo": 2, "s": {"x": 1, "y": 2}},
                           Section({"a": Int(), "s": Section({"x": Int()})}), "c.json")
        self.assertEqual(dict(loaded.s), {"x": 1})
        self.assertEqual(recorder.messages,
                         ["c.json: s.y: unknown key ignored", "c.json: typo: unknown key ignored"])
        self.assertEqual({event["log_level"].name for event in recorder.events}, {"warn"})


class SectionObjectTests(SynchronousTestCase):

    def test_read_only(self):
        """Loaded sections refuse assignment and report unknown attributes clearly."""
        loaded = load_data({"a": 1}, Section({"a": Int()}))
        self.assertIsInstance(loaded, ConfigSection)
        self.assertRaises(AttributeError, setattr, loaded, "a", 2)
        self.assertRaises(AttributeError, getattr, loaded, "b")
        self.assertEqual(loaded["a"], 1)
        self.assertEqual(list(loaded), ["a"])

    def test_to_dict(self):
        """to_dict gives plain nested data."""
        loaded = load_data({"l": [{"x": 1}], "h": "127.0.0.1:1"},
                           Section({"l": List(Section({"x": Int()})),
                                    "h": config.HostPortField()}))
        self.assertEqual(loaded.to_dict(), {"l": [{"x": 1}], "h": HostPort("127.0.0.1", 1)})


class AddressTests(SynchronousTestCase):

    def check_error(self, schema, data, message):
        with self.assertRaises(ConfigError) as caught:
            load_data(data, schema, "conf/config.json")
        self.assertTrue(str(caught.exception).startswith("conf/config.json: " + message),
                        str(caught.exception))

    def test_address(self):
        """Address keys keep the string once network.address accepted it."""
        schema = Section({"cli": CLI})
        self.assertEqual(load_data({"cli": "tcp@127.0.0.1:7317"}, schema).cli,
                         "tcp@127.0.0.1:7317")
        self.check_error(schema, {"cli": "tcp@x"}, "cli: invalid address 'tcp@x'")
        # said once
        with self.assertRaises(ConfigError) as caught:
            load_data({"cli": "tcp@x"}, schema, "conf/config.json")
        self.assertEqual(str(caught.exception),
                         "conf/config.json: cli: invalid address 'tcp@x': expected host:port")
        self.check_error(schema, {"cli": 7317}, "cli: expected an address string, got integer")

    def test_address_kinds(self):
        """An address field can restrict the socket type."""
        schema = Section({"a": Address(kinds=("tcp",))})
        self.check_error(schema, {"a": "udp@127.0.0.1:1"},
                         "a: address 'udp@127.0.0.1:1' must be of type tcp")

    def test_address_list(self):
        """A bind is one string or a non-empty array; errors name the array index."""
        schema = Section({"svr": RPC_SERVER})
        loaded = load_data({"svr": {"bind": "tcp@0.0.0.0:7316", "max_pkg_size": 10240}}, schema)
        self.assertEqual(loaded.svr.bind, ("tcp@0.0.0.0:7316",))
        loaded = load_data({"svr": {"bind": ["tcp@0.0.0.0:7316", "udp@0.0.0.0:7316"],
                                    "max_pkg_size": 10240}}, schema)
        self.assertEqual(loaded.svr.bind, ("tcp@0.0.0.0:7316", "udp@0.0.0.0:7316"))
        self.assertTrue(loaded.svr.heartbeat_check)
        self.check_error(schema, {"svr": {"bind": ["tcp@0.0.0.0:1", "tcp@x"], "max_pkg_size": 1}},
                         "svr.bind[1]: invalid address 'tcp@x'")
        self.check_error(schema, {"svr": {"bind": [], "max_pkg_size": 1}},
                         "svr.bind: must not be an empty array")
        self.check_error(schema, {"svr": {"bind": [1], "max_pkg_size": 1}},
                         "svr.bind[0]: expected an address string")
        self.check_error(schema, {"svr": {"bind": "tcp@0.0.0.0:1"}},
                         "svr.max_pkg_size: required key missing")

    def test_alert_address(self):
        """alert.addr is a numeric IPv4 ip:port."""
        loaded = load_data({"alert": {"host": "me", "addr": "127.0.0.1:4444"}},
                           Section({"alert": ALERT}))
        self.assertEqual(loaded.alert.addr, HostPort("127.0.0.1", 4444))
        self.assertEqual(str(loaded.alert.addr), "127.0.0.1:4444")
        for bad in ["localhost:4444", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "::1:4444",
                    "127.0.0.1:x"]:
            self.check_error(Section({"alert": ALERT}),
                             {"alert": {"host": "me", "addr": bad}},
                             "alert.addr: invalid IPv4 address {!r}".format(bad))

    def test_redis_sentinel(self):
        """Sentinel addresses are a non-empty array of host:port strings."""
        schema = Section({"redis": REDIS_SENTINEL})
        loaded = load_data({"redis": {"name": "mymaster",
                                      "addr": ["127.0.0.1:26381", "sentinel-b:26382"]}}, schema)
        self.assertEqual(loaded.redis.addr, (HostPort("127.0.0.1", 26381),
                                             HostPort("sentinel-b", 26382)))
        self.assertEqual(loaded.redis.db, 0)
        self.check_error(schema, {"redis": {"name": "m", "addr": "127.0.0.1:1"}},
                         "redis.addr: expected an array, got string")
        self.check_error(schema, {"redis": {"name": "m", "addr": ["127.0.0.1"]}},
                         "redis.addr[0]: invalid host:port '127.0.0.1'")


class SharedSectionTests(SynchronousTestCase):

    def test_accesshttp_example(self):
        """The original accesshttp example config loads with the documented defaults."""
        recorder = _Recorder(self)
        loaded = load_data(ACCESSHTTP_CONFIG, ACCESSHTTP_SCHEMA, "accesshttp.json")
        self.assertEqual(recorder.messages, ["accesshttp.json: debug: unknown key ignored"])
        self.assertEqual(loaded.log.to_dict(), {
            "path": "/var/log/trade/accesshttp", "flag": "fatal,error,warn,info,debug,trace",
            "shift": "size", "pid": True, "fork": True, "max": 100000000, "num": 10, "keep": 7})
        self.assertEqual(loaded.svr.keep_alive, 3600)
        self.assertEqual(loaded.monitor.bind, ("tcp@0.0.0.0:8081",))
        self.assertEqual(loaded.matchengine.to_dict(), {
            "name": "matchengine", "addr": ["tcp@127.0.0.1:7316"], "max_pkg_size": 2000000,
            "buf_limit": 0, "read_mem": 0, "write_mem": 0, "reconnect_timeout": 1.0,
            "heartbeat_timeout": 3.0, "max_request_size": 10240})
        self.assertEqual((loaded.timeout, loaded.worker_num), (1.0, 4))

    def test_log_shift_words(self):
        """log.shift is case-insensitive and unknown words mean daily files."""
        for word, shift in [("SIZE", "size"), ("Hour", "hour"), ("min", "min"), ("day", "day"),
                            ("week", "day")]:
            loaded = load_data({"log": {"path": "p", "flag": "", "shift": word}},
                               Section({"log": LOG}))
            self.assertEqual(loaded.log.shift, shift)

    def test_rpc_client_timeouts(self):
        """reconnect_timeout 0 means 1 s; heartbeat_timeout 0 means 3 s, clamped to [2, 600]."""
        base = {"name": "me", "addr": "tcp@127.0.0.1:7316", "max_pkg_size": 1}
        cases = [({}, 1.0, 3.0), ({"reconnect_timeout": 0.5, "heartbeat_timeout": 1}, 0.5, 2.0),
                 ({"heartbeat_timeout": 5}, 1.0, 5.0), ({"heartbeat_timeout": 1000}, 1.0, 600.0),
                 ({"reconnect_timeout": -1, "heartbeat_timeout": -1}, 1.0, 3.0)]
        for extra, reconnect, heartbeat in cases:
            loaded = load_data({"c": base | extra}, Section({"c": RPC_CLIENT}))
            self.assertEqual((loaded.c.reconnect_timeout, loaded.c.heartbeat_timeout),
                             (reconnect, heartbeat), extra)

    def test_rpc_client_needs_stream_address(self):
        """A backend client cannot use a datagram address."""
        with self.assertRaises(ConfigError) as caught:
            load_data({"c": {"name": "me", "addr": ["udp@127.0.0.1:7316"], "max_pkg_size": 1}},
                      Section({"c": RPC_CLIENT}), "x.json")
        self.assertIn("x.json: c.addr[0]: address 'udp@127.0.0.1:7316' must be of type",
                      str(caught.exception))

    def test_servers_take_the_socket_types_they_serve(self):
        """An RPC server listens on stream and datagram sockets; an HTTP or websocket
        server, a monitor port and the CLI on stream sockets; no server on seqpacket."""
        def bind(schema, address):
            data = {"bind": [address], "max_pkg_size": 1}
            return load_data({"s": data}, Section({"s": schema}), "x.json")
        for address in ("tcp@127.0.0.1:1", "udp@127.0.0.1:1", "stream@/s", "dgram@/d"):
            bind(RPC_SERVER, address)
            bind(PLAIN_SERVER, address)
        for schema in (HTTP_SERVER, WEBSOCKET_SERVER, MONITOR):
            bind(schema, "tcp@127.0.0.1:1")
            bind(schema, "stream@/s")
            with self.assertRaises(ConfigError) as caught:
                bind(schema, "udp@127.0.0.1:1")
            self.assertIn("x.json: s.bind[0]: address 'udp@127.0.0.1:1' must be of type tcp "
                          "or stream", str(caught.exception))
        with self.assertRaises(ConfigError):
            bind(RPC_SERVER, "seqpacket@/q")
        with self.assertRaises(ConfigError):
            load_data({"cli": "udp@127.0.0.1:1"}, Section({"cli": CLI}))

    def test_websocket_mysql_kafka_defaults(self):
        """The remaining shared sections fill in the original's defaults."""
        loaded = load_data({
            "svr": {"bind": "stream@/tmp/accessws.sock", "max_pkg_size": 102400},
            "db": {"host": "127.0.0.1", "user": "u", "pass": "p", "name": "trade_log"},
            "orders": {"brokers": "127.0.0.1:9092", "topic": "orders"},
        }, Section({"svr": WEBSOCKET_SERVER, "db": MYSQL, "orders": KAFKA_CONSUMER}))
        self.assertEqual((loaded.svr.keep_alive, loaded.svr.protocol, loaded.svr.origin),
                         (3600, "chat", ""))
        self.assertEqual((loaded.db.port, loaded.db.charset), (3306, "utf8"))
        self.assertEqual((loaded.orders.partition, loaded.orders.limit, loaded.orders.offset),
                         (0, 1000, 0))


class FileTests(SynchronousTestCase):

    def write(self, text, mode="w"):
        path = self.mktemp()
        with open(path, mode) as f:
            f.write(text)
        return path

    def test_load_file(self):
        """load reads a JSON file and validates it."""
        path = self.write(json.dumps(ACCESSHTTP_CONFIG))
        self.assertEqual(load(path, ACCESSHTTP_SCHEMA).svr.max_pkg_size, 102400)

    def test_error_names_file(self):
        """Validation errors start with the file name."""
        path = self.write(json.dumps({"log": {"flag": "x"}}))
        with self.assertRaises(ConfigError) as caught:
            load(path, Section({"log": LOG}))
        self.assertEqual(str(caught.exception), path + ": log.path: required key missing")

    def test_malformed_json(self):
        """Syntax errors name the line and the column."""
        path = self.write('{\n  "a": 1\n  "b": 2\n}\n')
        with self.assertRaises(ConfigError) as caught:
            load(path, Section({}))
        self.assertEqual(str(caught.exception),
                         path + ": line 3 column 3: Expecting ',' delimiter")

    def test_non_json_numbers(self):
        """NaN, Infinity and overflowing reals are not JSON and are refused."""
        for text in ['{"a": NaN}', '{"a": -Infinity}', '{"a": 1e400}']:
            with self.assertRaises(ConfigError):
                load(self.write(text), Section({"a": Real()}))

    def test_missing_file(self):
        """An unreadable file is a ConfigError naming the path."""
        path = os.path.join(self.mktemp(), "none.json")
        with self.assertRaises(ConfigError) as caught:
            load(path, Section({}))
        self.assertEqual(str(caught.exception), path + ": cannot read: No such file or directory")

    def test_bad_utf8(self):
        """A file that is not UTF-8 is refused."""
        path = self.write(b'{"a": "\xff"}', "wb")
        with self.assertRaises(ConfigError) as caught:
            load(path, Section({"a": Str()}))
        self.assertEqual(str(caught.exception), path + ": not valid UTF-8 at byte 7")


class ValueBoundTests(SynchronousTestCase):
    """Values the daemons cannot run with are refused when the config is read, naming the
    key, rather than starting a daemon that fails later (every packet refused, a request
    that never ends, a timer that cannot be set)."""

    def configs(self):
        import importlib
        redis = {"name": "m", "addr": ["127.0.0.1:26379"], "db": 0}
        for name, data, _ in testing.exchange_configs("127.0.0.1:9092", "l", "h", redis):
            yield name, data, importlib.import_module(name + ".config")

    def refused(self, loader, data, path, message):
        with self.assertRaises(ConfigError) as caught:
            loader.load_data(data, "config.json")
        self.assertEqual(str(caught.exception), "config.json: %s: %s" % (path, message))

    def test_each_daemon(self):
        for name, data, loader in self.configs():
            loader.load_data(data, "config.json")       # as made: accepted
            svr = data["svr"]
            for key, value, message in [
                    ("max_pkg_size", 0, "0 is less than 1"),
                    ("read_mem", 2 ** 31, "2147483648 is greater than 2147483647"),
                    ("write_mem", 2 ** 31, "2147483648 is greater than 2147483647"),
                    ("buf_limit", 2 ** 64, "18446744073709551616 does not fit in 64 bits")]:
                self.refused(loader, dict(data, svr=dict(svr, **{key: value})),
                             "svr." + key, message)
            log = dict(data["log"], keep=10 ** 6)
            self.refused(loader, dict(data, log=log), "log.keep",
                         "1000000 is greater than 100000")
            for backend in ("matchengine", "readhistory", "marketprice"):
                if backend in data and name != backend:
                    section = dict(data[backend], max_pkg_size=0)
                    self.refused(loader, dict(data, **{backend: section}),
                                 backend + ".max_pkg_size", "0 is less than 1")

    def test_module_keys(self):
        loaders = {name: (data, loader) for name, data, loader in self.configs()}
        data, loader = loaders["accesshttp"]
        self.refused(loader, dict(data, timeout=-1), "timeout", "-1.0 is less than 0.0")
        loader.load_data(dict(data, timeout=0), "config.json")
        data, loader = loaders["accessws"]
        self.refused(loader, dict(data, backend_timeout=-1), "backend_timeout",
                     "-1.0 is less than 0.0")
        self.refused(loader, dict(data, orders=dict(data["orders"], partition=2 ** 31)),
                     "orders.partition", "2147483648 is greater than 2147483647")
        data, loader = loaders["matchengine"]
        self.refused(loader, dict(data, commit_window=1e30), "commit_window",
                     "1e+30 is greater than 1.0")
        self.refused(loader, dict(data, commit_stall=0), "commit_stall",
                     "0.0 must be greater than 0.0")
        self.refused(loader, dict(data, db_history=dict(data["db_history"], charset="foo")),
                     "db_history.charset", "unknown character set 'foo'")
        for charset in ("utf8", "utf8mb4", "latin1"):
            loader.load_data(dict(data, db_log=dict(data["db_log"], charset=charset)),
                             "config.json")
        data, loader = loaders["marketprice"]
        for key, value, top in [("sec_max", 2 ** 31, 6048000), ("min_max", 10 ** 7, 5256000),
                                ("hour_max", 10 ** 6, 876000)]:
            self.refused(loader, dict(data, **{key: value}), key,
                         "%d is greater than %d" % (value, top))
        self.refused(loader, dict(data, deals=dict(data["deals"], limit=2 ** 63)),
                     "deals.limit", "9223372036854775808 does not fit in 64 bits")
        self.refused(loader, dict(data, redis=dict(data["redis"], db=2 ** 31)), "redis.db",
                     "2147483648 is greater than 2147483647")
