"""pytest fixtures for tests that export OTLP: an in-process sink and the real Rotel relay.

To use them in a test directory, add to its ``conftest.py``::

    pytest_plugins = ["tests.support.fixtures"]

(pytest only honours ``pytest_plugins`` in the root conftest; put it in
``tests/conftest.py`` or the rootdir's conftest.) A single test module can
instead import the fixtures by name::

    from tests.support.fixtures import otlp_sink, rotel_relay  # noqa: F401

Fixtures (function scope, loopback only, stopped on every exit path):

* ``otlp_sink`` -> ``tests.support.otlp_sink.OtlpSink``: OTLP/gRPC at
  ``otlp_sink.grpc_endpoint``, OTLP/HTTP at ``otlp_sink.http_endpoint``; read
  spans with ``otlp_sink.wait_for(predicate, timeout)``.
* ``rotel_relay`` -> ``tests.support.rotel.RotelRelay``: the real Rotel relay,
  listening at ``rotel_relay.grpc_endpoint`` / ``rotel_relay.http_endpoint`` and
  forwarding over OTLP/gRPC to the ``otlp_sink`` of the same test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.otlp_sink import OtlpSink
from tests.support.rotel import RotelRelay

__all__ = ["otlp_sink", "rotel_relay"]


@pytest.fixture
def otlp_sink() -> Iterator[OtlpSink]:
    with OtlpSink() as sink:
        yield sink


@pytest.fixture
def rotel_relay(otlp_sink: OtlpSink) -> Iterator[RotelRelay]:
    with RotelRelay(otlp_sink.grpc_endpoint) as relay:
        yield relay
