"""The commands of the `thunderbench` CLI, grouped by what they act on; harness/cli.py registers them.

  common.py    consoles, the user-error guard, list options
  stack.py     up, down, status (background services)
  sweep.py     reproduce, run, throughput, plot
  sim.py       sim serve
  workload.py  workload import, fit, show
  evaluate.py  evaluate, recipes
"""
