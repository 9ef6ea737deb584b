"""ACP pods: the aiohttp servers, one process per replica and variant."""
