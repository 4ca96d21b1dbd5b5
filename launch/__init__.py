"""The launcher: study spec (launch.spec), planner (launch.plan), run layout (launch.layout), executors.

Entry point: python -m launch {plan,run,run-cell} ... (see launch/__main__.py).
"""
