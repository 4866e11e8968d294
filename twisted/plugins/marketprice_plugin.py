"""twistd plugin of the market data daemon (`twistd -n marketprice --config PATH`)."""

from twisted.application.service import ServiceMaker

marketprice = ServiceMaker(
    "viabtc marketprice", "marketprice.tap",
    "K-lines, market status and recent deals from the deals topic, kept in Redis.",
    "marketprice")
