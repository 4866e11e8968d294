"""twistd plugin of the matchengine daemon (`twistd -n matchengine --config PATH`)."""

from twisted.application.service import ServiceMaker

matchengine = ServiceMaker(
    "viabtc matchengine", "matchengine.tap",
    "The matching engine: balances, order books, matching, operation log and slices.",
    "matchengine")
