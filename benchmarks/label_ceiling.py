"""How well the simulator's labels can be predicted at all: perfect star and source counters as references.

The density class counts every star of the truth catalog, down to the
catalog's 28 mag, and no detector image shows stars that faint; the
regression target counts stars brighter than 23.5 mag, and a 41-fold pooled
pixel (3 arcsec) shows a galaxy of that magnitude as it shows a star.  This
script measures what those two facts cost, on the samples that
:func:`~density_db.simulate.dataset.plan_samples` plans for the held-out
sets of the README (same seeds, same draws), from their truth catalogs
alone, without rendering an image:

* classification (``--classify-seed``, the paper's class mix, galaxies
  on): the fraction of class-1 images holding no star brighter than the
  image's 5-sigma point-source depth (nothing a detection could find, as in
  class 0), and the accuracy of a *perfect star counter*: a small classifier
  given the exact numbers of stars brighter than the depth + k mag (k from
  -3 to the deepest offset, in half magnitudes) and the band.  It never
  confuses a galaxy or a noise peak with a star and sees down to two
  magnitudes below the 5-sigma limit of one exposure, so its accuracy is
  a generous reference for a model of the image.  It is not a strict bound:
  a model could in principle read the unresolved light of still fainter
  stars.  Beside it, a *perfect source counter* gets the same counts of all
  sources, stars and galaxies alike, as a pooled image shows them, with
  and without the band (the demo models are not told it);
* regression (``--regress-seed``, galaxies on): how often galaxies brighter
  than 23.5 mag outnumber the bright stars, and the errors of a *perfect
  source counter*: a regressor given the exact numbers of all sources, stars
  and galaxies alike, brighter than 21.5 to 24.5 mag and the depth, with and
  without the band.  A model that tells some galaxies from stars can do
  better.

Each reference model (a two-hidden-layer perceptron) is cross-fitted: the
samples are split into ``--folds`` parts, and each part is predicted by a
model fitted on the others, so every figure is on samples the model never
saw.  The metrics are :mod:`density_db.inference.evaluation`'s, as
``density-db evaluate`` reports them.

Run from the repository root (about 3 minutes on 2 cores)::

    .venv/bin/python benchmarks/label_ceiling.py [--n 2000] [--classify-seed 211] [--regress-seed 202]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from density_db.inference.evaluation import classification_report, regression_report
from density_db.labels import BRIGHT_MAGNITUDE_LIMIT, N_CLASSES
from density_db.simulate.dataset import BANDS, SampleSpec, plan_samples, truth_catalog
from density_db.simulate.photometry import point_source_depth
from support import RESULTS_DIR, describe_machine, write_json

SOURCE_MAGNITUDES = (21.5, 22.5, 23.0, 23.5, 24.0, 24.5)
"""Magnitude limits of the source counts given to the reference regressor."""

FIT_EPOCHS = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="samples per task (default 2000)")
    parser.add_argument("--classify-seed", type=int, default=211)
    parser.add_argument("--regress-seed", type=int, default=202)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "label_ceiling.json")
    arguments = parser.parse_args()
    machine = describe_machine({"torch": torch.__version__, "threads": str(torch.get_num_threads())})
    print(f"machine: {machine.describe()}")
    depths = {band: point_source_depth(band) for band in BANDS}
    print("5-sigma point-source depth of one exposure: "
          + ", ".join(f"{band} {depth:.2f}" for band, depth in depths.items()))
    figures = {
        "samples_per_task": arguments.n,
        "depth_5_sigma": depths,
        "classification": classification_ceiling(arguments.n, arguments.classify_seed, arguments.folds, depths),
        "regression": regression_ceiling(arguments.n, arguments.regress_seed, arguments.folds, depths),
    }
    write_json(arguments.json, machine, figures)
    print(f"figures written to {arguments.json}")


def classification_ceiling(count: int, seed: int, folds: int, depths: dict[str, float]) -> dict:
    """Class-1 images without a detectable star, and the perfect star and source counters' scores."""
    specs = plan_samples(count, task="classify", seed=seed, galaxies=True)
    catalogs = [truth_catalog(spec) for spec in specs]
    true_class = np.array([catalog.density_class for catalog in catalogs])
    star_count = np.array([catalog.star_count for catalog in catalogs])
    depth = np.array([depths[spec.band] for spec in specs])
    star_magnitudes = [catalog.mag[catalog.is_star] for catalog in catalogs]
    detectable = np.array([np.count_nonzero(mags < limit) for mags, limit in zip(star_magnitudes, depth)])
    class_one = true_class == 1
    undetectable_fraction = float(np.mean(detectable[class_one] == 0))
    print(f"\nclassification set (--n {count} --task classify --galaxies --seed {seed}): {class_one.sum()} class-1 "
          f"images, {undetectable_fraction:.1%} of them without a star brighter than the 5-sigma depth "
          f"(the class-0 images: {np.count_nonzero(true_class == 0)})")
    references = (
        ("perfect_star_counter", "perfect star counter (stars only)", star_magnitudes, (0.0, 1.0, 2.0), (True,)),
        ("perfect_source_counter", "perfect source counter (stars and galaxies alike)",
         [catalog.mag for catalog in catalogs], (0.0, 1.0), (True, False)),
    )
    results = {"seed": seed, "class_1_without_detectable_star": undetectable_fraction}
    for key, name, magnitudes, deepest_offsets, told_band_cases in references:
        results[key] = []
        for told_band, deepest in itertools.product(told_band_cases, deepest_offsets):
            offsets = np.arange(-3.0, deepest + 0.25, 0.5)
            counts = np.array([[np.count_nonzero(mags < limit + offset) for offset in offsets]
                               for mags, limit in zip(magnitudes, depth)])
            probabilities = cross_fitted(reference_features(counts, specs, told_band=told_band), true_class, folds,
                                         classify=True)
            report = classification_report(true_class, probabilities, star_count)
            recall = [row["recall"] for row in report["per_class"]]
            print(f"{name} to depth + {deepest:g} mag, {'with' if told_band else 'without'} the band: "
                  f"accuracy {report['accuracy']:.1%}, macro-F1 {report['macro_f1']:.1%}, "
                  f"within one class {report['accuracy_within_one_class']:.1%}; "
                  "recall by class " + " ".join(f"{value:.0%}" for value in recall))
            results[key].append({
                "deepest_offset_mag": deepest, "told_band": told_band, "accuracy": report["accuracy"],
                "macro_f1": report["macro_f1"], "accuracy_within_one_class": report["accuracy_within_one_class"],
                "recall_by_class": recall, "confusion_matrix": report["confusion_matrix"],
            })
    return results


