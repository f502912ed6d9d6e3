"""The time-chunked joins give the same answer as a brute-force join, whatever the chunk size."""

import random

import polars as pl
import pytest

from kernelnet_analysis.timejoin import cpu_window_join, key_interval_join, pair_next


def _windows(r, n_cpu=3, n=60):
    """Non-overlapping windows per CPU, as softirq runs are."""
    rows = []
    for cpu in range(n_cpu):
        t = 0
        for _ in range(n):
            t += r.randrange(1, 30)
            d = r.randrange(0, 20)
            rows.append((t, t + d, cpu))
            t += d
    r.shuffle(rows)
    return pl.DataFrame(rows, schema=["start", "end", "cpu"], orient="row")


@pytest.mark.parametrize("chunk_rows", [1, 7, 50, 10_000])
def test_cpu_window_join_matches_brute_force(chunk_rows):
    r = random.Random(chunk_rows)
    w = _windows(r)
    pts = pl.DataFrame({"ts": [r.randrange(0, 2500) for _ in range(400)], "cpu": [r.randrange(3) for _ in range(400)]})
    got = cpu_window_join(pts, w, chunk_rows=chunk_rows)
    expect = (pts.with_row_index("p").join(w.with_row_index("w"), on="cpu")
              .filter((pl.col("start") <= pl.col("ts")) & (pl.col("ts") <= pl.col("end")))
              .group_by("p").agg(pl.col("w").first()))
    want = [None] * pts.height
    for p, wi in expect.rows():
        want[p] = wi
    assert got.to_list() == want  # in the caller's (unsorted) order
    assert got.null_count() not in (0, pts.height)  # both cases are exercised


def _pairs_reference(events):
    """Events other than starts (0) and ends (1, 2) are passed over (protocol, enqueue, ...)."""
    rows = sorted(((i, e) for i, e in enumerate(events.rows()) if e[2] in (0, 1, 2)),
                  key=lambda x: (x[1][0], x[1][1], x[0]))
    pairs, n_open = [], 0
    for i, (row, (key, ts, kind)) in enumerate(rows):
        if kind != 0:
            continue
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        if nxt and nxt[1][0] == key and nxt[1][2] in (1, 2):
            pairs.append((row, nxt[0], nxt[1][1] - ts, nxt[1][2]))
        else:
            n_open += 1
    return sorted(pairs), n_open


@pytest.mark.parametrize("chunk_rows", [1, 5, 33, 10_000])
def test_pair_next_matches_brute_force(chunk_rows):
    r = random.Random(100 + chunk_rows)
    rows, t = [], 0
    for _ in range(300):  # addresses reused, ends sometimes missing, some unrelated events (kind 3)
        t += r.randrange(0, 4)
        rows.append((r.randrange(12), t, r.choice([0, 0, 1, 2, 3])))
    ev = pl.DataFrame(rows, schema=["skb", "ts", "kind"], orient="row")
    pairs, n_open = pair_next(ev, chunk_rows=chunk_rows)
    want_pairs, want_open = _pairs_reference(ev)
    assert sorted(pairs.rows()) == want_pairs and n_open == want_open
    assert want_pairs and want_open  # both cases are exercised


def test_pair_next_counts_starts_too_old_to_carry():
    ev = pl.DataFrame({"skb": [1, 2, 1], "ts": [0, 50, 100], "kind": [0, 0, 1]})
    pairs, n_open = pair_next(ev, chunk_rows=1, max_age_ns=10)
    assert pairs.height == 0 and n_open == 2  # skb 1's start aged out before its end; skb 2 never ended
    pairs, n_open = pair_next(ev, chunk_rows=1, max_age_ns=1000)
    assert pairs.rows() == [(0, 2, 100, 1)] and n_open == 1


@pytest.mark.parametrize("chunk_rows", [1, 9, 10_000])
def test_key_interval_join_matches_brute_force(chunk_rows):
    r = random.Random(200 + chunk_rows)
    a_rows = []
    for _ in range(150):
        s = r.randrange(0, 5000)
        a_rows.append((r.randrange(10), s, s + r.randrange(0, 200)))
    k_rows = []
    for _ in range(500):
        s = r.randrange(0, 5300)
        k_rows.append((r.randrange(10), s, s + r.choice([0, 0, 5, 80])))
    a = pl.DataFrame(a_rows, schema=["cookie", "start", "end"], orient="row")
    k = pl.DataFrame(k_rows, schema=["cookie", "k_start", "k_end"], orient="row")
    got = key_interval_join(a, k, pre_ns=20, post_ns=5, bucket_ns=37, chunk_rows=chunk_rows)
    want = (a.with_row_index("app_row").join(k.with_row_index("kernel_row"), on="cookie")
            .filter((pl.col("start") - 20 <= pl.col("k_end")) & (pl.col("k_start") <= pl.col("end") + 5))
            .select("app_row", "kernel_row").sort("kernel_row", "app_row"))
    assert want.height > 50 and got.sort("kernel_row", "app_row").equals(want)
    k_sorted = k.sort("k_start")  # in time order the result comes out ordered by kernel row
    got = key_interval_join(a, k_sorted, pre_ns=20, post_ns=5, bucket_ns=37, chunk_rows=chunk_rows)
    assert got.equals(got.sort("kernel_row", "app_row")) and got.height == want.height
