"""Where the "tr" scheduler draws its lines: the token limits it pauses above and resumes below.

`CapacityPolicy` (capacity.py) owns the accounting and the pause/resume mechanics; a `Limits` object only
answers "how many charged tokens may this backend hold?" as two numbers:

  * high — pause (ACTING programs first, then marks) when the backend's charged usage exceeds it;
  * low  — pause down to it, and admit/resume only while usage stays at or below it.

The gap between them is the hysteresis that stops a program from being paused and resumed on alternate
ticks. `FixedLimits` ("--tr-mode fixed") is upstream's rule made explicit: a fixed fraction of the engine's
KV-cache tokens. Issue 11's cost-aware mode plugs in here: a `Limits` whose numbers move with what pausing
saves and costs (it may let usage run past the KV capacity when re-prefill is cheap), fed engine figures
through `observe`, without touching the policy's bookkeeping.
"""

from __future__ import annotations

from typing import Protocol

from ThunderAgent.config import Config

TR_MODES = ("fixed",)


class Limits(Protocol):
    def high(self, url: str, capacity: int) -> float: ...
    def low(self, url: str, capacity: int) -> float: ...

    def observe(self, url: str, metrics: dict[str, float], now: float) -> None:
        """Engine figures for `url` (vLLM metric names, as ThunderAgent.backends.parse_vllm_metrics returns
        them). Fixed limits ignore them; a cost-aware mode learns from them."""
        ...


class FixedLimits:
    """high = high_watermark × capacity, low = low_watermark × capacity (capacity in KV tokens)."""

    def __init__(self, high_watermark: float, low_watermark: float) -> None:
        if not (0.0 < low_watermark <= high_watermark):
            raise ValueError(
                f"need 0 < --low-watermark <= --high-watermark, got low={low_watermark} high={high_watermark}"
            )
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark

    def high(self, url: str, capacity: int) -> float:
        return self.high_watermark * capacity

    def low(self, url: str, capacity: int) -> float:
        return self.low_watermark * capacity

    def observe(self, url: str, metrics: dict[str, float], now: float) -> None:
        return None


def make_limits(config: Config) -> Limits:
    mode = getattr(config, "tr_mode", "fixed")
    if mode == "fixed":
        return FixedLimits(config.high_watermark, config.low_watermark)
    raise ValueError(f"unknown --tr-mode {mode!r}: choose one of {', '.join(TR_MODES)}")
