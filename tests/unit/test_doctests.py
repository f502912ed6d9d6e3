"""The collector's docstring examples run (STYLE: examples that cannot rot)."""

import doctest
import importlib

import pytest

MODULES = ["otel_kernelnet.clock", "otel_kernelnet.kernel.tracefs", "otel_kernelnet.export.sinks", "otel_kernelnet.loader",
           "otel_kernelnet.resource", "otel_kernelnet.kernel.cgroups", "otel_kernelnet.scope"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0


def test_span_reference_is_generated_from_semconv():
    from pathlib import Path

    from otel_kernelnet import semconv
    page = (Path(__file__).resolve().parents[2] / "docs" / "spans.md").read_text()
    assert page == semconv.page(), "regenerate: python -m otel_kernelnet.semconv > docs/spans.md"
