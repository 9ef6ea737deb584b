"""racelab: race conditions in async ACP agent servers, made visible and counted."""
