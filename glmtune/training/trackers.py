"""Experiment trackers for `[train] report_to`: tensorboard, swanlab and wandb, checked before a run starts.

swanlab (the tracker of the official GLM-4 fine-tuning demo) and wandb run in their offline modes, since glmtune
talks to no network: their logs go under the run directory and can be uploaded later (`swanlab sync`,
`wandb sync`). A mode the user set in the tracker's own environment variable is left alone.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

from glmtune.errors import UsageError

PACKAGES = {"tensorboard": "tensorboard", "swanlab": "swanlab", "wandb": "wandb"}
# tracker -> (variable, offline value), (variable naming its log folder, folder under the run directory)
OFFLINE = {
    "swanlab": (("SWANLAB_MODE", "offline"), ("SWANLAB_LOG_DIR", "swanlog")),
    "wandb": (("WANDB_MODE", "offline"), ("WANDB_DIR", "wandb")),
}


def check_trackers(report_to: Iterable[str]) -> None:
    """Refuse, before anything is written, a tracker whose package is not installed."""
    missing = [name for name in report_to if importlib.util.find_spec(PACKAGES[name]) is None]
    if missing:
        raise UsageError(
            f"train.report_to: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; "
            f"pip install {' '.join(missing)}, or remove it"
        )


def tracker_environment(report_to: Iterable[str], run_dir: Path) -> dict[str, str]:
    """Environment for offline tracking into `run_dir`; set in this process (workers inherit it) and returned."""
    settings: dict[str, str] = {}
    for name in report_to:
        if name not in OFFLINE:
            continue
        (mode_var, offline), (dir_var, folder) = OFFLINE[name]
        settings[mode_var] = os.environ.get(mode_var, offline)
        settings[dir_var] = os.environ.get(dir_var, str(run_dir / folder))
    os.environ.update(settings)
    return settings
