"""ThunderAgent: a program-aware, OpenAI-compatible scheduling proxy for agentic LLM workloads.

A clean re-implementation, drop-in compatible with upstream ThunderAgent's routes, fields and flags.
"""

__version__ = "0.2.0+tb.0.1.0"
