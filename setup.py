"""Build step of the C encoder (otel_kernelnet/export/_otlp_native.c); every other
piece of metadata is in pyproject.toml.

``optional=True``: without a C compiler or the Python headers the package still
installs, and otlp_proto encodes in Python (the same bytes, ~5x slower per span);
``otel-kernelnet check`` says which one runs. scripts/setup.sh and the Dockerfile
install gcc and the headers, and the unit tests fail when the module is missing.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("otel_kernelnet.export._otlp_native", ["otel_kernelnet/export/_otlp_native.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
                             optional=True)])
