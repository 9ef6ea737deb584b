"""Temporal workers of the temporal variant: the workflow (one per task) and its activities."""
