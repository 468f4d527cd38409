"""How well the simulator's labels can be predicted at all: perfect star and source counters as references.

The density class counts the stars brighter than the 5-sigma point-source
depth of one exposure in the image's band (the ``detectable-stars`` rule of
:mod:`density_db.labels`); the paper's wording counts every catalogued star
(``catalog-stars``), and no detector image shows stars down to the
catalog's 28 mag.  The regression target counts stars brighter than
23.5 mag, and a 41-fold pooled pixel (3 arcsec) shows a galaxy of that
magnitude as it shows a star.  This script measures what those facts allow,
on the samples that :func:`~density_db.simulate.dataset.plan_samples` plans
for the held-out sets of the model card (``docs/model_card.md``; same seeds,
same draws, galaxies on), from their truth catalogs alone, without rendering
an image:

* classification (``--classify-seed``, the paper's class mix): the share of
  images within 10 % of a class edge of detectable stars (where any count
  errs most), how often the paper's rule gives the same class on the same
  images, and the accuracy of a *perfect source counter*: a small
  classifier given the exact numbers of all sources, stars and galaxies
  alike, brighter than the depth + k mag (k from -3 up, in half magnitudes),
  with and without the band -- what a detection count that cannot tell a
  galaxy from a star could reach.  On the same images labelled by the
  paper's rule, a *perfect star counter* (the numbers of stars only, to the
  depth + 0, 1 or 2 mag, with the band) and the perfect source counter
  measure what that rule allows;
* regression (``--regress-seed``): how often galaxies brighter than 23.5 mag
  outnumber the bright stars, and the errors of a *perfect source counter*:
  a regressor given the exact numbers of all sources, stars and galaxies
  alike, brighter than 21.5 to 24.5 mag and the depth, with and without the
  band.  A model that tells some galaxies from stars can do better.

Each reference model (a two-hidden-layer perceptron) is cross-fitted: the
samples are split into ``--folds`` parts, and each part is predicted by a
model fitted on the others, so every figure is on samples the model never
saw.  The metrics are :mod:`density_db.inference.evaluation`'s, as
``density-db evaluate`` reports them.

Run from the repository root (about 10 minutes on 2 cores)::

    .venv/bin/python benchmarks/label_ceiling.py [--n 2000] [--classify-seed 211] [--regress-seed 202] \\
        [--figure docs/figures/simulated_label_sets.png]
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
from density_db.labels import BRIGHT_MAGNITUDE_LIMIT, CLASS_LOWER_EDGES, N_CLASSES, density_class
from density_db.simulate.catalog import TruthCatalog
from density_db.simulate.dataset import BANDS, PAPER_CLASS_MIX, SampleSpec, plan_samples, truth_catalog
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
    parser.add_argument(
        "--figure", type=Path, default=None, help="also draw the two sets' class mix and count histograms to this PNG"
    )
    arguments = parser.parse_args()
    machine = describe_machine({"torch": torch.__version__, "threads": str(torch.get_num_threads())})
    print(f"machine: {machine.describe()}")
    depths = {band: point_source_depth(band) for band in BANDS}
    print(
        "5-sigma point-source depth of one exposure: "
        + ", ".join(f"{band} {depth:.2f}" for band, depth in depths.items())
    )
    classify_specs = plan_samples(arguments.n, task="classify", seed=arguments.classify_seed)
    regress_specs = plan_samples(arguments.n, task="regress", seed=arguments.regress_seed)
    classify_catalogs = [truth_catalog(spec) for spec in classify_specs]
    regress_catalogs = [truth_catalog(spec) for spec in regress_specs]
    figures = {
        "samples_per_task": arguments.n,
        "depth_5_sigma": depths,
        "classification": classification_ceiling(classify_specs, classify_catalogs, arguments.folds, depths),
        "regression": regression_ceiling(regress_specs, regress_catalogs, arguments.folds, depths),
    }
    write_json(arguments.json, machine, figures)
    print(f"figures written to {arguments.json}")
    if arguments.figure is not None:
        plot_label_sets(classify_catalogs, regress_catalogs, arguments.figure)
        print(f"figure written to {arguments.figure}")


def classification_ceiling(
    specs: Sequence[SampleSpec], catalogs: Sequence[TruthCatalog], folds: int, depths: dict[str, float]
) -> dict:
    """Images near a class edge, the paper's rule on the same images, and the perfect counters' scores."""
    count, seed = len(specs), specs[0].seed
    true_class = np.array([catalog.density_class for catalog in catalogs])
    counted = np.array([catalog.counted_star_count for catalog in catalogs])
    star_count = np.array([catalog.star_count for catalog in catalogs])
    paper_class = density_class(star_count)
    depth = np.array([depths[spec.band] for spec in specs])
    near_edge = float(np.mean(near_class_edge(counted)))
    agreement = float(np.mean(paper_class == true_class))
    print(
        f"\nclassification set (--n {count} --task classify --seed {seed}, galaxies on): {near_edge:.1%} of the "
        f"images hold within 10 % of a class edge of detectable stars; the paper's rule (every catalogued star) "
        f"gives the same class on {agreement:.1%} of them, a higher one on {np.mean(paper_class > true_class):.1%}"
    )
    star_magnitudes = [catalog.mag[catalog.is_star] for catalog in catalogs]
    source_magnitudes = [catalog.mag for catalog in catalogs]
    references = (
        (
            "perfect_source_counter",
            "detectable-stars labels: perfect source counter (stars and galaxies alike)",
            true_class,
            counted,
            source_magnitudes,
            (0.0, 1.0),
            (True, False),
        ),
        (
            "paper_rule_perfect_star_counter",
            "catalog-stars labels: perfect star counter (stars only)",
            paper_class,
            star_count,
            star_magnitudes,
            (0.0, 1.0, 2.0),
            (True,),
        ),
        (
            "paper_rule_perfect_source_counter",
            "catalog-stars labels: perfect source counter",
            paper_class,
            star_count,
            source_magnitudes,
            (0.0, 1.0),
            (True, False),
        ),
    )
    results = {
        "seed": seed,
        "near_class_edge": near_edge,
        "paper_rule_agreement": agreement,
        "paper_rule_higher": float(np.mean(paper_class > true_class)),
    }
    for key, name, labels, label_counts, magnitudes, deepest_offsets, told_band_cases in references:
        results[key] = []
        for told_band, deepest in itertools.product(told_band_cases, deepest_offsets):
            offsets = np.arange(-3.0, deepest + 0.25, 0.5)
            counts = np.array(
                [
                    [np.count_nonzero(mags < limit + offset) for offset in offsets]
                    for mags, limit in zip(magnitudes, depth)
                ]
            )
            probabilities = cross_fitted(
                reference_features(counts, specs, told_band=told_band), labels, folds, classify=True
            )
            report = classification_report(labels, probabilities, label_counts)
            recall = [row["recall"] for row in report["per_class"]]
            print(
                f"{name} to depth + {deepest:g} mag, {'with' if told_band else 'without'} the band: "
                f"accuracy {report['accuracy']:.1%}, macro-F1 {report['macro_f1']:.1%}, "
                f"within one class {report['accuracy_within_one_class']:.1%}; "
                "recall by class " + " ".join(f"{value:.0%}" for value in recall)
            )
            results[key].append(
                {
                    "deepest_offset_mag": deepest,
                    "told_band": told_band,
                    "accuracy": report["accuracy"],
                    "macro_f1": report["macro_f1"],
                    "accuracy_within_one_class": report["accuracy_within_one_class"],
                    "recall_by_class": recall,
                    "confusion_matrix": report["confusion_matrix"],
                }
            )
    return results


def near_class_edge(counts: np.ndarray, tolerance: float = 0.1) -> np.ndarray:
    """Whether each count lies within ``tolerance`` (relative) of a class edge of 100 stars or more."""
    edges = np.array([edge for edge in CLASS_LOWER_EDGES if edge >= 100], dtype=np.float64)
    return np.min(np.abs(np.asarray(counts, dtype=np.float64)[:, None] / edges - 1.0), axis=1) <= tolerance


def regression_ceiling(
    specs: Sequence[SampleSpec], catalogs: Sequence[TruthCatalog], folds: int, depths: dict[str, float]
) -> dict:
    """How often bright galaxies outnumber bright stars, and the perfect source counter's errors."""
    count, seed = len(specs), specs[0].seed
    true_class = np.array([catalog.density_class for catalog in catalogs])
    bright_stars = np.array([catalog.bright_star_count for catalog in catalogs])
    true_log = np.log10(1 + bright_stars)
    bright_galaxies = np.array(
        [np.count_nonzero(~catalog.is_star & (catalog.mag < BRIGHT_MAGNITUDE_LIMIT)) for catalog in catalogs]
    )
    galaxies_outnumber = float(np.mean(bright_galaxies > bright_stars))
    print(
        f"\nregression set (--n {count} --task regress --seed {seed}, galaxies on): galaxies brighter than "
        f"{BRIGHT_MAGNITUDE_LIMIT:g} mag outnumber the stars that bright on {galaxies_outnumber:.1%} of the images "
        f"(median {np.median(bright_galaxies):.0f} such galaxies against {np.median(bright_stars):.0f} stars)"
    )
    counts = np.array(
        [
            [np.count_nonzero(catalog.mag < limit) for limit in (*SOURCE_MAGNITUDES, depths[spec.band])]
            for spec, catalog in zip(specs, catalogs)
        ]
    )
    results = []
    for told_band in (True, False):
        predicted = cross_fitted(
            reference_features(counts, specs, told_band=told_band), true_log, folds, classify=False
        )
        report = regression_report(true_log, predicted, true_class)
        overall = report["overall"]
        by_class = " ".join("-" if row["mae"] is None else f"{row['mae']:.3f}" for row in report["by_class"])
        print(
            f"perfect source counter (stars and galaxies alike), {'with' if told_band else 'without'} the band: "
            f"MAE {overall['mae']:.3f} dex, RMSE {overall['rmse']:.3f}, R^2 {overall['r2']:.3f}, "
            f"within +-20 % {overall['within_20_percent']:.1%}; MAE by true class {by_class}"
        )
        results.append({"told_band": told_band, **report})
    return {
        "seed": seed,
        "bright_galaxies_outnumber_bright_stars": galaxies_outnumber,
        "median_bright_galaxies": float(np.median(bright_galaxies)),
        "median_bright_stars": float(np.median(bright_stars)),
        "perfect_source_counter": results,
    }


