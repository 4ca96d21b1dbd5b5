"""Evaluate one planned cell in this process: python -m eval runs/<experiment>/eval/<cell id>

The same as `python -m launch run-cell DIR`. Tables and plots: python -m eval.collect runs/<experiment>.
"""
import sys

from launch.worker import run_cell_dir

if __name__ == "__main__":
    sys.exit(run_cell_dir(sys.argv[1]) if len(sys.argv) == 2 else (print("usage: python -m eval CELL_DIR"), 2)[1])
