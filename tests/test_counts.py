"""The checker's arithmetic on hand-made event logs and states (pure logic, no lab)."""
import itertools
import random

import pytest

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


# ---- doctored inputs: each blind spot of a log-only checker must be caught -----------------

from racelab.checker.ledger import LedgerEntry, LedgerError, LedgerWriter, read_ledger  # noqa: E402


def honest_run():
    """Three events of one task, each logged, applied once, with one model call each."""
    events = logged("locked", "t1", [("e1", 1), ("e2", 2), ("e3", 3)])
    state = {"processing_count": 3, "history": ["e1", "e2", "e3"], "applied_at": [101, 102, 103]}
    effects = [EffectCount("locked", "t1", "a", e, 1) for e in ("e1", "e2", "e3")]
    ledger = [LedgerEntry("locked", "t1", "a", e) for e in ("e1", "e2", "e3")]
    return events, state, effects, ledger


def check(events, state, effects, ledger):
    return compute(events, [FinalState("locked", "t1", "a", state)], effects, ledger=ledger)["locked"]


def test_an_honest_run_is_safe():
    c = check(*honest_run())
    assert c.safe and (c.acked, c.broken_acks, c.lost, c.duplicates, c.phantoms, c.unworked) == (3, 0, 0, 0, 0, 0)
    assert c.last_applied_at == 103


def test_acked_but_never_logged_is_a_broken_ack():
    events, state, effects, ledger = honest_run()
    # the log lost e3 (and so did the state): a log-only checker would see 2 of 2 applied
    events = events[:2]
    state = {"processing_count": 2, "history": ["e1", "e2"], "applied_at": [101, 102]}
    c = check(events, state, effects[:2], ledger)
    assert (c.acked, c.broken_acks, c.accepted, c.lost) == (3, 1, 2, 0) and not c.safe


def test_a_history_entry_never_accepted_is_a_phantom():
    events, state, effects, ledger = honest_run()
    state = dict(state, history=state["history"] + ["ghost"], processing_count=4, applied_at=[101, 102, 103, 104])
    c = check(events, state, effects + [EffectCount("locked", "t1", "a", "ghost", 1)], ledger)
    assert (c.phantoms, c.lost, c.unworked) == (1, 0, 0) and not c.safe


def test_an_application_without_a_model_call_is_unworked():
    events, state, effects, ledger = honest_run()
    c = check(events, state, effects[1:], ledger)
    assert (c.unworked, c.lost, c.duplicates) == (1, 0, 0) and not c.safe


def test_a_processing_count_that_disagrees_with_the_history_is_drift():
    events, state, effects, ledger = honest_run()
    c = check(events, dict(state, processing_count=5), effects, ledger)
    assert c.counter_drift == 2 and not c.safe
    c = check(events, dict(state, processing_count=1), effects, ledger)
    assert c.counter_drift == -2 and not c.safe


def test_duplicate_applications_and_side_effects_are_told_apart():
    events, state, effects, ledger = honest_run()
    state = dict(state, history=["e1", "e2", "e3", "e2"], processing_count=4, applied_at=[101, 102, 103, 104])
    c = check(events, state, effects + [EffectCount("locked", "t1", "a", "e1", 2)], ledger)
    assert (c.duplicate_applications, c.duplicate_side_effects, c.duplicates, c.counter_drift) == (1, 2, 3, 1)
    assert not c.safe
    # a repeated model call alone (a crash mid-batch) is not an unsafe state, but it is counted
    events, state, effects, ledger = honest_run()
    c = check(events, state, effects + [EffectCount("locked", "t1", "a", "e2", 1)], ledger)
    assert (c.duplicate_side_effects, c.duplicate_applications) == (1, 0) and c.safe


def test_a_dropped_history_entry_is_lost():
    events, state, effects, ledger = honest_run()
    c = check(events, dict(state, history=["e1", "e3"], applied_at=[101, 103], processing_count=2), effects, ledger)
    assert (c.lost, c.applied, c.counter_drift) == (1, 2, -1) and not c.safe


