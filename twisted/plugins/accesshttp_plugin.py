"""twistd plugin of the HTTP gateway (`twistd -n accesshttp --config PATH`)."""

from twisted.application.service import ServiceMaker

accesshttp = ServiceMaker(
    "viabtc accesshttp", "accesshttp.tap",
    "The HTTP JSON-RPC gateway to matchengine, readhistory and marketprice.",
    "accesshttp")
