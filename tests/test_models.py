"""Networks, checkpoints and the two-stage predictor's gating (CPU, small batches)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models

from density_db.errors import ConfigurationError
from density_db.inference.architectures import (
    ARCHITECTURES,
    REGRESSION_HEAD_WIDTHS,
    adapt_first_conv_from_rgb,
    build_model,
    load_imagenet_weights,
)
from density_db.inference.checkpoints import (
    TrainingDomain,
    demo_checkpoint,
    label_metadata,
    load_checkpoint,
    save_checkpoint,
)
from density_db.inference.predictor import TwoStagePredictor
from density_db.labels import CLASS_LOWER_EDGES, INPUT_SIZE, N_CLASSES
from density_db.tables import REGRESSION_STATUSES

STAGE_ARCHITECTURES = [(stage, architecture) for stage, names in ARCHITECTURES.items() for architecture in names]


def _inputs(count: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((count, 2, INPUT_SIZE, INPUT_SIZE), dtype=np.float32))


def _trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch-norm layers non-default running statistics, as training would."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.normal_(0.0, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


# --- architectures -----------------------------------------------------------


@pytest.mark.parametrize(("stage", "architecture"), STAGE_ARCHITECTURES)
def test_every_network_takes_two_channels_and_gives_its_stage_output(stage: str, architecture: str) -> None:
    model = build_model(stage, architecture).eval()
    with torch.inference_mode():
        output = model(_inputs(2))
    assert output.shape == ((2, N_CLASSES) if stage == "classifier" else (2,))
    assert torch.isfinite(output).all()


def _version_2_inputs(point_like: int, bright: int) -> torch.Tensor:
    """Noise images with ``point_like`` and ``bright`` sources spread over their count channels."""
    inputs = torch.cat([_inputs(1), torch.zeros(1, 2, INPUT_SIZE, INPUT_SIZE)], dim=1)
    for channel, total in ((2, point_like), (3, bright)):
        inputs[0, channel].view(-1)[:total] = 1.0
    return inputs


@pytest.mark.parametrize("architecture", ["baseline_cnn", "resnet18"])
def test_version_2_regressor_predicts_a_correction_to_the_bright_sources_total(architecture: str) -> None:
    model = _trained_looking(build_model("regressor", architecture, in_channels=4))
    last_linear = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
    nn.init.zeros_(last_linear.weight)
    nn.init.zeros_(last_linear.bias)
    with torch.inference_mode():
        for bright in (0, 9, 999):
            prediction = model(_version_2_inputs(2 * bright, bright))
            torch.testing.assert_close(prediction, torch.tensor([np.log10(1 + bright)], dtype=torch.float32))


@pytest.mark.parametrize("architecture", ["baseline_cnn", "resnet18"])
def test_version_2_classifier_head_sees_the_point_source_totals(architecture: str) -> None:
    model = _trained_looking(build_model("classifier", architecture, in_channels=4))
    with torch.inference_mode():
        few, many = model(_version_2_inputs(10, 0)), model(_version_2_inputs(10_000, 0))
    assert not torch.allclose(few, many)
    head = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
    paper_head = [
        module for module in build_model("classifier", architecture).modules() if isinstance(module, nn.Linear)
    ][-1]
    assert head.in_features == paper_head.in_features + 2


def test_paper_networks_have_two_channel_first_conv_of_resnet_geometry() -> None:
    for stage, architecture in (("classifier", "resnet34"), ("regressor", "resnet50")):
        first_conv = build_model(stage, architecture).conv1
        assert first_conv.weight.shape == (64, 2, 7, 7)
        assert (first_conv.stride, first_conv.padding, first_conv.bias) == ((2, 2), (3, 3), None)


def test_regression_head_is_512_256_128_1_with_batch_norm_relu_dropout() -> None:
    head = build_model("regressor", "resnet50").fc
    linear_shapes = [(layer.in_features, layer.out_features) for layer in head if isinstance(layer, nn.Linear)]
    assert linear_shapes == [(2048, 512), (512, 256), (256, 128), (128, 1)]
    assert [layer.num_features for layer in head if isinstance(layer, nn.BatchNorm1d)] == list(REGRESSION_HEAD_WIDTHS)
    assert sum(isinstance(layer, nn.ReLU) for layer in head) == 3
    assert sum(isinstance(layer, nn.Dropout) for layer in head) == 3


def test_baseline_cnn_is_well_under_a_megabyte() -> None:
    for stage in ARCHITECTURES:
        parameters = sum(parameter.numel() for parameter in build_model(stage, "baseline_cnn").parameters())
        assert parameters * 4 < 0.5e6


@pytest.mark.parametrize(
    ("stage", "architecture", "named"),
    [
        ("detector", "resnet34", "classifier, regressor"),
        ("classifier", "resnet50", "resnet34, resnet18, baseline_cnn"),
        ("regressor", "resnet34", "resnet50, resnet18, baseline_cnn"),
    ],
)
def test_unknown_stage_or_architecture_lists_the_choices(stage: str, architecture: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        build_model(stage, architecture)


def test_first_conv_adaptation_is_the_mean_over_rgb_for_each_channel() -> None:
    rgb = torch.randn(64, 3, 7, 7, generator=torch.Generator().manual_seed(1))
    adapted = adapt_first_conv_from_rgb(rgb)
    assert adapted.shape == (64, 2, 7, 7)
    for channel in range(2):
        torch.testing.assert_close(adapted[:, channel], rgb.mean(dim=1))
    with pytest.raises(ConfigurationError, match="3"):
        adapt_first_conv_from_rgb(torch.randn(64, 2, 7, 7))


def test_imagenet_weights_load_with_conv1_averaged_and_the_head_kept(tmp_path: Path) -> None:
    torch.manual_seed(0)
    imagenet = models.resnet34(weights=None).state_dict()
    weights_file = tmp_path / "resnet34.pth"
    torch.save(imagenet, weights_file)
    model = build_model("classifier", "resnet34")
    head_before = model.fc.weight.clone()

    load_imagenet_weights(model, weights_file)

    state = model.state_dict()
    rgb_mean = imagenet["conv1.weight"].mean(dim=1, keepdim=True)
    torch.testing.assert_close(state["conv1.weight"], rgb_mean.expand(-1, 2, -1, -1))
    torch.testing.assert_close(state["layer3.2.conv2.weight"], imagenet["layer3.2.conv2.weight"])
    torch.testing.assert_close(state["bn1.running_var"], imagenet["bn1.running_var"])
    assert state["fc.weight"].shape == (N_CLASSES, 512)
    torch.testing.assert_close(state["fc.weight"], head_before)


def test_imagenet_weights_keep_the_regression_head(tmp_path: Path) -> None:
    weights_file = tmp_path / "resnet18.pth"
    torch.save(models.resnet18(weights=None).state_dict(), weights_file)
    model = build_model("regressor", "resnet18")
    head_before = {name: tensor.clone() for name, tensor in model.fc.state_dict().items()}
    load_imagenet_weights(model, weights_file)
    for name, tensor in model.fc.state_dict().items():
        torch.testing.assert_close(tensor, head_before[name])


def test_imagenet_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    weights_file = tmp_path / "resnet18.pth"
    torch.save(models.resnet18(weights=None).state_dict(), weights_file)
    with pytest.raises(ConfigurationError, match="missing"):
        load_imagenet_weights(build_model("classifier", "resnet34"), weights_file)
    with pytest.raises(ConfigurationError, match="ResNet"):
        load_imagenet_weights(build_model("classifier", "baseline_cnn"), weights_file)


def test_imagenet_weights_file_must_be_a_state_dict(tmp_path: Path) -> None:
    not_torch = tmp_path / "notes.txt"
    not_torch.write_text("not weights")
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_imagenet_weights(build_model("classifier", "resnet18"), not_torch)
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_imagenet_weights(build_model("classifier", "resnet18"), tmp_path / "absent.pth")
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(ConfigurationError, match="not a state dict"):
        load_imagenet_weights(build_model("classifier", "resnet18"), a_list)


# --- checkpoints -------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_outputs_and_the_file_sha256(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _trained_looking(build_model("regressor", "resnet18"))
    path = tmp_path / "models" / "regressor.pt"
    extras = {"trained_on": "simulated CSST fields", "training_manifest_sha256": "ab" * 32, "evaluation": {"mae": 0.08}}

    sha256 = save_checkpoint(path, model, stage="regressor", architecture="resnet18", metadata=extras)
    loaded = load_checkpoint(path)

    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == loaded.sha256
    assert (loaded.stage, loaded.architecture, loaded.path) == ("regressor", "resnet18", path)
    assert loaded.metadata == {**label_metadata(), "label_rule": "detectable-stars", **extras}
    assert loaded.metadata["class_lower_edges"] == list(CLASS_LOWER_EDGES)
    assert not loaded.model.training
    batch = _inputs(3)
    with torch.inference_mode():
        assert torch.equal(loaded.model(batch), model(batch))
    assert [entry.name for entry in tmp_path.joinpath("models").iterdir()] == ["regressor.pt"]


def test_shipped_demo_models_are_small_labelled_as_simulator_trained_and_carry_their_test_figures() -> None:
    paths = {stage: demo_checkpoint(stage) for stage in ("classifier", "regressor")}
    assert sum(path.stat().st_size for path in paths.values()) <= 8 * 10**6
    evaluations = {}
    for stage, path in paths.items():
        loaded = load_checkpoint(path, stage=stage)
        assert loaded.metadata["trained_on"] == "density-db simulator dataset"
        evaluations[stage] = loaded.metadata["evaluation"]
        assert evaluations[stage]["split"] == "test"
        assert evaluations[stage]["samples"] == loaded.metadata["split_sizes"]["test"]
    assert 0 <= evaluations["classifier"]["accuracy"] <= evaluations["classifier"]["accuracy_within_one_class"] <= 1
    assert evaluations["regressor"]["mae"] <= evaluations["regressor"]["rmse"]


def test_checkpoint_is_refused_when_the_caller_expects_another_model(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pt"
    save_checkpoint(path, build_model("classifier", "baseline_cnn"), stage="classifier", architecture="baseline_cnn")
    with pytest.raises(ConfigurationError, match="not stage 'regressor'"):
        load_checkpoint(path, stage="regressor")
    with pytest.raises(ConfigurationError, match="not architecture 'resnet34'"):
        load_checkpoint(path, architecture="resnet34")


def test_plain_state_dict_loads_only_with_its_architecture(tmp_path: Path) -> None:
    model = _trained_looking(build_model("classifier", "resnet18"))
    path = tmp_path / "plain.pth"
    torch.save(model.state_dict(), path)

    with pytest.raises(ConfigurationError, match="--arch"):
        load_checkpoint(path)
    with pytest.raises(ConfigurationError, match="does not fit"):
        load_checkpoint(path, architecture="resnet34", stage="classifier")
    loaded = load_checkpoint(path, architecture="resnet18", stage="classifier")

    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    batch = _inputs(2)
    with torch.inference_mode():
        assert torch.equal(loaded.model(batch), model(batch))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("class_lower_edges", [0, 1, 10, 1_000, 10_000, 100_000]),
        ("bright_magnitude_limit", 24.0),
        ("input_size", 256),
        ("preprocessing_version", 0),
        ("input_channels", ["image"]),
    ],
)
def test_checkpoint_with_other_labels_is_refused_naming_the_mismatch(tmp_path: Path, key: str, value: object) -> None:
    path = tmp_path / "classifier.pt"
    save_checkpoint(path, build_model("classifier", "baseline_cnn"), stage="classifier", architecture="baseline_cnn")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["metadata"][key] = value
    torch.save(checkpoint, path)
    with pytest.raises(ConfigurationError, match=key):
        load_checkpoint(path)


def test_a_version_2_checkpoint_takes_four_channels_and_records_its_input_and_domain(tmp_path: Path) -> None:
    """The checkpoint says what its network reads; loading builds the 4-channel network from it."""
    model = build_model("classifier", "baseline_cnn", in_channels=4)
    with pytest.raises(ConfigurationError, match="for preprocessing version 1"):
        save_checkpoint(tmp_path / "wrong.pt", model, stage="classifier", architecture="baseline_cnn")
    domain = {"image_shape": [9216, 9232], "pixel_scale_arcsec": 0.074}
    save_checkpoint(
        tmp_path / "v2.pt",
        model,
        stage="classifier",
        architecture="baseline_cnn",
        metadata={"preprocessing_version": 2, "training_domain": domain},
    )
    loaded = load_checkpoint(tmp_path / "v2.pt")
    assert loaded.preprocessing_version == 2
    assert loaded.metadata["input_channels"] == ["image", "valid_fraction", "point_like", "bright_point_like"]
    assert loaded.training_domain == TrainingDomain((9216, 9232), 0.074)
    with torch.inference_mode():
        assert loaded.model(torch.zeros(2, 4, 224, 224)).shape == (2, 6)
    old = tmp_path / "old.pt"  # the paper's input, from before channels were recorded
    save_checkpoint(old, build_model("classifier", "baseline_cnn"), stage="classifier", architecture="baseline_cnn")
    checkpoint = torch.load(old, weights_only=True)
    del checkpoint["metadata"]["input_channels"]
    torch.save(checkpoint, old)
    assert load_checkpoint(old).preprocessing_version == 1 and load_checkpoint(old).training_domain is None


def test_save_refuses_mislabelled_models_and_unstorable_metadata(tmp_path: Path) -> None:
    model = build_model("classifier", "baseline_cnn")
    path = tmp_path / "classifier.pt"
    with pytest.raises(ConfigurationError, match="not a regressor baseline_cnn"):
        save_checkpoint(path, model, stage="regressor", architecture="baseline_cnn")
    with pytest.raises(ConfigurationError, match="input_size"):
        save_checkpoint(path, model, stage="classifier", architecture="baseline_cnn", metadata={"input_size": 128})
    with pytest.raises(ConfigurationError, match="JSON"):
        save_checkpoint(path, model, stage="classifier", architecture="baseline_cnn", metadata={"when": object()})
    assert list(tmp_path.iterdir()) == []


# --- two-stage predictor -----------------------------------------------------


class _FixedClassifier(nn.Module):
    """Logits chosen per image: each image carries its row of ``logits`` in its first pixel."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[images[:, 0, 0, 0].long()]


