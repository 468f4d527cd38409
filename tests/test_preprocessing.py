"""The one preprocessing function against a direct float64 implementation of the paper's recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.functional import adaptive_avg_pool2d

from density_db.errors import InputError
from density_db.inference.preprocessing import preprocess, preprocess_tensor


def reference(image: np.ndarray, quality: np.ndarray | None) -> np.ndarray:
    """Sec. 2.3 literally, in float64 at full resolution: mask, standardise, stack, pool."""
    x = torch.from_numpy(image.astype(np.float64))
    valid = torch.isfinite(x)
    if quality is not None:
        valid &= torch.from_numpy(quality) == 0
    mean, std = x[valid].mean(), x[valid].std(unbiased=False)
    standardised = torch.where(valid, (x - mean) / std, torch.zeros((), dtype=torch.float64))
    return adaptive_avg_pool2d(torch.stack([standardised, valid.double()])[None], 224)[0].numpy()


def damaged_image(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    image = rng.normal(300.0, 20.0, size=shape).astype(">f4")  # FITS byte order, as astropy gives it
    image[rng.random(shape) < 0.02] = np.nan
    image[:, 7] = np.inf
    stars = rng.integers(0, shape, size=(40, 2))
    image[stars[:, 0], stars[:, 1]] += 5e4
    quality = (rng.random(shape) < 0.01).astype(np.int16)
    return image, quality


@pytest.mark.parametrize("shape", [(224, 224), (463, 450), (1000, 1031), (2311, 2308)])
def test_cpu_and_tensor_paths_match_the_reference(shape: tuple[int, int]) -> None:
    image, quality = damaged_image(np.random.default_rng(sum(shape)), shape)
    expected = reference(image, quality)
    cpu, statistics = preprocess(image, quality)
    tensor, tensor_statistics = preprocess_tensor(torch.from_numpy(image.astype(np.float32)), torch.from_numpy(quality))
    assert cpu.shape == (2, 224, 224) and cpu.dtype == np.float32
    np.testing.assert_allclose(cpu, expected, atol=2e-6)
    np.testing.assert_allclose(tensor.numpy(), expected, atol=2e-6)
    assert statistics.valid_count == tensor_statistics.valid_count
    # the CPU path centres pixels in float32 first: agreement to the precision of float32 data
    assert statistics.mean == pytest.approx(tensor_statistics.mean, rel=1e-8)
    assert statistics.std == pytest.approx(tensor_statistics.std, rel=1e-6)


def test_without_quality_mask_only_non_finite_pixels_are_invalid() -> None:
    image, _ = damaged_image(np.random.default_rng(3), (500, 520))
    cpu, statistics = preprocess(image)
    np.testing.assert_allclose(cpu, reference(image, None), atol=2e-6)
    assert statistics.valid_count == np.isfinite(image).sum()


def test_a_single_star_survives_the_41x_reduction() -> None:
    image = np.full((9216 // 4, 9232 // 4), 100.0, dtype=np.float32)
    image[1000, 1500] += 1e5  # one bright pixel: point sampling would miss it
    tensor, _ = preprocess(image)
    assert tensor[0].max() > 10 * np.abs(np.delete(tensor[0].ravel(), tensor[0].argmax())).max()


def test_constant_image_gives_zeros_and_all_invalid_is_an_input_error() -> None:
    tensor, statistics = preprocess(np.full((300, 300), 7.0, dtype=np.float32))
    assert statistics.std == 1.0
    np.testing.assert_array_equal(tensor[0], 0.0)
    np.testing.assert_array_equal(tensor[1], 1.0)
    with pytest.raises(InputError) as raised:
        preprocess(np.full((300, 300), np.nan, dtype=np.float32))
    assert raised.value.kind == "all_invalid"
    with pytest.raises(InputError) as raised:
        preprocess(np.zeros((10, 10, 3), dtype=np.float32))
    assert raised.value.kind == "not_2d"


def test_input_errors_cross_process_boundaries() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(InputError("all_invalid", "no valid pixel")))
    assert (error.kind, str(error)) == ("all_invalid", "no valid pixel")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_agrees_with_the_cpu_path() -> None:
    image, quality = damaged_image(np.random.default_rng(11), (2311, 2308))
    cpu, statistics = preprocess(image, quality)
    on_gpu, gpu_statistics = preprocess_tensor(torch.from_numpy(image.astype(np.float32)).cuda(),
                                               torch.from_numpy(quality).cuda())
    np.testing.assert_allclose(on_gpu.cpu().numpy(), cpu, atol=1e-5)
    assert gpu_statistics.valid_count == statistics.valid_count
    assert gpu_statistics.std == pytest.approx(statistics.std, rel=1e-6)
