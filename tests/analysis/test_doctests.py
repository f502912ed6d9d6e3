"""Run the docstring examples of every module of kernelnet_analysis."""

import doctest
import importlib
import pkgutil

import pytest

import kernelnet_analysis

MODULES = sorted(m.name for m in pkgutil.iter_modules(kernelnet_analysis.__path__))


def test_modules_found():
    assert {"otlp", "store", "schema", "spikes", "join", "causes", "diagnose", "synth"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    mod = importlib.import_module(f"kernelnet_analysis.{name}")
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0, f"{res.failed} doctest(s) failed in {name}"
