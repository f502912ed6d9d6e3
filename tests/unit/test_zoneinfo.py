"""/proc/zoneinfo parsing on real and hand-written text (tests/fixtures/proc/README.md)."""

from pathlib import Path

import pytest

from otel_kernelnet.kernel import zoneinfo

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "proc"


def test_real_zoneinfo_of_the_reference_machine():
    zones = zoneinfo.parse((FIX / "zoneinfo.6.18").read_text())
    assert [z.key for z in zones] == ["node0/DMA", "node0/DMA32", "node0/Normal", "node0/Movable", "node0/Device"]
    dma = zones[0]
    assert (dma.free_pages, dma.min_pages, dma.low_pages, dma.high_pages, dma.managed_pages, dma.present_pages) == \
        (3840, 10, 13, 16, 3840, 3998)
    normal = zones[2]
    assert (normal.min_pages, normal.low_pages, normal.high_pages, normal.managed_pages) == (14769, 20163, 25557, 5394266)
    assert normal.level == "ok"
    movable = zones[3]
    assert (movable.free_pages, movable.min_pages, movable.managed_pages) == (0, 32, 0)
    assert movable.level == "empty" and zoneinfo.below_min(zones) == []


def test_levels_and_the_pageset_high_lines():
    zones = zoneinfo.parse((FIX / "zoneinfo.handwritten").read_text())
    assert [(z.key, z.level) for z in zones] == [
        ("node0/DMA", "ok"), ("node0/Normal", "below_min"), ("node0/Movable", "empty"), ("node1/Normal", "below_high")]
    assert zones[0].high_pages == 16  # not the pageset's "high:  0"
    assert zones[1].high_pages == 25557  # not "high:  10334"
    assert zoneinfo.below_min(zones) == ["node0/Normal"]
    assert zones[1].as_dict() == {"node": 0, "zone": "Normal", "free_pages": 14000, "min_pages": 14769,
                                  "low_pages": 20163, "high_pages": 25557, "managed_pages": 5394266,
                                  "present_pages": 5505024, "level": "below_min"}


def test_bad_text():
    with pytest.raises(zoneinfo.ZoneinfoError, match="no 'Node N, zone NAME'"):
        zoneinfo.parse("hello\n")
    with pytest.raises(zoneinfo.ZoneinfoError, match="node0/Normal|0/Normal: no low, high"):
        zoneinfo.parse("Node 0, zone Normal\n  pages free 5\n        min 3\n")
