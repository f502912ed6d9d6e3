"""kernelnet_analysis: read OpenTelemetry traces back and name the kernel cause of latency spikes.

The Jupyter half of otel-kernelnet (``pip install otel-kernelnet[analysis]``; no bcc,
no root). Typical use::

    import kernelnet_analysis as ka
    t = ka.load("./kernelnet-data")            # or "http://jaeger:16686", "http://tempo:3200"
    spikes = ka.detect_spikes(t.spans)         # slow app spans per service and operation
    joined = ka.join_kernel(spikes, t.spans, t.links)
    causes = ka.rank_causes(joined, spikes)    # kind, confidence, evidence, remedy
    ka.diagnose("./kernelnet-data")            # all of the above as the CLI's JSON object

>>> import kernelnet_analysis as ka
>>> sorted(ka.KINDS)[:3]
['conntrack_invalid_rst', 'listen_overflow', 'loss_retransmit']
"""

from .causes import rank_causes
from .diagnose import KINDS, diagnose, load, run
from .errors import SourceError
from .join import interval_join, join_kernel
from .schema import EVENT_SCHEMA, LINK_SCHEMA, RESOURCE_SCHEMA, SPAN_SCHEMA, Traces, app_spans, kernel_spans
from .spikes import detect_spikes, spike_threshold
from .store import iter_store, load_store, read_file, scan_parquet, store_to_parquet
from .timejoin import cpu_window_join, key_interval_join, pair_next

__all__ = [
    "KINDS", "SPAN_SCHEMA", "EVENT_SCHEMA", "LINK_SCHEMA", "RESOURCE_SCHEMA", "SourceError", "Traces",
    "app_spans", "kernel_spans", "load", "load_store", "read_file", "iter_store", "store_to_parquet",
    "scan_parquet", "detect_spikes", "spike_threshold", "join_kernel", "interval_join", "rank_causes",
    "diagnose", "run", "cpu_window_join", "pair_next", "key_interval_join",
]
