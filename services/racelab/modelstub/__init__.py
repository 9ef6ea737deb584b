"""An OpenAI-compatible model stub: POST /v1/chat/completions (plain and streaming, as the
openai client and litellm send it when OPENAI_BASE_URL / OPENAI_API_BASE point here), GET
/v1/models, /healthz, /metrics.

Each call sleeps the lab's model latency (RACELAB_MODEL_LATENCY_MS ± RACELAB_MODEL_JITTER_MS),
answers with a fixed text, and is recorded as an effect row of the task it served: the events of
variant "agent" whose text is the content of the request's last user messages (those after the
last assistant message: one for a turn, several for a batch). A black-box agent sends no task id
to its model, so the text is the only link; a call whose text matches no event of the log is
counted (racelab_modelstub_unattributed_total) but records no effect. When several tasks sent the
same text, the newest not yet served event with that text is taken.
"""