def regression_ceiling(count: int, seed: int, folds: int, depths: dict[str, float]) -> dict:
    """How often bright galaxies outnumber bright stars, and the perfect source counter's errors."""
    specs = plan_samples(count, task="regress", seed=seed)
    catalogs = [truth_catalog(spec) for spec in specs]
    true_class = np.array([catalog.density_class for catalog in catalogs])
    bright_stars = np.array([catalog.bright_star_count for catalog in catalogs])
    true_log = np.log10(1 + bright_stars)
    bright_galaxies = np.array([np.count_nonzero(~catalog.is_star & (catalog.mag < BRIGHT_MAGNITUDE_LIMIT))
                                for catalog in catalogs])
    galaxies_outnumber = float(np.mean(bright_galaxies > bright_stars))
    print(f"\nregression set (--n {count} --task regress --seed {seed}): galaxies brighter than "
          f"{BRIGHT_MAGNITUDE_LIMIT:g} mag outnumber the stars that bright on {galaxies_outnumber:.1%} of the images "
          f"(median {np.median(bright_galaxies):.0f} such galaxies against {np.median(bright_stars):.0f} stars)")
    counts = np.array([[np.count_nonzero(catalog.mag < limit) for limit in (*SOURCE_MAGNITUDES, depths[spec.band])]
                       for spec, catalog in zip(specs, catalogs)])
    results = []
    for told_band in (True, False):
        predicted = cross_fitted(reference_features(counts, specs, told_band=told_band), true_log, folds,
                                 classify=False)
        report = regression_report(true_log, predicted, true_class)
        overall = report["overall"]
        by_class = " ".join("-" if row["mae"] is None else f"{row['mae']:.3f}" for row in report["by_class"])
        print(f"perfect source counter (stars and galaxies alike), {'with' if told_band else 'without'} the band: "
              f"MAE {overall['mae']:.3f} dex, RMSE {overall['rmse']:.3f}, R^2 {overall['r2']:.3f}, "
              f"within +-20 % {overall['within_20_percent']:.1%}; MAE by true class {by_class}")
        results.append({"told_band": told_band, **report})
    return {"seed": seed, "bright_galaxies_outnumber_bright_stars": galaxies_outnumber,
            "median_bright_galaxies": float(np.median(bright_galaxies)),
            "median_bright_stars": float(np.median(bright_stars)), "perfect_source_counter": results}


def reference_features(counts: np.ndarray, specs: Sequence[SampleSpec], *, told_band: bool) -> np.ndarray:
    """``log1p`` of the counts, and the one-hot band if the reference is told it (as a header tells it)."""
    features = np.log1p(counts)
    if not told_band:
        return features
    bands = np.array([[spec.band == band for band in BANDS] for spec in specs], dtype=np.float64)
    return np.hstack([features, bands])


def cross_fitted(features: np.ndarray, target: np.ndarray, folds: int, *, classify: bool) -> np.ndarray:
    """Predictions for every sample by a perceptron fitted on the other folds: probabilities or values."""
    fold_of = np.arange(len(target)) % folds
    predictions = np.zeros((len(target), N_CLASSES) if classify else len(target))
    for fold in range(folds):
        fit, held_out = fold_of != fold, fold_of == fold
        mean, scale = features[fit].mean(axis=0), features[fit].std(axis=0) + 1e-9
        model = fitted_perceptron((features[fit] - mean) / scale, target[fit], classify=classify)
        with torch.inference_mode():
            output = model(torch.tensor((features[held_out] - mean) / scale, dtype=torch.float32))
        predictions[held_out] = (output.softmax(dim=1) if classify else output).numpy()
    return predictions


def fitted_perceptron(features: np.ndarray, target: np.ndarray, *, classify: bool) -> nn.Module:
    """A 64-64 perceptron fitted by AdamW: cross-entropy on classes, or absolute error on values."""
    torch.manual_seed(0)
    inputs = torch.tensor(features, dtype=torch.float32)
    targets = torch.tensor(target, dtype=torch.int64 if classify else torch.float32)
    model = nn.Sequential(nn.Linear(inputs.shape[1], 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, N_CLASSES if classify else 1))
    if not classify:
        model.append(nn.Flatten(0))
    loss_function = nn.functional.cross_entropy if classify else nn.functional.l1_loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    for _ in range(FIT_EPOCHS):
        for batch in torch.randperm(len(inputs)).split(64):
            optimizer.zero_grad()
            loss_function(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    return model.eval()


if __name__ == "__main__":
    main()
