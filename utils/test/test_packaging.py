# -*- test-case-name: utils.test.test_packaging -*-
"""The project's packaging: twistd must find every daemon plugin the project ships."""

import ast
import os
import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGINS = os.path.join(ROOT, "twisted", "plugins")


def shipped_plugins():
    """Map plugin file → the tapname of every ServiceMaker it defines."""
    found = {}
    for name in sorted(os.listdir(PLUGINS)):
        if not name.endswith("_plugin.py"):
            continue
        tree = ast.parse(open(os.path.join(PLUGINS, name)).read())
        tapnames = []
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "ServiceMaker"
                    and len(node.args) == 4):
                tapnames.append(ast.literal_eval(node.args[3]))
        found[name] = tapnames
    return found


class PluginTests(TestCase):

    def test_layout(self):
        """twisted/plugins is a namespace dir: no __init__.py that would hide twisted's own."""
        self.assertTrue(os.path.isdir(PLUGINS))
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(PLUGINS, "__init__.py")))

    def test_every_plugin_discoverable(self):
        """Every ServiceMaker in twisted/plugins is found by twisted's plugin system."""
        found = {maker.tapname for maker in getPlugins(IServiceMaker)}
        for filename, tapnames in shipped_plugins().items():
            self.assertTrue(tapnames, "%s defines no ServiceMaker" % filename)
            for tapname in tapnames:
                self.assertIn(tapname, found, "%s: twistd does not see %r" % (filename, tapname))

    def test_twistd_lists_plugins(self):
        """`twistd --help` in a fresh interpreter lists every shipped daemon."""
        out = subprocess.run([sys.executable, "-m", "twisted", "--help"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120).stdout
        for tapnames in shipped_plugins().values():
            for tapname in tapnames:
                self.assertIn(tapname, out)

    def test_setup_ships_plugins(self):
        """setup.py packages twisted.plugins so an installed copy still finds them."""
        text = open(os.path.join(ROOT, "setup.py")).read()
        self.assertIn('"twisted.plugins"', text)
        self.assertIn('package_dir={"": "."}', text)