def test_a_ledger_naming_another_task_is_a_broken_ack_there():
    events, state, effects, ledger = honest_run()
    c = check(events, state, effects, ledger + [LedgerEntry("locked", "t-other", "a", "e9")])
    assert (c.acked, c.broken_acks, c.tasks) == (4, 1, 2)


def test_no_ledger_leaves_acked_unknown():
    events, state, effects, _ = honest_run()
    c = check(events, state, effects, None)
    assert c.acked is None and c.broken_acks is None and c.safe


def test_ledger_files_round_trip(tmp_path):
    writer = LedgerWriter(tmp_path / "ledger-a.jsonl")
    writer.acked("locked", "t1", "a", "e1")
    writer.acked("locked", "t1", "a", "e1")  # a retry acked twice
    writer.close()
    (tmp_path / "ledger-b.jsonl").write_text('{"variant": "temporal", "task_id": "t2", "agent_id": "a", '
                                            '"event_id": "e2"}\n{"variant": "temporal", "task_')  # killed mid-line
    entries = read_ledger([tmp_path])
    assert entries == [LedgerEntry("locked", "t1", "a", "e1")] * 2 + [LedgerEntry("temporal", "t2", "a", "e2")]


def test_a_doctored_ledger_line_is_refused(tmp_path):
    (tmp_path / "ledger.jsonl").write_text('{"variant": "locked", "task_id": "t1"}\n')
    with pytest.raises(LedgerError):
        read_ledger([tmp_path / "ledger.jsonl"])
    with pytest.raises(LedgerError):
        read_ledger([tmp_path / "missing.jsonl"])


def test_a_task_level_state_is_matched_against_every_agent_of_its_task():
    """task.params.shared_state: agents a1 and a2 append to the task's one state (agent "*");
    the event log keeps the real agent ids. a2's e3 was overwritten by a1's write (a lock keyed
    per (task, agent) does not serialise the two): lost 1, drift -1, nothing else."""
    events = [LoggedEvent("locked", "t1", agent, eid, seq, 100.0)
              for agent, eid, seq in (("a1", "e1", 1), ("a2", "e2", 1), ("a1", "e3", 2), ("a2", "e4", 2))]
    state = {"processing_count": 3, "history": ["e1", "e2", "e4"], "applied_at": [101, 101, 102]}
    effects = [EffectCount("locked", "t1", agent, eid, 1) for agent, eid in
               (("a1", "e1"), ("a2", "e2"), ("a1", "e3"), ("a2", "e4"))]
    ledger = [LedgerEntry("locked", "t1", e.agent_id, e.event_id) for e in events]
    # counted apart, as "locked@shared": what locked does to shared state never mixes with its
    # per-(task, agent) guarantee
    got = compute(events, [FinalState("locked", "t1", "*", state)], effects, variants=("locked",), ledger=ledger)
    assert got["locked"].tasks == 0 and got["locked"].safe
    c = got["locked@shared"]
    assert (c.tasks, c.accepted, c.applied, c.lost, c.phantoms, c.unworked, c.duplicates, c.counter_drift,
            c.acked, c.broken_acks) == (1, 4, 3, 1, 0, 0, 0, -1, 4, 0)
    # the same rows with per-agent states would be a different story: without the shared marker
    # the task-level history's entries of the other agent are phantoms there
    split = [FinalState("locked", "t1", "a1", state)]
    c = compute(events, split, effects)["locked"]
    assert (c.tasks, c.lost, c.phantoms) == (2, 3, 2)
    # every event applied once to the shared state: safe, whatever agent each came from
    state = {"processing_count": 4, "history": ["e1", "e2", "e3", "e4"], "applied_at": [101] * 4}
    c = compute(events, [FinalState("locked", "t1", "*", state)], effects, ledger=ledger)["locked@shared"]
    assert c.safe and (c.tasks, c.applied, c.duplicates) == (1, 4, 0)


