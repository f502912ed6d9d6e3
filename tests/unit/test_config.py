import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from otel_kernelnet import config

ROOT = Path(__file__).resolve().parents[2]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and f"{prefix}{k}" not in config.SCHEMA:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_default_file_lists_exactly_the_schema_with_its_defaults_and_docs():
    text = config.DEFAULT_FILE.read_text()
    flat = _flat(yaml.safe_load(text))
    assert flat == {k: key.default for k, key in config.SCHEMA.items()}
    lines = text.splitlines()
    for key in config.SCHEMA:
        leaf = key.rsplit(".", 1)[1]
        i = next(i for i, line in enumerate(lines) if re.match(rf"\s*{re.escape(leaf)}:", line))
        assert lines[i - 1].strip().startswith("#"), f"{key} has no comment above it in the default file"
    assert config.load().source == str(config.DEFAULT_FILE)


@pytest.mark.parametrize("data,message", [
    ({"probes": {"drop": {"enable": True}}}, "unknown key 'probes.drop.enable' (did you mean 'probes.drop.enabled'?)"),
    ({"ringbuf": {"pages": 3}}, "'ringbuf.pages': expected a power of two"),
    ({"output": 5}, "'output': expected a mapping"),
    ({"export": {"otlp": {"protocol": "udp"}}}, "'export.otlp.protocol': expected null, grpc or http/protobuf, got 'udp'"),
    ({"probes": {"drop": {"rate_limit_per_cpu": True}}}, "'probes.drop.rate_limit_per_cpu': expected an integer >= 1"),
    ({"bogus": 1}, "unknown key 'bogus'"),
])
def test_bad_config_names_the_key(data, message):
    with pytest.raises(config.ConfigError) as e:
        config.validate(data)
    assert message in str(e.value)


def test_valid_overrides_apply():
    c = config.validate({"export": {"otlp": {"endpoint": "http://x:4317"}}, "resource": {"attributes": {"team": "net"}}})
    assert c["export.otlp.endpoint"] == "http://x:4317" and c["resource.attributes"] == {"team": "net"}
    assert c["ringbuf.pages"] == config.SCHEMA["ringbuf.pages"].default  # untouched keys keep their defaults


@pytest.mark.parametrize("content,needle", [
    ("probes:\n  drop:\n    enabeld: true\n", "probes.drop.enabeld"),
    ("status:\n  interval_s: -1\n", "status.interval_s"),
    ("output: [unclosed\n", "not valid YAML"),
])
def test_run_with_a_bad_config_exits_nonzero_with_one_line(tmp_path, content, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content)
    r = subprocess.run([sys.executable, "-m", "otel_kernelnet.cli", "run", "--config", str(cfg)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_missing_config_file_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "otel_kernelnet.cli", "run", "--config", str(tmp_path / "nope.yaml")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot read" in r.stderr and len(r.stderr.strip().splitlines()) == 1
