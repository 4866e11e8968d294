"""twistd plugin of the embedded exchange (`twistd -n exchange --data DIR`)."""

from twisted.application.service import ServiceMaker

exchange = ServiceMaker(
    "viabtc exchange", "exchange.tap",
    "The whole exchange in one process on SQLite, an in-process bus and an in-memory store.",
    "exchange")