class _CountingRegressor(nn.Module):
    """Returns a chosen log10(1 + N_bright) per image and records which images it saw."""

    def __init__(self, log_bright: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("log_bright", log_bright)
        self.calls: list[list[int]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_ids = images[:, 0, 0, 0].long()
        self.calls.append(image_ids.tolist())
        return self.log_bright[image_ids]


def _gating_case(
    classes: list[int], log_bright: list[float]
) -> tuple[TwoStagePredictor, _CountingRegressor, np.ndarray]:
    logits = torch.full((len(classes), N_CLASSES), -2.0)
    logits[torch.arange(len(classes)), torch.tensor(classes)] = 4.0
    logits += torch.linspace(0.0, 0.5, N_CLASSES)  # probabilities that are not all alike
    regressor = _CountingRegressor(torch.tensor(log_bright))
    images = np.zeros((len(classes), 2, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    images[:, 0, 0, 0] = np.arange(len(classes))
    return TwoStagePredictor(_FixedClassifier(logits), regressor), regressor, images


def test_gating_empty_bypassed_and_predicted() -> None:
    classes = [0, 1, 2, 3, 4, 5, 1]
    log_bright = [9.0, 0.5, 1.25, 2.0, 3.3, 9.0, -0.5]
    predictor, regressor, images = _gating_case(classes, log_bright)

    predictions = predictor.predict(images)

    assert regressor.calls == [[1, 2, 3, 4, 6]]
    assert [prediction.density_class for prediction in predictions] == classes
    empty, bypassed = predictions[0], predictions[5]
    assert (empty.regression_status, empty.log_bright, empty.bright_count) == ("empty", 0.0, 0.0)
    assert (bypassed.regression_status, bypassed.log_bright, bypassed.bright_count) == ("bypassed", None, None)
    for index in (1, 2, 3, 4):
        assert predictions[index].regression_status == "predicted"
        assert predictions[index].log_bright == pytest.approx(log_bright[index])
        assert predictions[index].bright_count == pytest.approx(10 ** log_bright[index] - 1, rel=1e-6)
    assert predictions[6].log_bright == pytest.approx(-0.5)
    assert predictions[6].bright_count == 0.0
    assert {prediction.regression_status for prediction in predictions} <= set(REGRESSION_STATUSES)


def test_probabilities_sum_to_one_and_confidence_is_the_chosen_class() -> None:
    predictor, _, images = _gating_case([3, 0, 5, 2], [1.0, 0.0, 0.0, 1.5])
    for prediction in predictor.predict(torch.from_numpy(images)):
        assert len(prediction.probabilities) == N_CLASSES
        assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-6)
        assert prediction.confidence == max(prediction.probabilities)
        assert prediction.confidence == prediction.probabilities[prediction.density_class]


def test_regressor_does_not_run_when_no_image_needs_it() -> None:
    predictor, regressor, images = _gating_case([0, 5, 0], [1.0, 1.0, 1.0])
    statuses = [prediction.regression_status for prediction in predictor.predict(images)]
    assert statuses == ["empty", "bypassed", "empty"]
    assert regressor.calls == []


def test_predictor_runs_real_networks_and_checks_the_input_shape() -> None:
    torch.manual_seed(0)
    predictor = TwoStagePredictor(build_model("classifier", "baseline_cnn"), build_model("regressor", "baseline_cnn"))
    predictions = predictor.predict(_inputs(3).numpy())
    assert len(predictions) == 3
    assert not predictor.classifier.training and not predictor.regressor.training
    for prediction in predictions:
        assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-6)
        assert (prediction.bright_count is None) == (prediction.regression_status == "bypassed")
    with pytest.raises(ValueError, match="shape"):
        predictor.predict(torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE))


def test_mixed_precision_keeps_the_regression_output_in_float32() -> None:
    """bfloat16 would round log10(1 + N) to 8-bit mantissa steps; the output layer runs in float32."""
    torch.manual_seed(0)
    classifier, regressor = build_model("classifier", "baseline_cnn"), build_model("regressor", "baseline_cnn")
    with torch.no_grad():
        regressor[-2].bias.fill_(2.5)  # outputs near log10(1 + 300), where bfloat16 steps are 0.016
    images = _inputs(16)
    with torch.inference_mode():
        exact = TwoStagePredictor(classifier, regressor)._regress(images)
        mixed = TwoStagePredictor(classifier, regressor, mixed_precision=True)._regress(images)
    assert mixed.dtype == torch.float32
    on_bfloat16_grid = mixed.to(torch.bfloat16).float() == mixed
    assert not on_bfloat16_grid.all()
    np.testing.assert_allclose(mixed.numpy(), exact.numpy(), atol=0.05)
