"""twistd plugin of the readhistory daemon (`twistd -n readhistory --config PATH`)."""

from twisted.application.service import ServiceMaker

readhistory = ServiceMaker(
    "viabtc readhistory", "readhistory.tap",
    "History queries over the binary RPC protocol, from the trade_history tables.",
    "readhistory")
