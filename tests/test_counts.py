"""The checker's arithmetic on hand-made event logs and states (pure logic, no lab)."""
import itertools
import random

from racelab.checker.counts import EffectCount, FinalState, LoggedEvent, compute, inversions, percentile


def logged(variant, task, ids_and_seq, t0=100.0):
    return [LoggedEvent(variant, task, "a", eid, seq, t0) for eid, seq in ids_and_seq]


def test_lost_update_and_drift():
    events = logged("unguarded", "t1", [("e1", 1), ("e2", 2), ("e3", 3)])
    # two handlers read the same state: e2's write was overwritten by e3's
    states = [FinalState("unguarded", "t1", "a", {"processing_count": 2, "history": ["e1", "e3"],
                                                   "applied_at": [100.05, 100.2]})]
    effects = [EffectCount("unguarded", "t1", "a", e, 1) for e in ("e1", "e2", "e3")]
    c = compute(events, states, effects)["unguarded"]
    assert (c.tasks, c.accepted, c.applied, c.lost, c.duplicates, c.counter_drift, c.reordered) == (1, 3, 2, 1, 0, -1, 0)
    assert round(c.apply_latency_p50_ms) == 50 and round(c.apply_latency_p99_ms) == 200


def test_duplicates_count_history_and_effects():
    events = logged("locked", "t1", [("e1", 1), ("e2", 2)])
    states = [FinalState("locked", "t1", "a", {"processing_count": 3, "history": ["e1", "e2", "e1"],
                                                "applied_at": [101, 101, 102]})]
    effects = [EffectCount("locked", "t1", "a", "e1", 3), EffectCount("locked", "t1", "a", "e2", 1)]
    c = compute(events, states, effects)["locked"]
    # one extra history entry + two extra effect rows for e1
    assert (c.accepted, c.applied, c.lost, c.duplicates, c.counter_drift) == (2, 2, 0, 3, 1)


def test_reordered_pairs_and_missing_state():
    events = logged("temporal", "t1", [("a", 1), ("b", 2), ("c", 3)]) + logged("temporal", "t2", [("x", 1)])
    states = [FinalState("temporal", "t1", "a", {"processing_count": 3, "history": ["c", "a", "b"],
                                                  "applied_at": [1, 2, 3]})]
    c = compute(events, states, [])["temporal"]
    # (c,a) and (c,b) are applied against their sequence order; t2 has no state: its event is lost
    assert (c.tasks, c.accepted, c.applied, c.lost, c.reordered, c.counter_drift) == (2, 4, 3, 1, 2, -1)


def test_variants_are_reported_even_without_tasks():
    result = compute([], [], [], variants=("unguarded", "locked"))
    assert set(result) == {"unguarded", "locked"} and result["locked"].accepted == 0
    assert result["locked"].apply_latency_p50_ms is None


def test_inversions_match_brute_force():
    rng = random.Random(7)
    for n in range(0, 40):
        values = [rng.randrange(10) for _ in range(n)]
        brute = sum(1 for i, j in itertools.combinations(range(n), 2) if values[i] > values[j])
        assert inversions(values) == brute


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


def test_young_unapplied_events_are_pending_not_lost():
    events = [LoggedEvent("locked", "t1", "a", "old", 1, 100.0), LoggedEvent("locked", "t1", "a", "new", 2, 108.0)]
    live = compute(events, [], [], now=110.0, grace_s=5.0)["locked"]
    assert (live.lost, live.pending) == (1, 1)
    final = compute(events, [], [])["locked"]
    assert (final.lost, final.pending) == (2, 0)
