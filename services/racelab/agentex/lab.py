"""Variant "agent" in the lab's one description of its services (racelab.lab.topology).

- pod-agent-1..3: the Agentex-compatible API (racelab.agentex), the variant's pods: nginx serves
  their ACP front at /agent/ (the lab's wire protocol) and their REST API at /agentex/.
- agent-1..3: the user's agent, `uvicorn project.acp:acp` (or what its Dockerfile's CMD names)
  in the agent's own virtualenv (racelab.agentex.env), never racelab's; nginx round-robins the
  API's forwarded calls over them at /agent-pods/.
- modelstub: the OpenAI-compatible model the agent calls (racelab.modelstub).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..config import AGENT_VARIANT, Settings

APP_DEFAULT = "project.acp:acp"  # Agentex's layout: project/acp.py exposing the FastACP app


def agent_name(settings: Settings) -> str:
    """AGENT_NAME: RACELAB_AGENT_NAME, else the agent folder's name (Agentex names: [a-z0-9-])."""
    import os
    name = os.environ.get("RACELAB_AGENT_NAME") or Path(settings.agent_path or "agent").name
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "agent"


def forward_url(settings: Settings) -> str:
    """Where the API forwards task/create, event/send, task/cancel: the replicas, via nginx."""
    return f"{settings.gateway_url}/agent-pods"


def api_url(settings: Settings, replica: int | None = None) -> str:
    """AGENTEX_BASE_URL: one API replica directly (the agent registers before nginx is up), or
    the gateway's /agentex/ for anyone else."""
    if replica is None:
        return f"{settings.gateway_url}/agentex"
    return f"http://{settings.host}:{settings.pod_port(AGENT_VARIANT, (replica - 1) % settings.replicas + 1)}"


def model_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.modelstub_port}/v1"


def app_spec(agent_dir: Path) -> str:
    """The ASGI app as the agent's Dockerfile starts it (CMD ["uvicorn", "project.acp:acp", ...]),
    else Agentex's default. RACELAB_AGENT_APP overrides."""
    import os
    if os.environ.get("RACELAB_AGENT_APP"):
        return os.environ["RACELAB_AGENT_APP"]
    dockerfile = agent_dir / "Dockerfile"
    if dockerfile.is_file():
        for line in reversed(dockerfile.read_text(errors="replace").splitlines()):
            m = re.match(r'\s*(CMD|ENTRYPOINT)\s+(.*)', line)
            if m and "uvicorn" in m.group(2):
                tokens = re.findall(r'[\w.\-]+:[\w.]+', m.group(2).split("uvicorn", 1)[1])
                if tokens:
                    return tokens[0]
    return APP_DEFAULT


def agent_env_for(name: str, acp_url: str, acp_port: int | str, agentex_url: str, redis_url: str, model: str,
                  temporal_address: str, api_key: str) -> dict[str, str]:
    """What every replica of the agent gets, natively (agent_env) and in compose (racelab.lab.compose):
    its identity and every URL it needs (AGENTEX_BASE_URL, REDIS_URL, the model stub as
    OPENAI_BASE_URL/OPENAI_API_BASE)."""
    return {"AGENT_NAME": name, "ACP_URL": acp_url, "ACP_PORT": str(acp_port),
            "ACP_TYPE": "async", "AGENTEX_BASE_URL": agentex_url, "REDIS_URL": redis_url,
            "TEMPORAL_ADDRESS": temporal_address,
            "OPENAI_BASE_URL": model, "OPENAI_API_BASE": model, "OPENAI_API_KEY": api_key,
            # litellm would fetch its model price map from the internet at import: the local copy
            "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"}


def agent_env(settings: Settings, replica: int, port: int) -> dict[str, str]:
    """The native replica's environment, besides the lab's."""
    import os
    return agent_env_for(agent_name(settings), f"http://{settings.host}", port, api_url(settings, replica),
                         settings.redis_url, model_url(settings), settings.temporal_address,
                         os.environ.get("OPENAI_API_KEY") or "racelab-model-stub")


def uvicorn_args(app: str, host: str, port: int | str, app_dir: str) -> list[str]:
    """How a replica of the agent is started, after its interpreter (natively the agent's virtualenv,
    in compose its own image): as its Dockerfile starts it, `uvicorn project.acp:acp`."""
    return ["-m", "uvicorn", app, "--host", host, "--port", str(port), "--app-dir", app_dir, "--no-access-log"]


def agent_services(settings: Settings, Service, python: str) -> list:
    if not settings.agent_path:
        raise FileNotFoundError("variant agent needs the agent's folder: make up AGENT=<path> (RACELAB_AGENT)")
    r = range(1, settings.replicas + 1)
    return [
        Service(f"pod-{AGENT_VARIANT}", "app", (python, "-m", "racelab.agentex", "--port", "{port}", "--name", "{name}"),
                tuple(settings.pod_port(AGENT_VARIANT, i) for i in r), "http"),
        Service("modelstub", "app", (python, "-m", "racelab.modelstub", "--port", "{port}"),
                (settings.modelstub_port,), "http"),
        Service("agent", "app", (python, "-m", "racelab.agentex.launch", "--port", "{port}", "--name", "{name}"),
                tuple(settings.agent_port(i) for i in r), "http"),
    ]


def nginx_parts(settings: Settings) -> tuple[list[str], list[str]]:
    """nginx: /agent/ -> the API's ACP front, /agentex/ -> its REST API, /agent-pods/ -> the agent."""
    from ..lab.topology import nginx_upstream
    upstreams = [nginx_upstream("agent_pods", (f"{settings.host}:{settings.agent_port(i)}"
                                               for i in range(1, settings.replicas + 1)))]
    # $pod_uri: the request's own URI minus its first segment (topology.GATEWAY_PROXY)
    locations = [f"        location /{AGENT_VARIANT}/ {{ proxy_pass http://{AGENT_VARIANT}/acp$pod_uri; }}",
                 f"        location /agentex/ {{ proxy_pass http://{AGENT_VARIANT}$pod_uri; proxy_buffering off; }}",
                 "        location /agent-pods/ { proxy_pass http://agent_pods$pod_uri; }"]
    return upstreams, locations
