"""Calibrate the simulator's step-time model against a live vLLM, and keep the data, the fit and its error.

Three parts, so that the arithmetic is tested without an engine:
  probe.py    I/O: controlled requests against a live vLLM (and the simulator's server) -> `Sample`s
  fit.py      pure: samples -> the step model's betas, the per-call overhead, the [frontend] cost
  profile.py  the samples file (JSONL) and the profile's TOML tables, rewritten in place
run.py strings them together; `thunderbench sim calibrate` (harness/commands/sim.py) runs it.
"""
