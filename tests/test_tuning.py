"""Optuna tuning of the learning rates: the study, the best checkpoint with its "tuning" metadata, and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from density_db.cli import main
from density_db.inference.checkpoints import load_checkpoint
from density_db.inference.training import TrainingConfig
from density_db.inference.tuning import tune
from density_db.simulate.dataset import plan_samples, write_dataset


@pytest.fixture(scope="module")
def classify_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tuning") / "set"
    write_dataset(
        out,
        plan_samples(24, task="classify", seed=1, balance="uniform"),
        task="classify",
        balance="uniform",
        shape=(240, 250),
    )
    return out


def test_tune_keeps_the_best_trial_and_records_it(classify_dir: Path, tmp_path: Path) -> None:
    config = TrainingConfig(stage="classifier", architecture="baseline_cnn", epochs=1, batch_size=8, device="cpu")
    out = tmp_path / "tuned.pt"
    result = tune(config, classify_dir, out, trials=2, seed=0)

    assert len(result.trials) == 2 and result.failed_trials == 0
    assert result.best_validation_loss == min(loss for _, loss in result.trials)
    assert (result.best_params, result.best_validation_loss) in result.trials
    assert all(1e-4 <= params["learning_rate"] <= 3e-3 for params, _ in result.trials)

    loaded = load_checkpoint(out)
    tuning = loaded.metadata["tuning"]
    assert tuning["best_params"]["learning_rate"] == pytest.approx(result.best_params["learning_rate"])
    assert loaded.metadata["config"]["learning_rate"] == pytest.approx(result.best_params["learning_rate"])
    assert tuning["best_validation_loss"] == pytest.approx(result.best_validation_loss)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tuned.pt"]  # temporary trial files are gone


def test_cli_tune_and_its_conflict_with_resume(classify_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DENSITY_DB_URL", raising=False)
    monkeypatch.setenv("DENSITY_DB_HOME", str(tmp_path / "home"))
    out = tmp_path / "cli.pt"
    common = [
        "train",
        "classifier",
        "--data",
        str(classify_dir),
        "--arch",
        "baseline_cnn",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--tune",
        "2",
    ]
    result = CliRunner().invoke(main, common)
    assert result.exit_code == 0, result.output
    assert "learning_rate=" in result.output and "best validation loss" in result.output
    assert "tuning" in load_checkpoint(out).metadata

    conflict = CliRunner().invoke(main, [*common, "--resume"])
    assert conflict.exit_code == 2 and "--resume" in conflict.output


def test_a_diverging_trial_fails_alone(classify_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from density_db.errors import TrainingDivergedError
    from density_db.inference import tuning

    real_train, calls = tuning.train, []

    def first_diverges(config, *arguments, **options):
        calls.append(config)
        if len(calls) == 1:
            raise TrainingDivergedError("no epoch gave a finite validation loss")
        return real_train(config, *arguments, **options)

    monkeypatch.setattr(tuning, "train", first_diverges)
    config = TrainingConfig(stage="classifier", architecture="baseline_cnn", epochs=1, batch_size=8, device="cpu")
    result = tune(config, classify_dir, tmp_path / "tuned.pt", trials=2, seed=0)
    assert result.failed_trials == 1 and len(result.trials) == 1
    assert load_checkpoint(tmp_path / "tuned.pt").metadata["tuning"]
