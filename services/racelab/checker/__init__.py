"""The checker: LAB.md's counts from the event log and final states, never from a variant."""
