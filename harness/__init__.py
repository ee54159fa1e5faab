"""thunderbench harness: launch engines and ThunderAgent, run agents, measure steps/min, plot."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("thunderbench")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+src"
