"""DeepMath: tool-integrated math reasoning with a sandboxed Python executor and GRPO."""

__version__ = "0.1.0"
