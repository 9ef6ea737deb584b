"""The declared invariant of a user's agent (racelab.checker.invariant): parsing, and the lab's
view of an agent state that counts.compute() counts. Pure, no lab."""
from __future__ import annotations

import pytest

from racelab.checker.counts import EffectCount, FinalState, LoggedEvent, compute
from racelab.checker.invariant import AgentEvent, Invariant, InvariantError, load, parse, translate, translate_states

EVENTS = [AgentEvent("t", "a", f"e{i}", i, f"message {i}") for i in range(1, 6)]
IDS = [e.event_id for e in EVENTS]


def counts_for(inv, state, served=None):
    """The checker's counts for one task of variant agent whose own state is `state`."""
    logged = [LoggedEvent("agent", "t", "a", e.event_id, e.seq, 0.0) for e in EVENTS]
    effects = [EffectCount("agent", "t", "a", e, n) for e, n in (served or {}).items()]
    states = translate_states(inv, "agent", [FinalState("agent", "t", "a", state)], EVENTS, effects)
    return compute(logged, states, effects)["agent"]


def test_parse_full_declaration():
    inv = parse('[invariant]\ncounter = "turn_number"\ncounter_start = 1\nlist = "messages"\n'
                'item = "content"\nkey = "content"\nwhere = { role = "user" }\n')
    assert inv == Invariant(counter="turn_number", counter_start=1, list="messages", item="content", key="content",
                            where={"role": "user"})
    assert "turn_number" in inv.describe() and "messages[].content" in inv.describe()


