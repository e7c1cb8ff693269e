"""Entry point of each training process a launcher starts: `python -m glmtune.training.worker RUN_DIR [--resume]`.

Every worker reads the same resolved recipe from the run directory; overrides never travel as arguments.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from glmtune.console import quiet_libraries, term
from glmtune.errors import UsageError


def main() -> None:
    run_dir = Path(sys.argv[1])
    try:
        quiet_libraries()  # before transformers and peft are imported by the training modules
        from glmtune.checkpoints.load import open_base
        from glmtune.rundir import run_recipe
        from glmtune.training.train import train_here

        recipe = run_recipe(run_dir)
        train_here(recipe, open_base(recipe.model), run_dir, resume="--resume" in sys.argv[2:])
    except UsageError as exc:
        if os.environ.get("RANK", "0") == "0":  # every rank hits the same problem; one line is enough
            term.error(str(exc))
        sys.exit(2)


if __name__ == "__main__":
    main()
