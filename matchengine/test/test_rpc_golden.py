# -*- test-case-name: matchengine.test.test_rpc_golden -*-
"""The matchengine's RPC port answers the recorded request packets byte for byte."""

import json
import os

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from matchengine import config
from matchengine.history import HistoryWriter
from matchengine.operlog import OperationLog
from matchengine.outbox import LocalOutbox
from matchengine.server import MatchEngine
from matchengine.test.test_engine import METHODS, TRANSCRIPT, call
from matchengine.test.test_server import engine_config

GOLDEN = os.path.join(os.path.dirname(TRANSCRIPT), "rpc-golden.jsonl")


class GoldenPacketTests(SynchronousTestCase):

    def test_golden_replies(self):
        """After the recorded scenario, each golden request gets the original's reply bytes."""
        if not os.path.exists(GOLDEN):
            self.skipTest("reference transcripts not present")
        cfg = engine_config(7316, "127.0.0.1:9092", "log", "history")
        assets, markets = config.build_tables(cfg)
        clock = Clock()
        outbox = LocalOutbox(HistoryWriter(None, clock), None)
        service = MatchEngine(cfg, assets, markets, None, outbox, reactor=clock, listen=False)
        service.operlog = OperationLog(None, clock)
        now = 1795561714.0
        for line in open(TRANSCRIPT):
            request = json.loads(line).get("request")
            if request and request.get("method") in METHODS:
                now += 0.001
                call(service.engine, METHODS[request["method"]], request["params"], now)
        checked = 0
        for line in open(GOLDEN):
            record = json.loads(line)
            proto = service.factory.buildProtocol(None)
            transport = StringTransport()
            proto.makeConnection(transport)
            proto.dataReceived(bytes.fromhex(record["request_hex"]))
            self.assertEqual(transport.value().hex(), record["reply_hex"], record["note"])
            checked += 1
        self.assertEqual(checked, 3)
