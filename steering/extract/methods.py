"""Directions from two classes of activations, and the per-layer scan that picks a layer.

`diffmean`: mean(positive) − mean(negative), raw (the seed paper's vector). `pca`: the first principal
component of paired differences (positive_i − negative_j over random pairs, each given a random sign as in
RepE, so the concept shows as variance rather than as a mean), signed so positives project higher and scaled
to the mean difference's length along it. `probe`: the weight vector of an L2 logistic probe fitted on every row
(in the activations' own coordinates), signed and scaled the same way: the direction that best separates the two
classes rather than the one between their means, which is what a `condition` gate cuts on (a difference of means
is pulled towards the directions where activations vary most). The scan reports, per
layer, a held-out logistic-probe balanced accuracy, the cosine of the class means, the difference norm and
the mean activation norm (so a strength can be read against the stream's scale).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize

Matrix = npt.NDArray[np.float64]
METHODS = ("diffmean", "pca", "probe")


def diffmean(positive: Matrix, negative: Matrix) -> Matrix:
    return np.asarray(positive.mean(axis=0) - negative.mean(axis=0))


def pca_direction(positive: Matrix, negative: Matrix, seed: int = 0) -> Matrix:
    rng = np.random.default_rng(seed)
    pairs = max(len(positive), len(negative))
    diffs = positive[rng.integers(0, len(positive), pairs)] - negative[rng.integers(0, len(negative), pairs)]
    diffs *= rng.choice([-1.0, 1.0], size=(pairs, 1))
    centred = diffs - diffs.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return scaled_along_means(vt[0], positive, negative)


def scaled_along_means(axis: Matrix, positive: Matrix, negative: Matrix) -> Matrix:
    """`axis` as a unit vector, signed so positives project higher on average and scaled to the mean difference's
    length along it (a steering strength then means the same for every method)."""
    unit = axis / (np.linalg.norm(axis) + 1e-12)
    along = float(diffmean(positive, negative) @ unit)
    if along < 0:
        unit, along = -unit, -along
    return np.asarray(unit * along)


def probe_direction(positive: Matrix, negative: Matrix) -> Matrix:
    weights, _ = fit_probe(positive, negative)
    return scaled_along_means(weights, positive, negative)


def direction(method: str, positive: Matrix, negative: Matrix, seed: int = 0) -> Matrix:
    if method == "diffmean":
        return diffmean(positive, negative)
    if method == "pca":
        return pca_direction(positive, negative, seed)
    if method == "probe":
        return probe_direction(positive, negative)
    raise ValueError(f"method must be one of {METHODS}")


def fit_probe(positive: Matrix, negative: Matrix, l2: float = 1.0) -> tuple[Matrix, float]:
    """An L2 logistic probe (classes weighted equally, features standardised for the fit), returned in the rows'
    own coordinates: (w, b) with w·x + b > 0 for the positive class."""
    x = np.vstack([positive, negative])
    y = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = (x - mean) / scale
    weights = np.where(y == 1, 0.5 / len(positive), 0.5 / len(negative))  # balanced classes

    def loss(params: Matrix) -> tuple[float, Matrix]:
        w, b = params[:-1], params[-1]
        z = xs @ w + b
        p = 1 / (1 + np.exp(-np.clip(z, -30, 30)))
        nll = -np.sum(weights * (y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))
        grad_z = weights * (p - y)
        reg = l2 / len(y)
        grad = np.concatenate([xs.T @ grad_z + reg * w, [grad_z.sum()]])
        return float(nll + 0.5 * reg * w @ w), grad

    fitted = minimize(loss, np.zeros(xs.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 200})
    w = fitted.x[:-1] / scale
    return np.asarray(w), float(fitted.x[-1] - mean @ w)


def probe_accuracy(positive: Matrix, negative: Matrix, seed: int = 0, held_out: float = 0.3, l2: float = 1.0) -> float:
    """Balanced accuracy of an L2 logistic probe on a stratified held-out split (0.5 = chance)."""
    rng = np.random.default_rng(seed)

    def split(rows: Matrix) -> tuple[Matrix, Matrix]:
        order = rng.permutation(len(rows))
        cut = max(1, int(round(len(rows) * held_out)))
        return rows[order[cut:]], rows[order[:cut]]

    pos_train, pos_test = split(positive)
    neg_train, neg_test = split(negative)
    if len(pos_train) == 0 or len(neg_train) == 0:
        return float("nan")
    w, b = fit_probe(pos_train, neg_train, l2)
    return float(0.5 * (pos_test @ w + b > 0).mean() + 0.5 * (neg_test @ w + b <= 0).mean())


def condition_threshold(positive: Matrix, negative: Matrix, vector: Matrix) -> tuple[float, float]:
    """(θ, balanced accuracy) of the best cut on r̂·x between the classes (positives above): the threshold a
    term's `condition` on this direction uses. Every midpoint between consecutive sorted projections is tried."""
    unit = vector / (np.linalg.norm(vector) + 1e-12)
    pos, neg = positive @ unit, negative @ unit
    values = np.sort(np.concatenate([pos, neg]))
    cuts = np.concatenate([[values[0] - 1.0], (values[1:] + values[:-1]) / 2])
    above_pos = (pos[None, :] > cuts[:, None]).mean(axis=1)
    below_neg = (neg[None, :] <= cuts[:, None]).mean(axis=1)
    accuracy = 0.5 * (above_pos + below_neg)
    best = int(np.argmax(accuracy))
    return float(cuts[best]), float(accuracy[best])


@dataclass(frozen=True)
class LayerScan:
    layer: int
    probe_accuracy: float
    cosine_of_means: float
    diff_norm: float
    mean_norm: float

    @property
    def relative_diff(self) -> float:
        return self.diff_norm / self.mean_norm if self.mean_norm else 0.0

    def to_json(self) -> dict[str, float]:
        data = {k: round(float(v), 6) for k, v in asdict(self).items()}
        data["layer"] = self.layer
        data["relative_diff"] = round(self.relative_diff, 6)
        return data


def scan_layer(layer: int, positive: Matrix, negative: Matrix, seed: int = 0) -> LayerScan:
    mp, mn = positive.mean(axis=0), negative.mean(axis=0)
    cosine = float(mp @ mn / (np.linalg.norm(mp) * np.linalg.norm(mn) + 1e-12))
    both = np.vstack([positive, negative])
    return LayerScan(
        layer=layer,
        probe_accuracy=probe_accuracy(positive, negative, seed),
        cosine_of_means=cosine,
        diff_norm=float(np.linalg.norm(mp - mn)),
        mean_norm=float(np.linalg.norm(both, axis=1).mean()),
    )


def recommend_layer(scans: list[LayerScan]) -> int:
    """The layer whose probe separates the classes best (ties: the larger difference relative to the norm)."""
    best = max(scans, key=lambda s: (round(s.probe_accuracy, 3), s.relative_diff))
    return best.layer
