"""Preprocessing against reading: a full-size detector, one core (and a GPU where there is one).

What it measures, on a simulated full-size CSST detector (9216 x 9232 float32,
written once as plain FITS, then read from the page cache):

* the floor: reading the ``SCI`` and ``DQ`` HDUs with astropy and turning the
  big-endian image into native floats (what any consumer of the file pays);
* :func:`density_db.inference.preprocessing.preprocess` on the read arrays
  (CPU, NumPy, one thread), version 1 (the paper's two channels; goal: at
  most twice the floor) and version 2 (with the point-source channels,
  :mod:`density_db.inference.point_sources`; goal: at most five times it);
* where CUDA is available, :func:`~density_db.inference.preprocessing.preprocess_tensor`
  on the GPU including the host-to-device copy of the native image and mask,
  in detectors/s, versions 1 and 2 (goal >= 40 full-size detectors/s).

Medians of ``--repeats`` runs, after one untimed run.  Run from the repository root::

    .venv/bin/python benchmarks/preprocessing.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core: no BLAS thread pool

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from density_db.inference.preprocessing import preprocess, preprocess_tensor
from density_db.simulate.dataset import plan_samples, simulate_sample
from density_db.simulate.photometry import image_calibration
from density_db.simulate.render import QUALITY_SATURATED
from support import RESULTS_DIR, describe_machine, median_seconds

CPU_GOAL_RATIO = 2.0
V2_CPU_GOAL_RATIO = 5.0
GPU_GOAL_DETECTORS_PER_S = 40.0


def read_native(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SCI and DQ of a detector file as native-endian arrays (the read floor)."""
    with fits.open(path, memmap=False) as hdus:
        science = hdus["SCI"].data.astype(np.float32)  # big-endian on disk: one copy to native order
        quality = hdus["DQ"].data.astype(np.int16)
    return science, quality


def gpu_seconds(science: np.ndarray, quality: np.ndarray, repeats: int, **options) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    pinned_science = torch.from_numpy(science).pin_memory()
    pinned_quality = torch.from_numpy(quality).pin_memory()

    def run() -> None:
        preprocess_tensor(
            pinned_science.to("cuda", non_blocking=True), pinned_quality.to("cuda", non_blocking=True), **options
        )
        torch.cuda.synchronize()

    return median_seconds(run, repeats, warm_up=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "preprocessing.json")
    arguments = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    [spec] = plan_samples(1, task="classify", seed=5)
    _, image = simulate_sample(spec)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "detector.fits"
        fits.HDUList(
            [fits.PrimaryHDU(), fits.ImageHDU(image.science, name="SCI"), fits.ImageHDU(image.quality, name="DQ")]
        ).writeto(path)
        read_s = median_seconds(lambda: read_native(path), arguments.repeats, warm_up=True)
        science, quality = read_native(path)
    preprocess_s = median_seconds(lambda: preprocess(science, quality), arguments.repeats, warm_up=True)
    version_2 = {"version": 2, "saturated_bits": QUALITY_SATURATED, "calibration": image_calibration(spec.band)}
    preprocess_v2_s = median_seconds(lambda: preprocess(science, quality, **version_2), arguments.repeats, warm_up=True)
    gpu_s = gpu_seconds(science, quality, arguments.repeats)
    gpu_v2_s = gpu_seconds(science, quality, arguments.repeats, **version_2)
    figures = {
        "machine": describe_machine({"NumPy": np.__version__, "threads": "1"}).describe(),
        "image_shape": list(science.shape),
        "read_and_byteswap_s": read_s,
        "preprocess_cpu_s": preprocess_s,
        "cpu_ratio": preprocess_s / read_s,
        "cpu_goal_ratio": CPU_GOAL_RATIO,
        "preprocess_v2_cpu_s": preprocess_v2_s,
        "v2_cpu_ratio": preprocess_v2_s / read_s,
        "v2_cpu_goal_ratio": V2_CPU_GOAL_RATIO,
        "gpu_s": gpu_s,
        "gpu_detectors_per_s": None if gpu_s is None else 1 / gpu_s,
        "gpu_v2_detectors_per_s": None if gpu_v2_s is None else 1 / gpu_v2_s,
        "gpu_goal_detectors_per_s": GPU_GOAL_DETECTORS_PER_S,
    }
    print(f"machine: {figures['machine']}; image {science.shape[0]} x {science.shape[1]} float32")
    print(f"read SCI + DQ from page cache and byte-swap: {read_s:.3f} s")
    verdict = "met" if figures["cpu_ratio"] <= CPU_GOAL_RATIO else "MISSED"
    print(
        f"preprocess on the CPU:                       {preprocess_s:.3f} s  "
        f"({figures['cpu_ratio']:.2f}x the read; goal <= {CPU_GOAL_RATIO:g}x: {verdict})"
    )
    verdict = "met" if figures["v2_cpu_ratio"] <= V2_CPU_GOAL_RATIO else "MISSED"
    print(
        f"preprocess version 2 on the CPU:             {preprocess_v2_s:.3f} s  "
        f"({figures['v2_cpu_ratio']:.2f}x the read; goal <= {V2_CPU_GOAL_RATIO:g}x: {verdict})"
    )
    if gpu_s is None:
        print("preprocess on a GPU: no CUDA device on this machine, not measured")
    else:
        print(
            f"preprocess on the GPU with the host-to-device copy: {1 / gpu_s:.1f} detectors/s, version 2 "
            f"{1 / gpu_v2_s:.1f} (goal >= {GPU_GOAL_DETECTORS_PER_S:g})"
        )
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {arguments.json}")


if __name__ == "__main__":
    main()
