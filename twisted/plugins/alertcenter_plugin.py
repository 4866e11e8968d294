"""twistd plugin of the alert collector (`twistd -n alertcenter --config PATH`)."""

from twisted.application.service import ServiceMaker

alertcenter = ServiceMaker(
    "viabtc alertcenter", "alertcenter.tap",
    "Collects FATAL log lines into the Redis list alert:message.", "alertcenter")
