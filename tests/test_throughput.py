"""checker.throughput.keep_up: pure, on hand-made logs and states."""
from racelab.checker.counts import FinalState, LoggedEvent
from racelab.checker.throughput import keep_up


def ev(variant, eid, t):
    return LoggedEvent(variant, "t1", "a", eid, None, t)


def state(variant, applied):  # applied: [(event id, when)]
    return FinalState(variant, "t1", "a", {"history": [e for e, _ in applied], "applied_at": [t for _, t in applied]})


def test_a_variant_that_keeps_up_and_one_that_falls_behind():
    events = [ev("fast", f"f{i}", 100 + i) for i in range(10)] + [ev("slow", f"s{i}", 100 + i) for i in range(10)]
    states = [state("fast", [(f"f{i}", 100.5 + i) for i in range(10)]),
              # slow applies only every other event inside the window, the rest long after it
              state("slow", [(f"s{i}", 100.5 + i if i % 2 == 0 else 200 + i) for i in range(10)])]
    got = keep_up(events, states, 100.0, 110.0, ("fast", "slow", "idle"))
    assert got["fast"]["acked_per_s"] == 1.0 and got["fast"]["applied_per_s"] == 1.0 and got["fast"]["ratio"] == 1.0
    assert got["fast"]["backlog_at_end"] == 0 and got["fast"]["apply_p99_ms"] == 500.0
    assert got["slow"]["applied_per_s"] == 0.5 and got["slow"]["ratio"] == 0.5 and got["slow"]["backlog_at_end"] == 5
    assert got["slow"]["apply_p99_ms"] == (209 - 109) * 1000.0
    assert got["idle"]["ratio"] is None and got["idle"]["acked_per_s"] == 0.0


def test_a_redelivered_event_and_a_draining_backlog_count_once():
    events = [ev("v", "e1", 90.0), ev("v", "e1", 101.0), ev("v", "e2", 102.0)]  # e1 accepted before the window
    states = [state("v", [("e1", 103.0), ("e2", 104.0)])]
    got = keep_up(events, states, 100.0, 110.0, ("v",))
    # e1 was acked before the window (its first record counts) but applied inside it: drained backlog
    assert got["v"]["acked_per_s"] == 0.1 and got["v"]["applied_per_s"] == 0.2 and got["v"]["ratio"] == 2.0
    assert got["v"]["backlog_at_end"] == 0
