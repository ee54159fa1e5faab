"""Discrete-event mode: the engine model + a closed-loop agent workload + an optional policy, on virtual time.

N programs are kept in flight. A program is one sampled (or replayed) SWE-bench trajectory: environment
preparation, then call 0, tool time, call 1, ... ; when it ends, the next instance starts in its slot
(programs.py). Every call is a `Request` on the program's own append-only token stream, so the engine's
prefix cache sees real reuse.

Arms:
  * "vllm"         — calls go straight to the engine;
  * "thunderagent" — every call passes through the ThunderAgent policy core (ThunderAgent.policy.make_policy,
                     router "tr" by default) driven by the proxy's own policy driver (adapter.py); capacity =
                     num_gpu_blocks x block_size, as discovered from vllm:cache_config_info;
  * "bound"        — the "vllm" arm on the same profile with the KV limit lifted (blocks for every program's
                     longest possible context, so nothing is ever evicted or preempted): the throughput a
                     perfect scheduler could at most reach on this compute, against which a scheduler's
                     headroom is reported;
  * "continuum"    — the engine pins a program's blocks for `pin_ttl_s` after every response that ends in a
                     tool call (all but the last turn), Continuum-style;
  * "vllm-offload", "thunderagent-offload" — "vllm" / "thunderagent" with vLLM's native KV offloading on the
                     engine: a host-memory tier of `kv_offload_gib` GiB, so a prefix evicted from the GPU is
                     loaded over PCIe instead of recomputed when the tier still holds it.

Outputs are the harness's own formats (result.py): StepRecords (one per LLM call, virtual seconds) and the
engine-metrics series (one row per `metrics_interval`), in memory and optionally written to a run directory
with a manifest that says simulated=true and names the profile. Deterministic for a seed. `run_des` is the
one call for a whole run; `Simulation` (simulation.py) is the run itself.
"""

from harness.sim.des.adapter import DesPolicy
from harness.sim.des.programs import DesError, trajectory_source
from harness.sim.des.result import DesResult, default_window, des_manifest, write_run_dir
from harness.sim.des.simulation import (ARMS, BACKEND, OFFLOAD_SUFFIX, Simulation, policy_settings,
                                        prefill_seconds_per_token, run_des, unlimited_blocks)

__all__ = ["ARMS", "BACKEND", "OFFLOAD_SUFFIX", "DesError", "DesPolicy", "DesResult", "Simulation", "default_window",
           "des_manifest", "policy_settings", "prefill_seconds_per_token", "run_des", "trajectory_source",
           "unlimited_blocks", "write_run_dir"]
