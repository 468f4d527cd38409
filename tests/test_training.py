"""Training of the two stages: split, augmentation, staged unfreezing, checkpoints, resume and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from density_db.cli import main
from density_db.errors import ConfigurationError
from density_db.inference.architectures import build_model
from density_db.inference.augmentation import Augmented
from density_db.inference.checkpoints import file_sha256, load_checkpoint, save_checkpoint
from density_db.inference.datasets import SimulatedDataset, split_indices
from density_db.inference.evaluation import evaluate
from density_db.inference.training import (
    TrainingConfig,
    load_backbone,
    phase_of_epoch,
    regressor_stage_epochs,
    set_trainable,
    state_file_of,
    train,
)
from density_db.labels import CLASS_LOWER_EDGES, INPUT_SIZE
from density_db.simulate.dataset import SAMPLES_NAME, plan_samples, write_dataset

SHAPE = (240, 250)


@pytest.fixture(scope="module")
def classify_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "classify"
    write_dataset(
        out,
        plan_samples(32, task="classify", seed=1, balance="uniform"),
        task="classify",
        balance="uniform",
        shape=SHAPE,
    )
    return out


@pytest.fixture(scope="module")
def regress_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "regress"
    write_dataset(out, plan_samples(24, task="regress", seed=2), task="regress", balance="paper", shape=SHAPE)
    return out


def _config(stage: str = "classifier", **overrides) -> TrainingConfig:
    settings = {
        "architecture": "baseline_cnn",
        "batch_size": 8,
        "learning_rate": 3e-3,
        "device": "cpu",
        "seed": 0,
        **overrides,
    }
    return TrainingConfig(stage=stage, **settings)


def test_split_is_8_1_1_disjoint_and_deterministic() -> None:
    train_part, validation, test = split_indices(100, seed=3)
    assert (len(train_part), len(validation), len(test)) == (80, 10, 10)
    assert sorted(np.concatenate([train_part, validation, test]).tolist()) == list(range(100))
    again = split_indices(100, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train_part, validation, test), again))
    assert not np.array_equal(split_indices(100, seed=4)[1], validation)
    with pytest.raises(ConfigurationError, match="at least 3"):
        split_indices(2, seed=0)


def _dihedral(tensor: torch.Tensor) -> list[torch.Tensor]:
    return [
        torch.rot90(flipped, k, dims=(-2, -1)) for flipped in (tensor, torch.flip(tensor, dims=(-1,))) for k in range(4)
    ]


def test_augmentation_keeps_the_original_and_the_mask_and_moves_no_flux() -> None:
    rng = np.random.default_rng(5)
    mask = torch.from_numpy((rng.random((2, 16, 16)) > 0.2).astype(np.float32))[0]
    image = torch.from_numpy(rng.normal(size=(16, 16)).astype(np.float32)) * mask
    samples = [(torch.stack((image, mask)), torch.tensor(3))]

    jittered = Augmented(samples, copies=4, seed=1)
    assert len(jittered) == 4
    assert torch.equal(jittered[0][0], samples[0][0]) and int(jittered[0][1]) == 3
    for index in range(1, 4):
        augmented = jittered[index][0]
        assert any(torch.equal(augmented[1], candidate) for candidate in _dihedral(mask))
        assert torch.all(augmented[0][augmented[1] == 0] == 0)  # invalid pixels stay 0
        assert torch.equal(augmented, jittered[index][0])  # same (seed, epoch, index), same draw

    geometric = Augmented(samples, copies=4, seed=1, brightness=0.0, contrast=0.0)
    orientations = set()
    for epoch in range(6):
        geometric.set_epoch(epoch)
        for index in range(1, 4):
            augmented = geometric[index][0]
            assert torch.isclose(augmented[0].sum(), image.sum(), atol=1e-4)
            orientations.add(
                next(k for k, candidate in enumerate(_dihedral(samples[0][0])) if torch.equal(augmented, candidate))
            )
    assert len(orientations) > 2  # flips and rotations are drawn, and differ between epochs


def test_regressor_stages_unfreeze_head_then_layer4_then_everything() -> None:
    assert regressor_stage_epochs(_config("regressor")) == (30, 40, 70)
    assert regressor_stage_epochs(_config("regressor", epochs=14)) == (3, 4, 7)
    assert regressor_stage_epochs(_config("regressor", epochs=3)) == (1, 1, 1)
    assert [phase_of_epoch(_config("regressor", epochs=14), epoch) for epoch in range(14)] == [0] * 3 + [1] * 4 + [
        2
    ] * 7

    model = build_model("regressor", "resnet18")
    names = [name for name, _ in model.named_parameters()]
    head = set_trainable(model, 0)
    assert head and all(name.startswith("fc.") for name in head)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == set(head)
    with_layer4 = set_trainable(model, 1)
    assert set(with_layer4) == {name for name in names if name.startswith(("fc.", "layer4."))}
    assert set(set_trainable(model, 2)) == set(names)

    baseline = build_model("regressor", "baseline_cnn")
    head = set_trainable(baseline, 0)
    last_linear = max(i for i, module in enumerate(baseline) if isinstance(module, torch.nn.Linear))
    assert head == [f"{last_linear}.weight", f"{last_linear}.bias"]
    assert len(set_trainable(baseline, 1)) == len(head) + 3  # + the last conv (no bias) and its BatchNorm


def test_classifier_training_lowers_the_loss_writes_a_checkpoint_and_resumes(classify_dir, tmp_path) -> None:
    out = tmp_path / "classifier.pt"
    first = train(_config(epochs=2), classify_dir, out)
    assert first.epochs_run == 2 and first.split_sizes == {"train": 26, "validation": 3, "test": 3}
    assert state_file_of(out).exists()

    resumed = train(_config(epochs=4), classify_dir, out, resume=True)
    assert resumed.epochs_run == 4
    assert resumed.train_losses[:2] == first.train_losses  # the first two epochs were not run again
    assert resumed.train_losses[-1] < resumed.train_losses[0]

    loaded = load_checkpoint(out)
    assert (loaded.stage, loaded.architecture) == ("classifier", "baseline_cnn")
    metadata = loaded.metadata
    assert metadata["trained_on"] == "density-db simulator dataset"
    assert metadata["data_manifest_sha256"] == file_sha256(classify_dir / SAMPLES_NAME)
    assert metadata["label_rule"] == "detectable-stars"  # the dataset's rule
    assert metadata["epochs_run"] == 4 and metadata["split_seed"] == 0
    assert metadata["best_validation_loss"] == pytest.approx(min(resumed.validation_losses))
    assert metadata["config"]["stage"] == "classifier" and metadata["config"]["batch_size"] == 8
    assert loaded.sha256 == resumed.sha256
    # The test split's figures, as 'density-db evaluate' measures them on the same three images.
    evaluated = evaluate(classify_dir, loaded, None, split="test")["classification"]
    assert metadata["evaluation"] == resumed.evaluation
    assert metadata["evaluation"]["split"] == "test" and metadata["evaluation"]["samples"] == 3
    for key in ("accuracy", "accuracy_within_one_class", "macro_f1", "brier_score", "expected_calibration_error"):
        assert metadata["evaluation"][key] == pytest.approx(evaluated[key], abs=1e-6), key

    with pytest.raises(ConfigurationError, match="another run"):
        train(_config(epochs=5, split_seed=1), classify_dir, out, resume=True)


def test_classifier_halves_its_learning_rate_on_a_plateau_and_resumes_a_run_saved_without_a_schedule(
    classify_dir, tmp_path
) -> None:
    out = tmp_path / "classifier.pt"
    result = train(_config(epochs=4, scheduler_patience=0), classify_dir, out)
    # With patience 0 every epoch without a new best validation loss halves the rate once.
    best, worse_epochs = float("inf"), 0
    for loss in result.validation_losses:
        if loss < best * (1 - 1e-4):  # ReduceLROnPlateau's default relative threshold
            best = loss
        else:
            worse_epochs += 1
    state = torch.load(state_file_of(out), weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-3 * 0.5**worse_epochs)
    assert state["scheduler"] is not None

    state["scheduler"] = None  # as a classifier run saved before the classifier had a schedule
    torch.save(state, state_file_of(out))
    resumed = train(_config(epochs=5, scheduler_patience=0), classify_dir, out, resume=True)
    assert resumed.epochs_run == 5 and resumed.train_losses[:4] == result.train_losses

    with pytest.raises(ConfigurationError, match="patience >= 0"):
        _config(scheduler_patience=-1)


def test_regressor_trains_through_its_three_stages(regress_dir, tmp_path) -> None:
    result = train(_config("regressor", epochs=3, augment_copies=1), regress_dir, tmp_path / "regressor.pt")
    assert result.epochs_run == 3 and all(np.isfinite(result.validation_losses))
    loaded = load_checkpoint(tmp_path / "regressor.pt")
    assert loaded.stage == "regressor"
    state = torch.load(state_file_of(tmp_path / "regressor.pt"), weights_only=True)
    assert state["phase"] == 2 and state["epoch"] == 3
    # The test split's mean absolute error in dex, computed here by hand from the saved model.
    test_set = SimulatedDataset(regress_dir, indices=split_indices(24, 0)[2])
    images, truth = (torch.stack(column) for column in zip(*test_set))
    with torch.inference_mode():
        predicted = loaded.model.eval()(images).reshape(-1)
    evaluation = loaded.metadata["evaluation"]
    assert evaluation["samples"] == len(test_set) == 2
    assert evaluation["mae"] == pytest.approx(float((predicted - truth).abs().mean()), rel=1e-5)


def test_regressor_starts_from_the_classifier_backbone_and_keeps_its_own_head(regress_dir, tmp_path) -> None:
    torch.manual_seed(7)
    classifier = build_model("classifier", "baseline_cnn", in_channels=4)
    save_checkpoint(
        tmp_path / "classifier.pt",
        classifier,
        stage="classifier",
        architecture="baseline_cnn",
        metadata={"preprocessing_version": 2},
    )
    torch.manual_seed(8)
    regressor = build_model("regressor", "baseline_cnn", in_channels=4)
    head = (
        f"{max(i for i, layer in enumerate(regressor) if isinstance(layer, torch.nn.Linear))}."  # the last linear layer
    )
    fresh_head = {name: tensor.clone() for name, tensor in regressor.state_dict().items() if name.startswith(head)}
    load_backbone(regressor, tmp_path / "classifier.pt", architecture="baseline_cnn")
    started = regressor.state_dict()
    for name, tensor in classifier.state_dict().items():
        if not name.startswith(head):  # 6 logits there, one value here
            assert torch.equal(started[name], tensor), name
    assert all(torch.equal(started[name], tensor) for name, tensor in fresh_head.items())

    result = train(
        _config("regressor", epochs=3, augment_copies=1, backbone_checkpoint=str(tmp_path / "classifier.pt")),
        regress_dir,
        tmp_path / "regressor.pt",
    )
    assert result.epochs_run == 3
    trained = load_checkpoint(tmp_path / "regressor.pt")
    assert trained.metadata["config"]["backbone_checkpoint"] == str(tmp_path / "classifier.pt")


def test_a_backbone_of_another_preprocessing_version_is_refused(regress_dir, tmp_path) -> None:
    """The paper's 2-channel classifier cannot start a regressor of version 2's 4-channel data."""
    save_checkpoint(
        tmp_path / "v1.pt", build_model("classifier", "baseline_cnn"), stage="classifier", architecture="baseline_cnn"
    )
    with pytest.raises(
        ConfigurationError, match="takes preprocessing version 1 inputs .2 channels.; this model takes 4"
    ):
        train(
            _config("regressor", epochs=3, backbone_checkpoint=str(tmp_path / "v1.pt")),
            regress_dir,
            tmp_path / "regressor.pt",
        )


def test_the_paper_input_trains_on_the_first_two_channels_of_version_2_data(classify_dir, tmp_path) -> None:
    """The ablation: the same images, with and without the point-source channels."""
    result = train(_config(epochs=1, preprocessing_version=1), classify_dir, tmp_path / "paper.pt")
    trained = load_checkpoint(result.checkpoint)
    assert trained.preprocessing_version == 1 and trained.metadata["input_channels"] == ["image", "valid_fraction"]
    assert trained.metadata["training_domain"] == {"image_shape": list(SHAPE), "pixel_scale_arcsec": 0.074}
    full = load_checkpoint(train(_config(epochs=1), classify_dir, tmp_path / "v2.pt").checkpoint)
    assert full.preprocessing_version == 2 and len(full.metadata["input_channels"]) == 4


def test_a_backbone_of_another_architecture_or_with_imagenet_weights_is_refused(tmp_path) -> None:
    save_checkpoint(
        tmp_path / "resnet18.pt", build_model("classifier", "resnet18"), stage="classifier", architecture="resnet18"
    )
    with pytest.raises(ConfigurationError, match="is a resnet18 classifier; a baseline_cnn backbone needs"):
        load_backbone(build_model("regressor", "baseline_cnn"), tmp_path / "resnet18.pt", architecture="baseline_cnn")
    with pytest.raises(ConfigurationError, match="not both"):
        _config("regressor", pretrained_weights="imagenet.pth", backbone_checkpoint=str(tmp_path / "resnet18.pt"))


def test_regressor_refuses_a_classification_dataset(classify_dir, regress_dir, tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="needs a regress dataset"):
        train(_config("regressor", epochs=3), classify_dir, tmp_path / "regressor.pt")
    with pytest.raises(ConfigurationError, match=f"{classify_dir} is a classify dataset"):
        train(_config("regressor", epochs=3), [regress_dir, classify_dir], tmp_path / "regressor.pt")


def test_classifier_trains_on_several_datasets_and_resumes_only_on_the_same_ones(
    classify_dir, regress_dir, tmp_path
) -> None:
    out = tmp_path / "classifier.pt"
    both = [classify_dir, regress_dir]
    first = train(_config(epochs=1, augment_copies=1), both, out)
    assert first.split_sizes == {"train": 44, "validation": 6, "test": 6}  # 8:1:1 of 32 + 24 samples
    assert (
        load_checkpoint(out).metadata["data_manifest_sha256"]
        == SimulatedDataset(both, target="density_class").manifest_sha256()
    )
    assert train(_config(epochs=2, augment_copies=1), both, out, resume=True).epochs_run == 2
    with pytest.raises(ConfigurationError, match="the training data differs"):
        train(_config(epochs=3, augment_copies=1), [regress_dir, classify_dir], out, resume=True)


def test_cli_trains_end_to_end_and_reports_errors(classify_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DENSITY_DB_URL", raising=False)
    monkeypatch.setenv("DENSITY_DB_HOME", str(tmp_path / "home"))
    out = tmp_path / "cli.pt"
    common = ["--epochs", "1", "--batch-size", "8", "--device", "cpu"]
    result = CliRunner().invoke(
        main,
        [
            "train",
            "classifier",
            "--data",
            str(classify_dir),
            "--arch",
            "baseline_cnn",
            "--out",
            str(out),
            "--lr-patience",
            "2",
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "after 1 epochs" in result.output and out.exists()
    assert "test split (3 images): accuracy" in result.output
    written = load_checkpoint(out)
    assert written.architecture == "baseline_cnn"
    assert written.metadata["config"]["scheduler_patience"] == 2

    missing = CliRunner().invoke(
        main,
        [
            "train",
            "classifier",
            "--data",
            str(tmp_path / "nowhere"),
            "--arch",
            "baseline_cnn",
            "--out",
            str(out),
            *common,
        ],
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output

    unknown = CliRunner().invoke(
        main, ["train", "classifier", "--data", str(classify_dir), "--arch", "vgg16", "--out", str(out), *common]
    )
    assert unknown.exit_code == 1 and "unknown classifier architecture 'vgg16'" in unknown.output

    wrong_task = CliRunner().invoke(
        main,
        [
            "train",
            "regressor",
            "--data",
            str(classify_dir),
            "--arch",
            "baseline_cnn",
            "--out",
            str(tmp_path / "r.pt"),
            "--epochs",
            "3",
        ],
    )
    assert wrong_task.exit_code == 1 and "needs a regress dataset" in wrong_task.output


def test_cli_starts_from_given_weights_and_names_a_bad_source(classify_dir, regress_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DENSITY_DB_URL", raising=False)
    monkeypatch.setenv("DENSITY_DB_HOME", str(tmp_path / "home"))
    classifier = tmp_path / "classifier.pt"
    save_checkpoint(
        classifier,
        build_model("classifier", "baseline_cnn", in_channels=4),
        stage="classifier",
        architecture="baseline_cnn",
        metadata={"preprocessing_version": 2},
    )
    common = [
        "train",
        "regressor",
        "--data",
        str(regress_dir),
        "--arch",
        "baseline_cnn",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--device",
        "cpu",
    ]
    started = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "r.pt"), "--init", f"backbone:{classifier}"])
    assert started.exit_code == 0, started.output
    assert load_checkpoint(tmp_path / "r.pt").metadata["config"]["backbone_checkpoint"] == str(classifier)

    for value, message in (
        (f"weights:{classifier}", "expected imagenet:PATH or backbone:CKPT"),
        ("imagenet:", "expected imagenet:PATH or backbone:CKPT"),
        (f"imagenet:{tmp_path / 'none.pth'}", "is not a file"),
    ):
        refused = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "x.pt"), "--init", value])
        assert refused.exit_code == 2 and message in refused.output, value
    assert not (tmp_path / "x.pt").exists()


def test_head_refit_fits_the_last_layer_to_the_counts_without_changing_the_network() -> None:
    from torch.utils.data import TensorDataset

    from density_db.inference.head_refit import refit_classifier_head

    torch.manual_seed(3)
    model = build_model("classifier", "baseline_cnn", in_channels=4).eval()
    rng = np.random.default_rng(3)
    totals = 10 ** rng.uniform(0, 5.3, 180)  # classes by the point-like total alone, as the labels count stars
    labels = torch.from_numpy(np.searchsorted(CLASS_LOWER_EDGES, np.floor(totals), side="right") - 1)
    inputs = torch.zeros(len(totals), 4, INPUT_SIZE, INPUT_SIZE)
    inputs[:, 1] = 1.0  # blank, fully valid images: only the counts tell the classes apart
    inputs[:, 2, 0, 0] = inputs[:, 3, 0, 0] = torch.from_numpy(np.floor(totals)).float()
    names = list(model.state_dict())
    with torch.inference_mode():
        before = (model(inputs).argmax(1) == labels).float().mean().item()
    report = refit_classifier_head(
        model,
        TensorDataset(inputs[:120], labels[:120]),
        TensorDataset(inputs[120:], labels[120:]),
        device=torch.device("cpu"),
    )
    with torch.inference_mode():
        after = (model(inputs[120:]).argmax(1) == labels[120:]).float().mean().item()
    assert before < 0.5 and after > 0.9
    assert report["validation_loss_after"] < report["validation_loss_before"]
    assert list(model.state_dict()) == names


def test_head_refit_is_for_the_classifier() -> None:
    with pytest.raises(ConfigurationError, match="refit-head"):
        TrainingConfig(stage="regressor", architecture="baseline_cnn", refit_head=True)
