import json

from otel_kernelnet.export import metrics


def test_self_metrics_to_json_lines_count_every_loss(tmp_path):
    probe = {"drop": {"emitted": 29, "rate_capped": 3, "ringbuf_full": 2, "decode_errors": 1, "seen": 32}}
    pipe = {"exported": 26, "dropped_queue_full": 2, "failed": 1}
    m = metrics.build({"service.name": "otel-kernelnet"}, None, str(tmp_path), 0, lambda: probe, lambda: pipe)
    m.shutdown()
    (f,) = tmp_path.glob("metrics-*.jsonl")
    line = json.loads(f.read_text().splitlines()[-1])
    got = {}
    for sm in line["resourceMetrics"][0]["scopeMetrics"]:
        assert sm["scope"]["name"] == "otel-kernelnet"
        for metric in sm["metrics"]:
            assert metric["sum"]["isMonotonic"] is True
            for dp in metric["sum"]["dataPoints"]:
                attrs = tuple(sorted((a["key"], a["value"]["stringValue"]) for a in dp.get("attributes", [])))
                got[(metric["name"], attrs)] = int(dp["asInt"])
    assert got == {
        ("kernelnet.collector.events", (("probe", "drop"),)): 29,
        ("kernelnet.collector.spans.exported", ()): 26,
        ("kernelnet.collector.lost", (("probe", "drop"), ("stage", "ring_buffer_full"))): 2,
        ("kernelnet.collector.lost", (("probe", "drop"), ("stage", "rate_capped"))): 3,
        ("kernelnet.collector.lost", (("probe", "drop"), ("stage", "undecodable"))): 1,
        ("kernelnet.collector.lost", (("stage", "export_queue_full"),)): 2,
        ("kernelnet.collector.lost", (("stage", "export_failed"),)): 1,
    }
