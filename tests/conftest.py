"""Shared test configuration.

Two tiers (STYLE habit 10): tests/unit and tests/analysis need no root; tests/kernel
(marker ``kernel``) needs root and the real kernel and FAILS, never skips, where it
cannot run. ``scripts/test.sh`` runs both.
"""

pytest_plugins = ["tests.support.fixtures"]
