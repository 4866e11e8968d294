# -*- test-case-name: utils.test.test_config -*-
"""Declarative loading and validation of the JSON configuration files.

A schema is a tree of field objects::

    SCHEMA = Section({
        "debug": Bool(False),
        "process": PROCESS,
        "log": LOG,
        "svr": RPC_SERVER,
        "slice_interval": Int(86400, min=1),
        "assets": List(Section({"name": Str(), "prec_save": Int(min=0)}), non_empty=True),
    })
    config = load("conf/config.json", SCHEMA)
    config.svr.bind            # -> ("tcp@0.0.0.0:7316", "udp@0.0.0.0:7316")
    config.log.max             # -> 100000000 (the default)

Rules (the original's, made strict):

* Integers must be JSON integers (never booleans or reals); reals accept integers or reals;
  booleans must be `true`/`false`; strings must be strings.  `null` is a wrong type, not a
  missing key.
* A field built without a default is required.  An optional section that is absent gets all
  its defaults.
* Every problem raises ConfigError with a message naming the file and the key path, e.g.
  `conf/config.json: svr.bind[0]: invalid address 'tcp@x'` or
  `conf/config.json: db_log.host: required key missing`.  Malformed JSON names the line and
  column.
* Keys the schema does not know are ignored; each one is reported with a warning through
  twisted.logger (the message names the file and key path) so typos can be spotted.

Loaded values are read-only `ConfigSection` objects with attribute access; arrays become
tuples, decimal strings become `decimal.Decimal`, `host:port` values become `HostPort`.
"""

import abc
import ipaddress
import json
import math
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional

from twisted.logger import Logger

from utils import decimals

__all__ = [
    "ConfigError", "ConfigSection", "HostPort", "REQUIRED",
    "Field", "Str", "Brokers", "HttpUrl", "Int", "UInt", "Real", "Bool", "Address", "AddressList",
    "InetAddress", "HostPortField", "DecimalStr", "List", "Section", "load", "load_data",
    "PROCESS", "LOG", "ALERT", "DAEMON", "RPC_SERVER", "PLAIN_SERVER", "MONITOR", "HTTP_SERVER",
    "WEBSOCKET_SERVER", "RPC_CLIENT", "MYSQL", "KAFKA_CONSUMER", "REDIS_SENTINEL", "CLI",
    "LOG_SHIFTS", "log_shift",
]

log = Logger(namespace="utils.config")

UINT32_MAX = 2 ** 32 - 1
INT32_MAX = 2 ** 31 - 1
# the integers the original's JSON reader (jansson) takes: a config integer beyond them is
# refused, as a value the original never runs with
INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class ConfigError(Exception):
    """A configuration file cannot be used; the message names the file and the key path."""


class _Invalid(Exception):
    """Raised inside validation; carries the key path relative to the file."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message


class HostPort(NamedTuple):
    """A `host:port` pair (sentinel addresses, the alert address)."""
    host: str
    port: int

    def __str__(self) -> str:
        return "{}:{}".format(self.host, self.port)


class ConfigSection(Mapping[str, Any]):
    """A read-only mapping of one loaded section, with attribute access to its keys."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError("configuration has no key {!r}".format(name)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("configuration is read-only")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return "ConfigSection({!r})".format(self._values)

    def to_dict(self) -> dict:
        """A plain nested copy (sections become dicts, tuples lists)."""
        def plain(value: Any) -> Any:
            if isinstance(value, ConfigSection):
                return value.to_dict()
            if isinstance(value, tuple) and not isinstance(value, HostPort):
                return [plain(item) for item in value]
            return value
        return {key: plain(value) for key, value in self._values.items()}


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's kind, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "real"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    return "{}.{}".format(path, key) if path else key


