"""Bring your own agent: an Agentex-compatible API in front of a user's agentex-sdk agent
(variant "agent"), its environment and its replicas. See README, "Test your own agent"."""
