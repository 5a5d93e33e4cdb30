"""Registers the lab's pytest plugin (pytest_lab/plugin.py) for every test folder of the checkout.

A conftest.py at the root is what puts the checkout on the import path for `pytest` run from
it, and what loads the plugin before the command line is parsed; everything else lives in
the plugin.
"""

pytest_plugins = ["pytest_lab.plugin"]