def test_a_shared_task_is_counted_under_one_label_even_beside_a_per_agent_row():
    """task/create wrote an empty per-agent state before the shared one took the events: the
    task is counted once, as "<variant>@shared" (the incremental checker relies on one label)."""
    events = [LoggedEvent("locked", "t1", "a1", "e1", 1, 100.0), LoggedEvent("locked", "t1", "a2", "e2", 1, 100.0)]
    states = [FinalState("locked", "t1", "a1", {"processing_count": 0, "history": [], "applied_at": []}),
              FinalState("locked", "t1", "*", {"processing_count": 2, "history": ["e1", "e2"], "applied_at": [101, 102]})]
    effects = [EffectCount("locked", "t1", a, e, 1) for a, e in (("a1", "e1"), ("a2", "e2"))]
    got = compute(events, states, effects)
    assert set(got) == {"locked@shared"}
    c = got["locked@shared"]
    assert (c.tasks, c.accepted, c.applied, c.lost, c.phantoms) == (1, 2, 2, 0, 0) and c.safe


def test_fault_window_in_flight_and_recovery():
    from racelab.checker.faults import fault_window
    # fault at 10, component back at 12
    events = [LoggedEvent("locked", "t1", "a", eid, i, at) for i, (eid, at) in
              enumerate([("done-before", 8.0), ("in-flight", 9.5), ("after-fault", 11.0), ("after-back", 13.0)])]
    state = {"history": ["done-before", "in-flight", "after-fault", "after-back"],
             "applied_at": [9.0, 12.5, 15.0, 13.1], "processing_count": 4}
    w = fault_window(events, [FinalState("locked", "t1", "a", state)], 10.0, 12.0)["locked"]
    # in flight: accepted by 10 and applied after it; recovery: the events accepted by 12 were all
    # applied by 15 (3 s after it was back); the one accepted after 12 does not count
    assert w == {"in_flight": 1, "recovery_s": 3.0}
    lossy = dict(state, history=["done-before", "in-flight", "after-back"], applied_at=[9.0, 12.5, 13.1])
    w = fault_window(events, [FinalState("locked", "t1", "a", lossy)], 10.0, 12.0)["locked"]
    assert w == {"in_flight": 1, "recovery_s": None}  # after-fault was never applied
    assert fault_window(events, [], 10.0, None)["locked"] == {"in_flight": 2, "recovery_s": None}


def test_a_shared_model_call_before_the_shared_state_makes_the_task_shared():
    """A variant recorded its model call under the shared id before its first write of the shared
    state: the task is shared already (one label), its events in flight, not lost to another label."""
    events = [LoggedEvent("queue", "t1", "a1", "e1", 1, 100.0), LoggedEvent("queue", "t1", "a2", "e2", 1, 100.0)]
    effects = [EffectCount("queue", "t1", "*", "e1", 1)]
    got = compute(events, [], effects)
    assert set(got) == {"queue@shared"}
    c = got["queue@shared"]
    assert (c.tasks, c.accepted, c.applied, c.lost) == (1, 2, 0, 2)


def test_an_agent_named_like_the_shared_id_does_not_split_its_task():
    events = [LoggedEvent("locked", "t1", "*", "e1", 1, 100.0), LoggedEvent("locked", "t1", "a2", "e2", 1, 100.0)]
    states = [FinalState("locked", "t1", "a2", {"history": ["e2"], "applied_at": [101.0], "processing_count": 1})]
    assert set(compute(events, states, [])) == {"locked@shared"}


def test_the_verdict_line_names_what_it_judged():
    """`make burst/load VARIANT=agent` said "OK: the guarded variants lost nothing" of a run that
    drove neither of them."""
    from racelab.checker.counts import VariantCounts
    from racelab.checker.quiescence import verdict_line
    assert verdict_line({"agent": VariantCounts("agent", accepted=5), "locked": VariantCounts("locked")}, []) == (
        "OK: no guarded variant (locked, temporal) had events: the counts are reported, not judged")
    assert verdict_line({"locked": VariantCounts("locked", accepted=5), "temporal": VariantCounts("temporal", acked=2)},
                        []).startswith("OK: locked and temporal lost nothing")
    assert verdict_line({"locked": VariantCounts("locked", accepted=5)}, ["locked: lost=1"]) == "FAIL: locked: lost=1"
