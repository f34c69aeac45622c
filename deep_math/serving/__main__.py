"""python -m deep_math.serving [--config configs/vllm_agent_server.yaml] [--model ...] [--port 8000]"""

from __future__ import annotations

import logging

from deep_math.config_utils import ConfigError
from deep_math.serving.config import parse_args
from deep_math.serving.http import AgentServer
from deep_math.serving.service import AgentService

log = logging.getLogger("deep_math.serving")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_args(argv)
    except ConfigError as exc:
        raise SystemExit(f"Config error: {exc}") from None
    service = AgentService(cfg)
    server = AgentServer(service, cfg.host, cfg.port)
    log.info(
        "Agent server for %s (engine %s, max_steps %d, max_agent_output %d) on http://%s:%d",
        service.model_id,
        cfg.engine,
        cfg.agent.max_steps,
        cfg.agent.max_agent_output,
        cfg.host,
        server.server_address[1],
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        service.close()


if __name__ == "__main__":
    main()
