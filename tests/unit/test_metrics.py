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


def test_kernel_histograms_and_netns_counters_are_exported_beside_the_self_metrics(tmp_path):
    from otel_kernelnet.export.metrics_model import HistogramPoint
    bounds = [0.0, 1.0, 3.0, 7.0]
    hist = [HistogramPoint("kernelnet.skb.stage.duration", "stage latency", "ns", {"kernelnet.skb.stage": "socket"},
                           bounds, [0, 0, 2, 5, 1], 123.0)]
    m = metrics.build({"service.name": "otel-kernelnet"}, None, str(tmp_path), 0, lambda: {}, lambda: {},
                      histograms=lambda: hist, netns_counters=lambda: {(4026532245, "TcpExtListenOverflows"): 23})
    m.shutdown()
    (f,) = tmp_path.glob("metrics-*.jsonl")
    line = json.loads(f.read_text().splitlines()[-1])
    by_name = {mt["name"]: mt for sm in line["resourceMetrics"][0]["scopeMetrics"] for mt in sm["metrics"]}
    h = by_name["kernelnet.skb.stage.duration"]
    assert h["unit"] == "ns" and h["histogram"]["aggregationTemporality"] == 2  # cumulative
    (dp,) = h["histogram"]["dataPoints"]
    assert dp["bucketCounts"] == ["0", "0", "2", "5", "1"] and dp["explicitBounds"] == bounds
    assert dp["count"] == "8" and dp["sum"] == 123.0
    assert (dp["min"], dp["max"]) == (1.0, 7.0)  # bounds of the lowest / highest non-empty bucket
    assert dp["attributes"] == [{"key": "kernelnet.skb.stage", "value": {"stringValue": "socket"}}]
    (c,) = by_name["kernelnet.netns.counter"]["sum"]["dataPoints"]
    assert int(c["asInt"]) == 23
    assert {a["key"]: a["value"] for a in c["attributes"]} == {
        "kernelnet.netns": {"intValue": "4026532245"}, "kernelnet.counter.name": {"stringValue": "TcpExtListenOverflows"}}


def test_receiver_forward_and_join_counters_are_exported(tmp_path):
    app = {"ingest": {"spans": 12, "bad_requests": 1}, "join": {"joined_cookie": 5, "buffer_shed": 2}}
    m = metrics.build({"service.name": "otel-kernelnet"}, None, str(tmp_path), 0, lambda: {}, lambda: {},
                      app_stats=lambda: app)
    m.shutdown()
    (f,) = tmp_path.glob("metrics-*.jsonl")
    line = json.loads(f.read_text().splitlines()[-1])
    (mt,) = [mt for sm in line["resourceMetrics"][0]["scopeMetrics"] for mt in sm["metrics"]
             if mt["name"] == "kernelnet.collector.app"]
    got = {tuple(a["value"]["stringValue"] for a in dp["attributes"]): int(dp["asInt"]) for dp in mt["sum"]["dataPoints"]}
    assert got == {("ingest", "spans"): 12, ("ingest", "bad_requests"): 1,
                   ("join", "joined_cookie"): 5, ("join", "buffer_shed"): 2}
