"""otel-kernelnet: Linux kernel network events as OpenTelemetry spans."""

__version__ = "0.1.0"
