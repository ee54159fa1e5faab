"""The sweep: arms x concurrency levels x seeds, one fresh engine per point, summarised and plotted.

Modules, each importing only the ones listed above it (no import loops):

  files.py      where a sweep is written until it ends (<out>.incomplete), atomic JSON
  progress.py   the progress display (points done, ETA, live steps/min)
  options.py    SweepOptions and make_options: every input validated before anything starts
  inputs.py     the workload a point samples from (parameters or traces) and its record in the manifests
  summary.py    one row per point, ratios, headroom, repeats, summary.json/csv, the table, results read back
  points.py     one point on the DES or a live engine; run_one / des_worker run it inside a sweep
  bands.py      prediction bands: a Latin hypercube over the input ranges (DES only)
  resume.py     --resume: the recorded options, unfinished points set aside
  reproduce.py  `thunderbench reproduce` and `run`: the sweep itself

Nothing is imported here, so that `import harness.sweep.options` loads no more than it needs.
"""
