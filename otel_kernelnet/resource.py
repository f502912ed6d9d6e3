"""Resource attributes of the collector's spans.

Always: ``service.name`` (otel-kernelnet), ``service.version``, ``host.name``,
``os.type``. On Kubernetes, from the downward-API environment variables the manifests
set: ``k8s.node.name`` (K8S_NODE_NAME or NODE_NAME), ``k8s.pod.name`` (K8S_POD_NAME or
POD_NAME), ``k8s.namespace.name`` (K8S_NAMESPACE or POD_NAMESPACE), ``k8s.pod.uid``
(K8S_POD_UID or POD_UID). Then ``OTEL_RESOURCE_ATTRIBUTES`` (k=v,... percent-encoded),
then the config's ``resource.attributes`` (last wins). ``service.name`` stays
otel-kernelnet: the analysis tells kernel spans from application spans by it.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Mapping
from urllib.parse import unquote

from . import __version__, semconv

K8S_ENV = {
    "k8s.node.name": ("K8S_NODE_NAME", "NODE_NAME"),
    "k8s.pod.name": ("K8S_POD_NAME", "POD_NAME"),
    "k8s.namespace.name": ("K8S_NAMESPACE", "POD_NAMESPACE"),
    "k8s.pod.uid": ("K8S_POD_UID", "POD_UID"),
}


def parse_otel_resource_attributes(text: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` as a dict; malformed members are skipped.

    >>> parse_otel_resource_attributes("a=1, b = x%2Cy ,bad")
    {'a': '1', 'b': 'x,y'}
    """
    out = {}
    for part in text.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            if k.strip():
                out[unquote(k.strip())] = unquote(v.strip())
    return out


def build(extra: Mapping[str, Any] | None = None, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "service.name": semconv.SERVICE_NAME,
        "service.version": __version__,
        "host.name": socket.gethostname(),
        "os.type": "linux",
    }
    for key, names in K8S_ENV.items():
        for n in names:
            if environ.get(n):
                attrs[key] = environ[n]
                break
    attrs.update(parse_otel_resource_attributes(environ.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    attrs.update(extra or {})
    attrs["service.name"] = semconv.SERVICE_NAME
    return attrs
