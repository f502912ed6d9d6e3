"""The lab's pure parts: counters parsing, verdict, cross-check rules, undo stack, CLI errors."""

from __future__ import annotations

import doctest
import os
import signal

import pytest

from otel_kernelnet import cli, lab
from otel_kernelnet.lab import env, runner
from otel_kernelnet.lab.env import Lab, LabError
from otel_kernelnet.lab.runner import Check, first_kind, lead_cause


def test_doctests():
    r = doctest.testmod(env)
    assert r.attempted > 0 and r.failed == 0


def test_parse_snmp_pairs_header_and_value_lines_per_prefix():
    text = ("TcpExt: SyncookiesSent ListenOverflows\nTcpExt: 0 17\n"
            "IpExt: InNoRoutes\nIpExt: 2\nTcp: RtoAlgorithm RetransSegs\nTcp: 1 9\n")
    c = env.parse_snmp(text)
    assert c["TcpExtListenOverflows"] == 17 and c["TcpRetransSegs"] == 9 and c["IpExtInNoRoutes"] == 2


def _spike(*kinds, conf=0.9):
    return {"causes": [{"kind": k, "confidence": conf, "evidence": {}} for k in kinds]}


def test_first_kind_is_the_most_frequent_top_cause_ties_to_the_slowest_spike():
    rep = {"spikes": [_spike("loss_retransmit"), _spike("listen_overflow"), _spike("listen_overflow"), {"causes": []}]}
    assert first_kind(rep) == ("listen_overflow", 2, 3)
    tie = {"spikes": [_spike("softirq_delay"), _spike("memory_reclaim")]}
    assert first_kind(tie)[0] == "softirq_delay"  # spikes come slowest first
    assert first_kind({"spikes": [{"causes": []}]}) == (None, 0, 0)


def test_lead_cause_is_the_most_confident_winner_of_that_kind():
    rep = {"spikes": [_spike("listen_overflow", conf=0.5), _spike("listen_overflow", conf=0.8),
                      _spike("loss_retransmit", "listen_overflow", conf=0.99)]}
    assert lead_cause(rep, "listen_overflow")["confidence"] == 0.8
    assert lead_cause(rep, "softirq_delay") is None


@pytest.mark.parametrize("rule,kernel,exported,ok", [
    ("equal", 3, 3, True), ("equal", 3, 2, False),
    ("exported>=kernel", 3, 4, True), ("exported>=kernel", 3, 2, False),
    ("exported<=kernel", 3, 2, True), ("exported<=kernel", 3, 4, False), ("info", 1, 9, True)])
def test_check_rules(rule, kernel, exported, ok):
    assert Check("x", kernel, exported, rule).ok is ok


def test_slack_forgives_only_that_many():
    assert Check("x", 304, 303, "exported>=kernel", slack=1).ok
    assert not Check("x", 304, 302, "exported>=kernel", slack=1).ok
    assert not Check("x", 304, 303, "exported>=kernel").ok


def test_undo_stack_runs_newest_first_and_keeps_going_after_a_failure(tmp_path, capsys):
    done = []
    with Lab("t", tmp_path) as lb:
        lb.defer("first", lambda: done.append(1))
        lb.defer("broken", lambda: 1 / 0)
        lb.defer("last", lambda: done.append(3))
    assert done == [3, 1]
    assert lb.cleanup_errors and "broken" in lb.cleanup_errors[0]
    assert "could not remove broken" in capsys.readouterr().err


def test_sigterm_inside_the_lab_unwinds_and_cleans_up(tmp_path):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with Lab("t", tmp_path) as lb:
            lb.defer("thing", lambda: done.append("removed"))
            os.kill(os.getpid(), signal.SIGTERM)
    assert done == ["removed"]
    assert signal.getsignal(signal.SIGTERM) is not None  # the old handler is back


