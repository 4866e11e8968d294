"""twistd plugin of the websocket gateway (`twistd -n accessws --config PATH`)."""

from twisted.application.service import ServiceMaker

accessws = ServiceMaker(
    "viabtc accessws", "accessws.tap",
    "The websocket gateway: queries, subscriptions and pushes.", "accessws")