def plot_label_sets(classify: Sequence[TruthCatalog], regress: Sequence[TruthCatalog], path: Path) -> None:
    """The class mix and count histograms of the two sets, as ``simulate dataset`` would write them."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, 3, figsize=(15, 4.2))
    classes = np.arange(N_CLASSES)
    counted = np.array([catalog.counted_star_count for catalog in classify])
    every = np.array([catalog.star_count for catalog in classify])
    width = 0.27
    for offset, values, label in (
        (-width, PAPER_CLASS_MIX, "asked for: the paper's mix (Table 2)"),
        (0.0, np.bincount(density_class(counted), minlength=N_CLASSES) / len(classify), "detectable stars (labels)"),
        (width, np.bincount(density_class(every), minlength=N_CLASSES) / len(classify), "every catalogued star"),
    ):
        axes[0].bar(classes + offset, values, width, label=label)
    axes[0].set(
        xlabel="density class",
        ylabel="fraction of images",
        xticks=classes,
        title=f"classification set ({len(classify)} images, galaxies on)",
    )
    axes[0].legend(fontsize=8)
    bins = np.linspace(0, 5.5, 45)
    axes[1].hist(np.log10(1 + counted), bins, alpha=0.6, label="detectable stars")
    axes[1].hist(np.log10(1 + every), bins, histtype="step", label="every catalogued star")
    axes[1].hist(
        np.log10(1 + np.array([np.count_nonzero(~c.is_star & (c.mag < c.counting_limit)) for c in classify])),
        bins,
        histtype="step",
        label="detectable galaxies",
    )
    axes[1].set(xlabel="log10(1 + N) per image", ylabel="images", title="classification set: counts per image")
    axes[1].legend(fontsize=8)
    bins = np.linspace(0, 4.5, 46)
    axes[2].hist(
        np.log10(1 + np.array([catalog.bright_star_count for catalog in regress])),
        bins,
        alpha=0.6,
        label=f"stars brighter than {BRIGHT_MAGNITUDE_LIMIT:g} (target)",
    )
    axes[2].hist(
        np.log10(1 + np.array([np.count_nonzero(~c.is_star & (c.mag < BRIGHT_MAGNITUDE_LIMIT)) for c in regress])),
        bins,
        histtype="step",
        label=f"galaxies brighter than {BRIGHT_MAGNITUDE_LIMIT:g}",
    )
    axes[2].hist(
        np.log10(1 + np.array([catalog.counted_star_count for catalog in regress])),
        bins,
        histtype="step",
        label="detectable stars",
    )
    axes[2].set(
        xlabel="log10(1 + N) per image", ylabel="images", title=f"regression set ({len(regress)} images, galaxies on)"
    )
    axes[2].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    pyplot.close(figure)


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
    model = nn.Sequential(
        nn.Linear(inputs.shape[1], 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, N_CLASSES if classify else 1),
    )
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
