"""Former home of the transformers engine, kept so existing imports work: see
`deep_math.engines.transformers`."""

from deep_math.engines.transformers import *  # noqa: F403
from deep_math.engines.transformers import __all__  # noqa: F401