class Field(abc.ABC):
    """Base class of schema fields.

    `default` is used when the key is absent (REQUIRED: the key must be present);
    `convert`, when given, maps the validated value (or a non-None default) to the value
    stored.
    """

    expected = "a value"

    def __init__(self, default: Any = REQUIRED,
                 convert: Optional[Callable[[Any], Any]] = None) -> None:
        self.default = default
        self.convert = convert

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def missing(self, path: str, warn: Callable[[str], None]) -> Any:
        if self.required:
            raise _Invalid(path, "required key missing")
        if self.convert is not None and self.default is not None:
            return self.convert(self.default)
        return self.default

    def load(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        result = self.check(value, path, warn)
        if self.convert is not None:
            result = self.convert(result)
        return result

    @abc.abstractmethod
    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        """The value to store for `value` found at `path`; raise _Invalid when it is wrong."""

    def wrong_type(self, value: Any, path: str) -> _Invalid:
        return _Invalid(path, "expected {}, got {}".format(self.expected, json_type(value)))


class Str(Field):
    """A JSON string, optionally restricted to `choices` or to a non-empty value."""

    expected = "a string"

    def __init__(self, default: Any = REQUIRED, choices: Optional[tuple] = None,
                 non_empty: bool = False, max_length: Optional[int] = None,
                 convert: Optional[Callable[[Any], Any]] = None) -> None:
        super().__init__(default, convert)
        self.choices = choices
        self.non_empty = non_empty
        self.max_length = max_length

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        if not isinstance(value, str):
            raise self.wrong_type(value, path)
        if self.choices is not None and value not in self.choices:
            raise _Invalid(path, "{!r} is not one of {}".format(
                value, ", ".join(repr(choice) for choice in self.choices)))
        if self.non_empty and not value:
            raise _Invalid(path, "must not be empty")
        if self.max_length is not None and len(value.encode("utf-8")) > self.max_length:
            raise _Invalid(path, "{!r} is longer than {} bytes".format(value, self.max_length))
        return value


class Brokers(Str):
    """Kafka broker addresses, comma-separated (`host:port`, `[v6 address]:port`, or a
    host alone for port 9092); kept as the string the clients take."""

    expected = "a string of Kafka broker addresses"

    def __init__(self, default: Any = REQUIRED) -> None:
        super().__init__(default, non_empty=True)

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        from utils.kafka_wire import parse_address
        value = super().check(value, path, warn)
        entries = [entry for entry in value.split(",") if entry.strip()]
        if not entries:
            raise _Invalid(path, "names no broker")
        for entry in entries:
            try:
                parse_address(entry)
            except ValueError:
                raise _Invalid(path, "{!r} is not a broker address (host:port)".format(
                    entry.strip())) from None
        return value


class HttpUrl(Str):
    """An `http://` or `https://` URL naming a host (a daemon would otherwise start and
    fail at each request, for ever)."""

    expected = "a URL string"

    def __init__(self, default: Any = REQUIRED) -> None:
        super().__init__(default, non_empty=True)

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        import urllib.parse
        value = super().check(value, path, warn)
        try:
            parts = urllib.parse.urlsplit(value)
            host = parts.hostname
            parts.port          # a port that is no number raises
        except ValueError:
            host = None
        if host is None or parts.scheme.lower() not in ("http", "https"):
            raise _Invalid(path, "{!r} is not an http:// or https:// URL".format(value))
        return value


class MySQLCharset(Str):
    """A character set MySQL clients know by that name ("utf8" meaning utf8mb4, see
    `utils.mysql.client_charset`): a name unknown here fails every connection later."""

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        from pymysql.charset import charset_by_name
        from utils.mysql import client_charset
        value = super().check(value, path, warn)
        if charset_by_name(client_charset(value)) is None:
            raise _Invalid(path, "unknown character set {!r}".format(value))
        return value


class Int(Field):
    """A JSON integer (booleans and reals are refused), optionally bounded."""

    expected = "an integer"

    def __init__(self, default: Any = REQUIRED, min: Optional[int] = None,
                 max: Optional[int] = None,
                 convert: Optional[Callable[[Any], Any]] = None) -> None:
        super().__init__(default, convert)
        self.min = min
        self.max = max

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.wrong_type(value, path)
        if not INT64_MIN <= value <= INT64_MAX:
            raise _Invalid(path, "{} does not fit in 64 bits".format(value))
        if self.min is not None and value < self.min:
            raise _Invalid(path, "{} is less than {}".format(value, self.min))
        if self.max is not None and value > self.max:
            raise _Invalid(path, "{} is greater than {}".format(value, self.max))
        return value


def UInt(default: Any = REQUIRED, max: int = UINT32_MAX, min: int = 0, **kwargs: Any) -> Int:
    """An unsigned 32-bit integer field."""
    return Int(default, min=min, max=max, **kwargs)


class Real(Field):
    """A JSON integer or real, stored as float, optionally bounded."""

    expected = "a number"

    def __init__(self, default: Any = REQUIRED, min: Optional[float] = None,
                 max: Optional[float] = None,
                 convert: Optional[Callable[[Any], Any]] = None,
                 above: Optional[float] = None) -> None:
        super().__init__(default, convert)
        self.min = min
        self.max = max
        self.above = above      # an exclusive lower bound (a timer's period: above 0)

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.wrong_type(value, path)
        value = float(value)
        if self.above is not None and value <= self.above:
            raise _Invalid(path, "{!r} must be greater than {!r}".format(value, self.above))
        if self.min is not None and value < self.min:
            raise _Invalid(path, "{!r} is less than {!r}".format(value, self.min))
        if self.max is not None and value > self.max:
            raise _Invalid(path, "{!r} is greater than {!r}".format(value, self.max))
        return value


class Bool(Field):
    """A JSON `true` or `false`."""

    expected = "a boolean"

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        if not isinstance(value, bool):
            raise self.wrong_type(value, path)
        return value


def _parse_address(text: str) -> Any:
    # Imported lazily: network.address is a sibling package that depends on Twisted endpoints.
    from network.address import parse_address
    return parse_address(text)


class Address(Field):
    """A socket address string in the original's form (`tcp@1.2.3.4:7316`, `stream@/path`).

    The stored value is the string as written, once network.address accepted it; `kinds`
    restricts the socket types allowed (e.g. ("tcp", "stream") for stream servers).
    """

    expected = "an address string"

    def __init__(self, default: Any = REQUIRED, kinds: Optional[tuple] = None,
                 convert: Optional[Callable[[Any], Any]] = None) -> None:
        super().__init__(default, convert)
        self.kinds = kinds

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        if not isinstance(value, str):
            raise self.wrong_type(value, path)
        try:
            address = _parse_address(value)
        except ValueError as e:
            # network.address's message names the address
            raise _Invalid(path, str(e)) from None
        if self.kinds is not None and address.kind not in self.kinds:
            raise _Invalid(path, "address {!r} must be of type {}".format(
                value, " or ".join(self.kinds)))
        return value


class AddressList(Address):
    """One address string or a non-empty array of them; stored as a tuple of strings."""

    expected = "an address string or a non-empty array of them"

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        if isinstance(value, str):
            return (super().check(value, path, warn),)
        if not isinstance(value, list):
            raise self.wrong_type(value, path)
        if not value:
            raise _Invalid(path, "must not be an empty array")
        return tuple(super(AddressList, self).check(item, "{}[{}]".format(path, index), warn)
                     for index, item in enumerate(value))


def _split_host_port(text: str) -> Optional[HostPort]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        return None
    number = int(port)
    if not 0 < number <= 65535:
        return None
    return HostPort(host, number)


class HostPortField(Field):
    """A `host:port` string (no scheme); stored as HostPort."""

    expected = "a 'host:port' string"

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        if not isinstance(value, str):
            raise self.wrong_type(value, path)
        result = _split_host_port(value)
        if result is None or any(c.isspace() for c in result.host):
            raise _Invalid(path, "invalid host:port {!r}".format(value))
        return result


class InetAddress(HostPortField):
    """An `ip:port` string with a numeric IPv4 address; stored as HostPort."""

    expected = "an 'ip:port' string"

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        if not isinstance(value, str):
            raise self.wrong_type(value, path)
        result = _split_host_port(value)
        try:
            if result is None:
                raise ValueError(value)
            ipaddress.IPv4Address(result.host)
        except ValueError:
            raise _Invalid(path, "invalid IPv4 address {!r}".format(value)) from None
        return result


class DecimalStr(Field):
    """A decimal number written as a JSON string; stored as decimal.Decimal."""

    expected = "a decimal string"

    def __init__(self, default: Any = REQUIRED, prec: int = 0,
                 convert: Optional[Callable[[Any], Any]] = None) -> None:
        if isinstance(default, str):
            default = decimals.parse(default, prec)
        super().__init__(default, convert)
        self.prec = prec

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        if not isinstance(value, str):
            raise self.wrong_type(value, path)
        try:
            return decimals.parse(value, self.prec)
        except decimals.InvalidDecimal:
            raise _Invalid(path, "invalid decimal {!r}".format(value)) from None


class List(Field):
    """A JSON array whose items all match `of`; stored as a tuple."""

    expected = "an array"

    def __init__(self, of: Field, default: Any = REQUIRED, non_empty: bool = False,
                 convert: Optional[Callable[[Any], Any]] = None) -> None:
        if isinstance(default, list):
            default = tuple(default)
        super().__init__(default, convert)
        self.of = of
        self.non_empty = non_empty

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        if not isinstance(value, list):
            raise self.wrong_type(value, path)
        if self.non_empty and not value:
            raise _Invalid(path, "must not be an empty array")
        return tuple(self.of.load(item, "{}[{}]".format(path, index), warn)
                     for index, item in enumerate(value))


class Section(Field):
    """A JSON object with known keys.

    A required section must be present.  An optional one (`required=False`) that is absent
    is built from its fields' defaults, or is None when some of its keys are required.
    """

    expected = "an object"

    def __init__(self, fields: Mapping[str, Field], required: bool = True,
                 convert: Optional[Callable[[Any], Any]] = None) -> None:
        super().__init__(REQUIRED if required else None, convert)
        self.fields = dict(fields)

    def optional(self) -> "Section":
        """The same section, not required."""
        return Section(self.fields, required=False, convert=self.convert)

    def extend(self, fields: Mapping[str, Field], required: Optional[bool] = None) -> "Section":
        """A new section with these fields added (or replaced)."""
        merged = dict(self.fields)
        merged.update(fields)
        return Section(merged, required=self.required if required is None else required,
                       convert=self.convert)

    def missing(self, path: str, warn: Callable[[str], None]) -> Any:
        if self.required:
            raise _Invalid(path, "required key missing")
        if any(field.required for field in self.fields.values()):
            return None
        return self.load({}, path, warn)

    def check(self, value: Any, path: str, warn: Callable[[str], None]) -> Any:
        if not isinstance(value, dict):
            raise self.wrong_type(value, path)
        values = {}
        for key, field in self.fields.items():
            key_path = _join(path, key)
            if key in value:
                values[key] = field.load(value[key], key_path, warn)
            else:
                values[key] = field.missing(key_path, warn)
        for key in value:
            if key not in self.fields:
                warn(_join(path, key))
        return ConfigSection(values)


def load_data(data: Any, schema: Section, source: str = "<config>") -> ConfigSection:
    """Validate already-decoded JSON data against `schema`; `source` names it in errors."""
    def warn(path: str) -> None:
        log.warn("{source}: {path}: unknown key ignored", source=source, path=path)

    if not isinstance(data, dict):
        raise ConfigError("{}: the configuration must be a JSON object, got {}".format(
            source, json_type(data)))
    try:
        return schema.load(data, "", warn)
    except _Invalid as e:
        raise ConfigError("{}: {}: {}".format(source, e.path, e.message)) from None


def _reject_constant(name: str) -> Any:
    raise ValueError("invalid JSON value {}".format(name))


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("real number overflow: {}".format(text))
    return value


def read(path: str) -> bytes:
    """The bytes of the config file at `path`."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError("{}: cannot read: {}".format(path, e.strerror or e)) from None


def load(path: str, schema: Section, raw: Optional[bytes] = None) -> ConfigSection:
    """Read the JSON file at `path` and validate it against `schema`; given `raw`, those
    bytes are taken for the file's (`path` names them in errors)."""
    if raw is None:
        raw = read(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("{}: not valid UTF-8 at byte {}".format(path, e.start)) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except json.JSONDecodeError as e:
        raise ConfigError("{}: line {} column {}: {}".format(
            path, e.lineno, e.colno, e.msg)) from None
    except ValueError as e:
        raise ConfigError("{}: {}".format(path, e)) from None
    return load_data(data, schema, path)


# --- shared section types (deployment.md 5.1) ---------------------------------------------

LOG_SHIFTS = ("size", "hour", "min", "day")


def log_shift(value: str) -> str:
    """The original's reading of `log.shift`: case-insensitive; unknown words mean `day`."""
    value = value.lower()
    return value if value in LOG_SHIFTS else "day"


def _default_when_zero(default: float) -> Callable[[float], float]:
    def convert(value: float) -> float:
        return value if value > 0 else default
    return convert


def _heartbeat_timeout(value: float) -> float:
    if value <= 0:
        return 3.0
    return min(max(value, 2.0), 600.0)


PROCESS = Section({
    "file_limit": UInt(0),
    "core_limit": UInt(0),
}, required=False)

LOG = Section({
    "path": Str(non_empty=True),
    "flag": Str(),
    "shift": Str("size", convert=log_shift),
    "pid": Bool(True),
    "fork": Bool(True),
    "max": Int(100000000, min=0),
    # files the rotation goes over each time, and periods kept: beyond these bounds a
    # rotation would take seconds, or a date out of the calendar's range
    "num": Int(100, min=0, max=100000),
    "keep": Int(7, min=0, max=100000),
})

ALERT = Section({
    "host": Str(),
    "addr": InetAddress(),
})

# the keys every daemon's config starts with; each module extends it with its own
DAEMON = Section({
    "debug": Bool(False),
    "process": PROCESS,
    "log": LOG,
    "alert": ALERT.optional(),
})

# the socket types each kind of server listens on
ANY_SOCKET = ("tcp", "udp", "stream", "dgram")
STREAM_SOCKET = ("tcp", "stream")

# SO_RCVBUF / SO_SNDBUF in bytes (0: the system's): the socket option takes a C int
SOCKET_BUFFER = UInt(0, max=INT32_MAX)

PLAIN_SERVER = Section({
    "bind": AddressList(kinds=ANY_SOCKET),
    "max_pkg_size": UInt(min=1),
    "buf_limit": UInt(0),
    "read_mem": SOCKET_BUFFER,
    "write_mem": SOCKET_BUFFER,
})

RPC_SERVER = PLAIN_SERVER.extend({
    "heartbeat_check": Bool(True),
})

# a liveness port: connections accepted, nothing answered
MONITOR = PLAIN_SERVER.extend({
    "bind": AddressList(kinds=STREAM_SOCKET),
})

HTTP_SERVER = MONITOR.extend({
    "keep_alive": Int(3600, min=0),
})

WEBSOCKET_SERVER = MONITOR.extend({
    "keep_alive": Int(3600, min=0),
    "protocol": Str("chat"),
    "origin": Str(""),
})

RPC_CLIENT = Section({
    "name": Str(),
    "addr": AddressList(kinds=("tcp", "stream")),
    "max_pkg_size": UInt(min=1),
    "buf_limit": UInt(0),
    "read_mem": SOCKET_BUFFER,
    "write_mem": SOCKET_BUFFER,
    "reconnect_timeout": Real(0.0, convert=_default_when_zero(1.0)),
    "heartbeat_timeout": Real(0.0, convert=_heartbeat_timeout),
    # the largest request packet sent; a larger one is refused here, never sent (a backend
    # closes the connection of a packet over its max_pkg_size, failing every request on it)
    "max_request_size": UInt(10240),
})

MYSQL = Section({
    "host": Str(),
    "port": Int(3306, min=1, max=65535),
    "user": Str(),
    "pass": Str(),
    "name": Str(),
    "charset": MySQLCharset("utf8"),
})

KAFKA_CONSUMER = Section({
    "brokers": Brokers(),
    "topic": Str(non_empty=True),
    "partition": Int(0, min=0, max=INT32_MAX),
    "limit": Int(1000, min=1, max=INT32_MAX),
    "offset": Int(0),
})

REDIS_SENTINEL = Section({
    "name": Str(non_empty=True),
    "addr": List(HostPortField(), non_empty=True),
    "db": Int(0, min=0, max=INT32_MAX),
})

CLI = Address(kinds=STREAM_SOCKET)

