"""``density-db models``: checkpoints registered once by content, found by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from density_db.database import Database
from density_db.errors import ConfigurationError
from density_db.inference.architectures import build_model
from density_db.inference.checkpoints import save_checkpoint
from density_db.inference.model_registry import checkpoint_path, find_model, register_model, resolve_model


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "classifier.pt"
    save_checkpoint(
        path,
        build_model("classifier", "baseline_cnn"),
        stage="classifier",
        architecture="baseline_cnn",
        metadata={"trained_on": "test"},
    )
    return path


def test_registering_the_same_checkpoint_twice_keeps_one_row(
    run_cli, database: Database, checkpoint: Path, tmp_path: Path
) -> None:
    first = run_cli("models", "add", str(checkpoint), "--name", "demo-classifier")
    assert first.exit_code == 0, first.output
    assert first.output.startswith("registered demo-classifier (classifier, baseline_cnn")
    copy = tmp_path / "copy.pt"
    copy.write_bytes(checkpoint.read_bytes())
    second = run_cli("models", "add", str(copy))
    assert second.output.startswith("already registered as demo-classifier")
    with database.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM model")).scalar() == 1
    listed = run_cli("models", "list", "--format", "csv").output.splitlines()
    assert listed[0] == "id,name,stage,architecture,label_rule,sha256,path" and len(listed) == 2
    assert ",detectable-stars," in listed[1]
    shown = run_cli("models", "show", "demo-classifier").output
    assert "classifier, baseline_cnn" in shown
    assert "labels: detectable-stars (stars brighter than the 5-sigma point-source depth" in shown
    assert "note:" not in shown
    assert "trained on: images of unrecorded shape and scale (no domain flag)" in shown
    assert json.loads(shown[shown.index("{") :])["trained_on"] == "test"


def test_the_shipped_demo_models_say_what_they_were_trained_on(run_cli, database) -> None:
    from density_db.inference.checkpoints import DEMO_MODELS_DIRECTORY

    for path in sorted(DEMO_MODELS_DIRECTORY.glob("*.pt")):
        added = run_cli("models", "add", str(path))
        assert added.exit_code == 0, added.output
        name = added.output.split()[1]
        shown = run_cli("models", "show", name).output
        assert "labels: detectable-stars (stars brighter than the 5-sigma point-source depth" in shown
        assert "note:" not in shown
        assert "input: preprocessing version 2 (image, valid_fraction, point_like, bright_point_like)" in shown
        assert 'trained on: 9216 x 9232 images at 0.074"/px' in shown


def test_names_resolve_to_paths_and_clashes_are_refused(database: Database, checkpoint: Path, tmp_path: Path) -> None:
    registered, created = register_model(database, checkpoint, name="mine")
    assert created and registered.name == "mine" and registered.metadata["trained_on"] is not None
    assert checkpoint_path(database, "mine") == checkpoint.absolute()
    assert checkpoint_path(database, str(checkpoint)) == checkpoint
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model("regressor", "baseline_cnn"), stage="regressor", architecture="baseline_cnn")
    with pytest.raises(ConfigurationError, match="taken by another checkpoint"):
        register_model(database, other, name="mine")
    with pytest.raises(ConfigurationError, match="no registered model is named 'nobody'"):
        find_model(database, "nobody")


def test_a_registered_checkpoint_whose_file_moved_is_found_at_its_new_path(
    database: Database, checkpoint: Path, tmp_path: Path
) -> None:
    """As after reinstalling density-db elsewhere: the shipped model's row must follow its file."""
    registered, _created = register_model(database, checkpoint, name="mine")
    moved = checkpoint.rename(tmp_path / "reinstalled.pt")
    with pytest.raises(ConfigurationError, match="is registered but its file .* is gone"):
        resolve_model(database, "mine", stage="classifier")
    again = resolve_model(database, str(moved), stage="classifier")
    assert (again.id, again.name, again.path) == (registered.id, "mine", str(moved.absolute()))
    assert checkpoint_path(database, "mine") == moved.absolute()

    # A file that still exists keeps its row's path.
    copy = tmp_path / "copy.pt"
    copy.write_bytes(moved.read_bytes())
    assert register_model(database, copy)[0].path == str(moved.absolute())


def test_a_file_that_is_not_a_checkpoint_is_refused(run_cli, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    result = run_cli("models", "add", str(junk))
    assert result.exit_code == 1


def test_evaluate_accepts_a_registered_name(run_cli, checkpoint: Path, tmp_path: Path) -> None:
    from density_db.simulate.dataset import plan_samples, write_dataset

    write_dataset(
        tmp_path / "set",
        plan_samples(6, task="classify", seed=2, balance="uniform"),
        task="classify",
        balance="uniform",
        shape=(240, 250),
        version=1,
    )  # the checkpoint's input
    run_cli("models", "add", str(checkpoint), "--name", "my-classifier")
    result = run_cli(
        "evaluate",
        "--data",
        str(tmp_path / "set"),
        "--classifier",
        "my-classifier",
        "--regressor",
        "none",
        "--out",
        str(tmp_path / "report"),
        "--split",
        "all",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "report.json").exists()
    unknown = run_cli("evaluate", "--data", str(tmp_path / "set"), "--classifier", "nobody", "--out", str(tmp_path))
    assert unknown.exit_code == 1 and "no registered model is named 'nobody'" in unknown.output
