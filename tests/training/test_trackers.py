"""report_to trackers: swanlab and wandb offline under the run directory; a missing package is one clear line."""

import importlib.util

import pytest
from conftest import ROOT
from test_cli import glmtune

from glmtune.errors import UsageError
from glmtune.recipe_files import load_recipe
from glmtune.training.trackers import check_trackers, tracker_environment


@pytest.mark.parametrize("tracker", ["swanlab", "wandb"])
def test_a_missing_tracker_package_is_refused_before_anything_is_written(tmp_path, tracker):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    with pytest.raises(
        UsageError, match=f"train.report_to: {tracker} is not installed; pip install {tracker}"
    ):
        check_trackers([tracker])
    result = glmtune("train", ROOT / "recipes" / "demo.toml", "--set", f"run.output_dir={tmp_path}",
                     "--set", f"train.report_to=['{tracker}']")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{tracker} is not installed" in result.stderr and not any(tmp_path.iterdir())


def test_trackers_log_offline_into_the_run_directory_unless_the_user_chose(tmp_path, monkeypatch):
    for variable in (
        "SWANLAB_MODE",
        "SWANLAB_LOG_DIR",
        "WANDB_DIR",
    ):  # recorded, so restored (unset) afterwards
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    monkeypatch.setenv("WANDB_MODE", "online")
    settings = tracker_environment(["tensorboard", "swanlab", "wandb"], tmp_path)
    assert settings == {"SWANLAB_MODE": "offline", "SWANLAB_LOG_DIR": str(tmp_path / "swanlog"),
                        "WANDB_MODE": "online", "WANDB_DIR": str(tmp_path / "wandb")}  # fmt: skip


def test_report_to_accepts_the_three_trackers_and_names_a_wrong_one(tmp_path):
    recipe = load_recipe(
        ROOT / "recipes" / "demo.toml", ["train.report_to=['swanlab', 'wandb', 'tensorboard']"]
    )
    assert recipe.train.report_to == ["swanlab", "wandb", "tensorboard"]
    with pytest.raises(UsageError, match="train.report_to.0"):
        load_recipe(ROOT / "recipes" / "demo.toml", ["train.report_to=['mlflow']"])


def test_a_run_logs_to_all_three_trackers_offline_under_the_run_directory(tmp_path, monkeypatch):
    from conftest import tiny_recipe

    from glmtune.training.train import train

    for tracker in ("tensorboard", "swanlab", "wandb"):
        if importlib.util.find_spec(tracker) is None:
            pytest.skip(f"{tracker} is not installed (pip install -e '.[trackers]')")
    for variable in ("SWANLAB_MODE", "SWANLAB_LOG_DIR", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(variable, raising=False)  # the run's own defaults: offline, into the run directory
    monkeypatch.setenv("WANDB_SILENT", "true")
    recipe = tiny_recipe(tmp_path, "builtin:tiny-glm4", "train.max_steps=2", "train.logging_steps=1",
                         "train.report_to=['tensorboard', 'swanlab', 'wandb']")  # fmt: skip
    run_dir = train(recipe)
    assert list((run_dir / "wandb").rglob("offline-run-*/run-*.wandb")), "wandb wrote no offline run"
    (swanlab_run,) = (run_dir / "swanlog").glob("run-*/run-*.swanlab")
    assert swanlab_run.stat().st_size > 0, "swanlab wrote no offline run"
    assert list((run_dir / "checkpoints" / "runs").rglob("events.out.tfevents.*")), "no tensorboard events"
