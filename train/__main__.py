"""Train one planned cell in this process: python -m train runs/<experiment>/<stage>/<cell id>

The same as `python -m launch run-cell DIR`; kept so that `python -m train` does what a reader expects.
"""
import sys

from launch.worker import run_cell_dir

if __name__ == "__main__":
    sys.exit(run_cell_dir(sys.argv[1]) if len(sys.argv) == 2 else (print("usage: python -m train CELL_DIR"), 2)[1])
