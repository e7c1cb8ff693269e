"""Entry point of each training process a launcher starts: `python -m glmtune.training.worker RUN_DIR [--resume]`.

Every worker reads the same resolved recipe from the run directory; overrides never travel as arguments.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from glmtune.console import term
from glmtune.errors import UsageError


def main() -> None:
    run_dir = Path(sys.argv[1])
    try:
        from glmtune.checkpoints.load import quiet_libraries

        quiet_libraries()  # before transformers and peft are imported by the training modules
        from glmtune.rundir import run_recipe
        from glmtune.training.train import train_here

        train_here(run_recipe(run_dir), run_dir, resume="--resume" in sys.argv[2:])
    except UsageError as exc:
        if os.environ.get("RANK", "0") == "0":  # every rank hits the same problem; one line is enough
            term.error(str(exc))
        sys.exit(2)


if __name__ == "__main__":
    main()
