"""Access to a local copy of the official Neodragon code, for equivalence tests that skip without it.

The reference code is never part of this repository; point ``NEODRAGON_REFERENCE_PATH`` at a checkout
(the folder that contains the ``neodragon`` package).
"""

import os
import sys
import types

import pytest


REFERENCE_PATH = os.environ.get("NEODRAGON_REFERENCE_PATH", "/work/ref/neodragon")


def import_reference(module: str):
    """Import ``neodragon.<module>`` from the reference checkout without running its top-level __init__."""
    if not os.path.isdir(os.path.join(REFERENCE_PATH, "neodragon")):
        pytest.skip(f"reference code not found at {REFERENCE_PATH} (set NEODRAGON_REFERENCE_PATH)")
    if "neodragon" not in sys.modules:
        package = types.ModuleType("neodragon")
        package.__path__ = [os.path.join(REFERENCE_PATH, "neodragon")]
        sys.modules["neodragon"] = package
    try:
        return __import__(f"neodragon.{module}", fromlist=["_"])
    except Exception as error:  # the reference pins old library versions
        pytest.skip(f"reference module neodragon.{module} does not import here: {error}")