@pytest.mark.parametrize("text, message", [
    ("[invariant]\ncounter = 3\n", "counter must be a non-empty string"),
    ('[invariant]\nlist = "h"\nitem = "name"\n', "item must be one of"),
    ('[invariant]\nkey = "content"\n', "list is missing"),
    ('[invariant]\ncountr = "x"\n', "unknown key(s) countr"),
    ("[invariant\n", "not valid TOML"),
])
def test_parse_refuses_bad_declarations(text, message):
    with pytest.raises(InvariantError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(text)


def test_load_absent_file_is_none(tmp_path):
    assert load(tmp_path) is None and load("") is None
    (tmp_path / "racelab.toml").write_text('[invariant]\ncounter = "n"\n')
    assert load(tmp_path) == Invariant(counter="n")


def test_list_of_ids_and_counter_all_applied():
    c = counts_for(Invariant(counter="processing_count", list="history"),
                   {"processing_count": 5, "history": IDS}, {e: 1 for e in IDS})
    assert (c.accepted, c.applied, c.lost, c.duplicate_applications, c.counter_drift, c.phantoms) == (5, 5, 0, 0, 0, 0)


def test_list_of_ids_lost_duplicated_and_phantom():
    c = counts_for(Invariant(counter="processing_count", list="history"),
                   {"processing_count": 4, "history": ["e1", "e2", "e2", "zz"]})
    assert (c.applied, c.lost, c.duplicate_applications, c.phantoms, c.counter_drift) == (3, 3, 1, 1, -1)


def test_list_matched_by_content_with_filter():
    """The tutorial's shape: messages of several roles, the user's ones name their events by text."""
    messages = [{"role": "system", "content": "be helpful"}]
    for i in (1, 2, 4):
        messages += [{"role": "user", "content": f"message {i}"}, {"role": "assistant", "content": "message 3"}]
    inv = Invariant(counter="turn_number", list="messages", item="content", key="content", where={"role": "user"})
    c = counts_for(inv, {"turn_number": 3, "messages": messages})
    assert (c.applied, c.lost, c.duplicate_applications, c.phantoms, c.counter_drift) == (3, 2, 0, 0, -2)
    view = translate(inv, {"turn_number": 3, "messages": messages}, EVENTS)
    assert view["history"] == ["e1", "e2", "e4"] and view["processing_count"] == 3


def test_same_text_twice_maps_to_two_events():
    events = [AgentEvent("t", "a", "x1", 1, "hi"), AgentEvent("t", "a", "x2", 2, "hi")]
    inv = Invariant(list="m", item="content")
    assert translate(inv, {"m": ["hi", "hi"]}, events)["history"] == ["x1", "x2"]
    assert translate(inv, {"m": ["hi", "hi", "hi"]}, events)["history"] == ["x1", "x2", "x1"]


def test_counter_start_and_dotted_paths():
    inv = Invariant(counter="stats.turns.0", counter_start=10)
    assert translate(inv, {"stats": {"turns": [15]}}, EVENTS)["processing_count"] == 5


def test_counter_only_counts_how_many():
    inv = Invariant(counter="processing_count")
    low = counts_for(inv, {"processing_count": 3}, {"e5": 1, "e4": 1, "e3": 1})
    assert (low.applied, low.lost, low.duplicate_applications, low.counter_drift, low.unworked) == (3, 2, 0, -2, 0)
    high = counts_for(inv, {"processing_count": 7}, {e: 1 for e in IDS})
    assert (high.applied, high.lost, high.duplicate_applications, high.counter_drift) == (5, 0, 2, 2)


def test_no_declaration_counts_model_calls():
    c = counts_for(None, {"anything": True}, {"e1": 1, "e2": 2, "e3": 1})
    assert (c.applied, c.lost, c.duplicate_side_effects, c.counter_drift) == (3, 2, 1, -2)


def test_events_without_a_state_are_lost():
    logged = [LoggedEvent("agent", "t", "a", e.event_id, e.seq, 0.0) for e in EVENTS]
    states = translate_states(Invariant(counter="n"), "agent", [], EVENTS, [])
    c = compute(logged, states, [])["agent"]
    assert (c.tasks, c.accepted, c.lost) == (1, 5, 5)


def test_other_variants_untouched():
    s = FinalState("locked", "t", "a", {"history": ["e1"], "processing_count": 1})
    assert translate_states(Invariant(counter="n"), "agent", [s], [], []) == [s]


def test_apply_times_follow_the_list_entries_through_the_filter_and_repeats():
    """The Agentex API model keeps when each list entry first appeared in a state the agent wrote
    (entry_keys: the entry and its n-th repeat); the lab's view gets them as applied_at, parallel
    to history, so the agent has apply latencies (it had none: `make load` said it applied 0/s)."""
    from racelab.checker.invariant import entry_keys
    inv = Invariant(list="messages", item="content", key="content", where={"role": "user"})
    first = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "message 1"}]}
    later = {"messages": first["messages"] + [{"role": "assistant", "content": "ok"},
                                              {"role": "user", "content": "message 2"},
                                              {"role": "user", "content": "message 1"}]}  # the same text again
    applied = {k: 10.0 for k in entry_keys(inv, first)}
    applied.update({k: 20.0 for k in entry_keys(inv, later) if k not in applied})
    assert len(set(entry_keys(inv, later))) == 5  # the repeated entry has a key of its own
    events = EVENTS[:2] + [AgentEvent("t", "a", "e6", 6, "message 1")]
    view = translate(inv, later, events, applied=applied)
    assert view["history"] == ["e1", "e2", "e6"] and view["applied_at"] == [10.0, 20.0, 20.0]
    # an entry without a time (a state from before the times were kept): the times stop there
    del applied[entry_keys(inv, later)[3]]
    assert translate(inv, later, events, applied=applied)["applied_at"] == [10.0]
    # through the checker: apply latencies from those times
    logged = [LoggedEvent("agent", "t", "a", e.event_id, e.seq, 5.0) for e in events]
    states = translate_states(inv, "agent", [FinalState("agent", "t", "a", later)], events, [],
                              {("t", "a"): {k: 10.0 for k in entry_keys(inv, later)}})
    c = compute(logged, states, [])["agent"]
    assert (c.applied, c.apply_latency_p50_ms) == (3, 5000.0)