def test_every_registered_scenario_loads_and_declares_its_contract():
    for name in lab.SCENARIOS:
        try:
            s = lab.scenario(name)
        except (ImportError, AttributeError):
            pytest.fail(f"scenario {name} is registered but not implemented")
        assert s.name == name and s.expect and s.title and s.case
        assert s.replay or s.families, name
        assert set(s.families) <= set(runner.FAMILIES)
    with pytest.raises(KeyError, match="known: accept-overflow"):
        lab.scenario("nope")


def test_collector_config_enables_only_the_scenario_families_and_scopes_to_its_namespaces():
    s = lab.scenario("accept-overflow")

    class NS:
        path = "/run/netns/kn-lab-x-server"
    cfg = runner._collector_config(s, [NS()], 4999)
    assert {f for f, v in cfg["probes"].items() if v.get("enabled")} == set(s.families)
    assert cfg["probes"]["netns_counters"]["interval_ms"] == 250  # the scenario's own setting merged in
    assert cfg["scope"]["netns"] == [NS.path]
    assert cfg["receiver"]["http_endpoint"] == "127.0.0.1:4999"


def test_cli_names_unknown_scenarios_and_refuses_a_used_output(tmp_path, capsys):
    assert cli.main(["lab", "no-such"]) == 2
    assert "known: accept-overflow" in capsys.readouterr().err
    (tmp_path / "old.jsonl").write_text("{}")
    with pytest.raises(LabError, match="not empty"):
        runner.run_scenario(lab.scenario("accept-overflow"), str(tmp_path))


def test_lab_help_lists_the_scenarios(capsys):
    with pytest.raises(SystemExit):
        cli.main(["lab", "--help"])
    out = capsys.readouterr().out
    for name in ("accept-overflow", "softirq-delay", "conntrack-rst", "reordering", "reclaim", "pfmemalloc"):
        assert name in out


def test_a_signal_while_creating_waits_until_the_undo_is_registered(tmp_path):
    """Ctrl-C between creating a resource and registering its removal must not leak it."""
    done = []
    with pytest.raises(KeyboardInterrupt):
        with Lab("t", tmp_path) as lb:
            with lb.atomic():
                os.kill(os.getpid(), signal.SIGINT)   # arrives "mid-creation"
                lb.defer("resource", lambda: done.append("removed"))
            pytest.fail("the deferred interrupt was lost")
    assert done == ["removed"]


def _delay(pid, conf, ms):
    return {"causes": [{"kind": "softirq_delay", "confidence": conf,
                        "evidence": {"culprit": f"t{pid}", "culprit_pid": pid, "culprit_ms": ms, "wait_ms": ms, "cpu": 1}}]}


def test_softirq_delay_judges_the_culprit_that_held_net_rx_longest_not_one_confident_outlier():
    """A CI run failed on a baseline spike (hypervisor steal while the collector ran) whose
    cause was as confident as the reader's best: the reader held NET_RX up far longer."""
    from otel_kernelnet.lab.softirq_delay import SoftirqDelay
    s = SoftirqDelay()
    s._reader_pid = 7
    rep = {"spikes": [_delay(3, 0.9, 14.7), _delay(7, 0.9, 15.0), _delay(7, 0.6, 7.0), _delay(0, 0.9, 4.0),
                      _spike("memory_reclaim", conf=0.99)]}
    assert lead_cause(rep, "softirq_delay")["evidence"]["culprit_pid"] == 3  # the generic choice
    chosen = s.lead(rep, "softirq_delay")
    assert chosen["evidence"]["culprit_pid"] == 7 and chosen["confidence"] == 0.9
    assert s.evidence_ok(chosen) == []
    # the reader named less than another task: the run fails
    rep = {"spikes": [_delay(3, 0.5, 30.0), _delay(7, 0.9, 15.0)]}
    assert s.evidence_ok(s.lead(rep, "softirq_delay")) == ["culprit is t3 pid 3, not the reader pid 7"]
    assert s.lead({"spikes": [_spike("memory_reclaim")]}, "softirq_delay") is None
