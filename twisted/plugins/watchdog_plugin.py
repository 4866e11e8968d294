"""twistd plugin of the watchdog (`twistd watchdog MODULE [MODULE OPTIONS]`)."""

from twisted.application.service import ServiceMaker

watchdog = ServiceMaker(
    "viabtc watchdog", "utils.watchdog",
    "Runs a daemon of the exchange as a child process and restarts it within a second "
    "when it dies.",
    "watchdog")
