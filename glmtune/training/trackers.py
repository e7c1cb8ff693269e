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


# swanlab logs through its own Trainer callback, not transformers' built-in one: transformers 5.24's calls
# swanlab.get_run() to see whether a run exists, which swanlab 0.10 answers by raising instead of returning None;
# swanlab keeps its own callback in step with its API.
OWN_CALLBACK = ("swanlab",)


def trainer_integrations(report_to: Iterable[str]) -> list[str]:
    """The trackers transformers' `report_to` runs itself."""
    return [name for name in report_to if name not in OWN_CALLBACK]


def tracker_callbacks(report_to: Iterable[str], run_dir: Path) -> list:
    """Trainer callbacks of the trackers that bring their own (configured by `tracker_environment`)."""
    callbacks = []
    if "swanlab" in report_to:
        import swanlab
        from swanlab.integration.transformers import SwanLabCallback
        from transformers import TrainerCallback

        class FinishSwanLab(TrainerCallback):
            """swanlab's callback leaves its run open until the process exits (its files are written then); close
            it when training ends, so the run directory is complete when `train` returns."""

            def on_train_end(self, args, state, control, **kwargs):
                swanlab.finish()

        mode, log_dir = os.environ.get("SWANLAB_MODE", "offline"), os.environ.get("SWANLAB_LOG_DIR")
        callbacks.append(
            SwanLabCallback(
                project="glmtune",
                experiment_name=run_dir.name,
                mode=mode,
                log_dir=log_dir or str(run_dir / "swanlog"),
            )
        )
        callbacks.append(FinishSwanLab())
    return callbacks
