# -*- test-case-name: accesshttp.test.test_openrpc -*-
"""The HTTP reference and the OpenRPC document come from the same text: `docs/http.md` is
exactly what `python -m accesshttp.openrpc --markdown` writes, and `rpc.discover` says what
the reference says."""

import contextlib
import io
import os

from twisted.trial.unittest import SynchronousTestCase

from accesshttp import openrpc
from utils import testing

DOCS = os.path.join(testing.ROOT, "docs", "http.md")


class MarkdownTests(SynchronousTestCase):

    def generate(self, *argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            openrpc.main(["--markdown", *argv])
        return out.getvalue()

    def test_docs_are_generated(self):
        """The command the module names reproduces docs/http.md, so that running it keeps
        every sentence written there (edits belong in accesshttp/openrpc.py)."""
        self.assertTrue(os.path.exists(openrpc.TRANSCRIPT), openrpc.TRANSCRIPT)
        self.assertEqual(openrpc.TRANSCRIPT, testing.reference("http-scenario.jsonl"))
        with open(DOCS) as f:
            expected = f.read()
        generated = self.generate()
        self.assertEqual(generated.splitlines(), expected.splitlines())
        self.assertEqual(generated, expected)

    def test_examples_from_the_transcript(self):
        """Each method shows up to two of the original's recorded calls, in their order."""
        examples = openrpc.load_examples(openrpc.TRANSCRIPT)
        request, response = examples["balance.update"][1]
        self.assertEqual(response["error"], {"code": 10, "message": "repeat update"})
        text = openrpc.markdown(examples)
        section = text.split("## `balance.update`")[1].split("## ")[0]
        self.assertEqual(section.count("```json"), 2)
        self.assertIn('"message": "repeat update"', section)
        self.assertEqual(self.generate(openrpc.TRANSCRIPT), self.generate())

    def test_missing_transcript(self):
        """A transcript that cannot be read stops the command rather than leaving the
        examples out of the reference it writes."""
        error = self.assertRaises(SystemExit, self.generate, self.mktemp())
        self.assertIn("cannot read the transcript", str(error))


class DocumentTests(SynchronousTestCase):

    def test_discover_says_what_the_reference_says(self):
        """The bodies refused with HTTP 400, the size limit of a call, and the notes on
        errors and params are in the OpenRPC document as in the markdown."""
        doc = openrpc.document()
        text = openrpc.markdown()
        for sentence in ("`NaN` or `Infinity` anywhere", "nesting more than 100 deep",
                         "`max_request_size`, 10240 bytes by default"):
            self.assertIn(sentence, doc["info"]["description"])
            self.assertIn(sentence, text)
        methods = {m["name"]: m for m in doc["methods"]}
        self.assertIn("34 digits", methods["balance.update"]["description"])
        self.assertIn("34 digits", text)
        params = {p["name"]: p["description"] for p in methods["balance.history"]["params"]}
        self.assertIn("unsigned 64-bit", params["start_time"])
        self.assertIn("echoed signed", params["offset"])
        self.assertIn("| 5 | `offset` | integer | records to skip (echoed signed, as given) |",
                      text)
        self.assertIn("is answered as `{}`", methods["balance.history"]["description"])
        self.assertIn("is answered as `{}`", text)

    def test_errors_line(self):
        """A method's errors line lists its own errors and then its note; none without
        either."""
        self.assertEqual(openrpc._errors_line("order.cancel", [(10, "order not found")]),
                         "Errors: 10 `order not found`.")
        self.assertIsNone(openrpc._errors_line("asset.list", []))
        self.assertTrue(openrpc._errors_line("balance.update", [(10, "repeat update")])
                        .startswith("Errors: 10 `repeat update`; 1 `invalid argument` also"))
