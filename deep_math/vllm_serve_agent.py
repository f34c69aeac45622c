"""The paper's command for the agent server (`python -m deep_math.vllm_serve_agent ...`): a shim
over `deep_math.serving`, where the server lives (config, service, http, client)."""

from deep_math.engines.weights import state_dict_hash  # noqa: F401 - imported from here by older code
from deep_math.serving import *  # noqa: F403
from deep_math.serving import __all__  # noqa: F401
from deep_math.serving.__main__ import main

if __name__ == "__main__":
    main()
