import json
import threading

from otel_kernelnet import resource
from otel_kernelnet.export.sinks import ExportPipeline, JsonLinesSink, resolve_otlp
from otel_kernelnet.spans import CountingIds, KernelSpan


def span(i: int) -> KernelSpan:
    return KernelSpan("kernel.skb.drop", i.to_bytes(16, "big"), i.to_bytes(8, "big"), i, i, {"n": i})


def test_jsonl_rotates_by_size_and_keeps_max_files(tmp_path):
    sink = JsonLinesSink(tmp_path, {"service.name": "otel-kernelnet"}, ("otel-kernelnet", "0"),
                         max_file_bytes=2000, max_files=3)
    for i in range(1, 41):
        sink.write([span(i)])
    sink.close()
    files = sorted(tmp_path.glob("traces-*.jsonl"))
    assert len(files) == 3 and sink.files_deleted > 0
    ids = []
    for f in files:
        assert f.stat().st_size <= 2000
        for line in f.read_text().splitlines():
            ids += [s["spanId"] for s in json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"]]
    # the newest spans survive, in order, none twice
    assert ids == [i.to_bytes(8, "big").hex() for i in range(41 - len(ids), 41)]


class BlockingSink:
    description = "blocking"

    def __init__(self):
        self.release = threading.Event()
        self.got = []

    def write(self, batch):
        self.release.wait(10)
        self.got += batch
        return True

    def close(self):
        pass


def test_pipeline_counts_what_it_sheds_and_flushes_the_rest():
    sink = BlockingSink()
    p = ExportPipeline(sink, max_queue=10, max_batch=4, max_delay_s=0.01)
    for i in range(1, 31):
        p.submit(span(i))
    # the thread holds at most one batch of 4 while the queue is full at 10
    assert p.dropped_queue_full >= 30 - 10 - 4
    sink.release.set()
    p.close()
    assert p.exported + p.dropped_queue_full == 30 and len(sink.got) == p.exported


class FailingSink(BlockingSink):
    def write(self, batch):
        raise ConnectionError("backend down")


def test_pipeline_survives_a_failing_sink_and_counts():
    p = ExportPipeline(FailingSink(), max_queue=100, max_batch=5, max_delay_s=0.01)
    for i in range(1, 12):
        p.submit(span(i))
    p.close()
    assert p.failed == 11 and p.exported == 0 and "backend down" in p.last_error


def test_resolve_otlp_precedence():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert resolve_otlp("http://cli:1", "http://cfg:2", None, env).endpoint == "http://cli:1"
    assert resolve_otlp(None, "http://cfg:2", None, env).endpoint == "http://cfg:2"
    t = resolve_otlp(None, None, None, env)
    assert (t.endpoint, t.protocol, t.why) == ("http://env:4318", "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT")
    assert resolve_otlp(None, None, "http/protobuf", env).protocol == "http/protobuf"
    assert resolve_otlp("localhost:4317", None, None, {}).protocol == "grpc"


def test_resource_from_downward_api_and_otel_variables():
    env = {"NODE_NAME": "node-a", "K8S_POD_NAME": "web-1", "POD_NAMESPACE": "shop",
           "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=oops"}
    r = resource.build({"team": "sre"}, env)
    assert r["k8s.node.name"] == "node-a" and r["k8s.pod.name"] == "web-1" and r["k8s.namespace.name"] == "shop"
    assert r["deployment.environment"] == "prod" and r["team"] == "sre"
    assert r["service.name"] == "otel-kernelnet"
    assert "k8s.pod.uid" not in r
    assert CountingIds().trace_id() == (1).to_bytes(16, "big")
