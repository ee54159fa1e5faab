"""The simulator's engine model, laid out like vLLM v1's engine core (see engine.py for the map of modules).

Callers import from here: the engine, requests and token sequences, the host KV tier, and the counters with
their `vllm:*` exposition.
"""

from harness.sim.engine.block_pool import BlockPool
from harness.sim.engine.engine import Engine, ProfileLike, StepResult, StepTimeModelLike
from harness.sim.engine.kv_cache_manager import KVCacheManager
from harness.sim.engine.offload import HostKVTier, HostLink, HostTierStats
from harness.sim.engine.output import SchedulerOutput
from harness.sim.engine.request import IdSeq, Request, SegmentSeq, Status, TokenSeq
from harness.sim.engine.scheduler import Scheduler
from harness.sim.engine.stats import (
    EngineStats,
    Histogram,
    engine_sample,
    histogram_sample,
    host_series,
    render_metrics,
)

__all__ = [
    "BlockPool",
    "Engine",
    "EngineStats",
    "Histogram",
    "HostKVTier",
    "HostLink",
    "HostTierStats",
    "IdSeq",
    "KVCacheManager",
    "ProfileLike",
    "Request",
    "Scheduler",
    "SchedulerOutput",
    "SegmentSeq",
    "Status",
    "StepResult",
    "StepTimeModelLike",
    "TokenSeq",
    "engine_sample",
    "histogram_sample",
    "host_series",
    "render_metrics",
]
