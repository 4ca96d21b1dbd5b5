"""The contract layer: what every other part of elastica agrees on, and the only part of `launch`
that `train/` and `eval/` import. The study and profile schemas (schema, spec, profile), cell jobs
and their registry (jobs), the run folder on disk (layout), the environment of a task (env) and W&B
for cells (tracking). Nothing here imports the orchestration (launch/*.py), the work code (train/,
eval/) or torch.
"""
