"""The launcher. Its floors: `launch/core/` is the contract layer every part imports (study and
profile schemas, cell jobs, the run folder, a task's environment); `launch/*.py` is the
orchestration on top of the work code in `train/` and `eval/`: the planner (plan), cost estimates
(costs), the worker every executor runs (worker), the local and Slurm executors (local, slurm), the
login node's prefetch, and the CLI (`python -m launch`, __main__.py).
"""
