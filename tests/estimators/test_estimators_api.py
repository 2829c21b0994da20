"""Registry, input validation and the similarity scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blockprune import estimators
from blockprune.registry import UnknownNameError

pytestmark = pytest.mark.unit

PAIR = ["bi", "angular", "relative_magnitude", "mi.ksg", "mi.gaussian", "mi.sliced", "mi.perdim",
        "mi.perdim_gaussian"]
SINGLE = ["entropy.bucket", "entropy.knn", "entropy.renyi", "entropy.gaussian", "entropy.bucket_window",
          "entropy.knn_window", "entropy.renyi_window"]
KNN = ["mi.ksg", "mi.sliced", "entropy.knn", "mi.perdim", "entropy.knn_window"]


def call(name: str, x: object, y: object = None, **kw: object) -> float:
    fn = estimators.get(name)
    if name in SINGLE:
        return fn(x, **kw)
    return fn(x, x if y is None else y, **kw)


def test_names_and_get() -> None:
    assert set(estimators.names()) == set(PAIR + SINGLE)
    for name in estimators.names():
        assert callable(estimators.get(name))
    assert estimators.get("mi.ksg").fn is estimators.mi.ksg
    assert estimators.get("entropy.knn").fn is estimators.entropy.knn
    assert estimators.get("bi").fn is estimators.bi
    assert estimators.names("mi") == ["mi.gaussian", "mi.ksg", "mi.perdim", "mi.perdim_gaussian", "mi.sliced"]
    assert {estimators.get(n).kind for n in estimators.names("entropy")} == {"entropy"}
    window = [n for n in estimators.names() if estimators.get(n).pooling == "window"]
    assert window == ["entropy.bucket_window", "entropy.knn_window", "entropy.renyi_window"]
    assert estimators.get("entropy.bucket_window").fn is estimators.entropy.bucket  # with bins=20 fixed
    assert estimators.get("entropy.bucket_window").defaults == {"bins": 20}


def test_unknown_name_lists_known() -> None:
    with pytest.raises(UnknownNameError, match="mi.ksg"):
        estimators.get("mi.kgs")


@pytest.mark.parametrize("name", PAIR + SINGLE)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_non_finite(name: str, bad: float, rng: np.random.Generator) -> None:
    x = rng.standard_normal((50, 3))
    x[7, 1] = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        call(name, x, rng.standard_normal((50, 3)))
    if name in PAIR:
        with pytest.raises(ValueError, match="NaN/inf"):
            call(name, rng.standard_normal((50, 3)), x)


@pytest.mark.parametrize("name", PAIR + SINGLE)
@pytest.mark.parametrize("shape", [(50,), (5, 10, 3), ()])
def test_rejects_non_2d(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="2-D"):
        call(name, rng.standard_normal(shape), rng.standard_normal(shape))


@pytest.mark.parametrize("name", PAIR)
def test_rejects_mismatched_rows(name: str, rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="same number of rows"):
        call(name, rng.standard_normal((50, 3)), rng.standard_normal((49, 3)))


@pytest.mark.parametrize("name", PAIR)
def test_pair_estimators_need_y(name: str, rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="two arrays"):
        estimators.get(name)(rng.standard_normal((50, 3)))


@pytest.mark.parametrize("name", SINGLE)
def test_entropy_takes_only_x(name: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((50, 3))
    with pytest.raises(ValueError, match="only x"):
        estimators.get(name)(x, x)


@pytest.mark.parametrize("name", KNN)
@pytest.mark.parametrize("n", [1, 3])
def test_rejects_n_not_above_k(name: str, n: int, rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match=r"more than k=3 samples"):
        call(name, rng.standard_normal((n, 2)), k=3)


def test_duplicates_leaving_too_few_rows(rng: np.random.Generator) -> None:
    x = np.repeat(rng.standard_normal((3, 2)), 10, axis=0)
    with pytest.raises(ValueError, match="distinct rows"):
        estimators.mi.ksg(x, x.copy(), k=3)
    with pytest.raises(ValueError, match="distinct rows"):
        estimators.entropy.knn(x, k=3)


def test_bad_options_are_named(rng: np.random.Generator) -> None:
    x, y = rng.standard_normal((50, 2)), rng.standard_normal((50, 2))
    for kw, word in [({"variant": 3}, "variant"), ({"norm": "l1"}, "norm"), ({"proj": "svd"}, "proj"),
                     ({"backend": "gpu"}, "backend"), ({"k": 0}, "k must"), ({"p": 0}, "p must"),
                     ({"jitter": "big"}, "jitter"), ({"precision": "half"}, "precision"),
                     ({"block_size": 0}, "block_size")]:
        with pytest.raises(ValueError, match=word):
            estimators.mi.ksg(x, y, backend=kw.pop("backend", "numpy"), **kw)
    with pytest.raises(ValueError, match="tree"):
        estimators.mi.ksg(x, y, backend="tree", proj="none")
    with pytest.raises(ValueError, match="complex|real"):
        estimators.bi(x.astype(complex), y)


def test_bi_identity_and_opposite(rng: np.random.Generator) -> None:
    x = rng.standard_normal((300, 64))
    assert estimators.bi(x, x) == pytest.approx(0.0, abs=1e-12)
    assert estimators.bi(x, -x) == pytest.approx(2.0, abs=1e-12)
    assert estimators.bi(x, 3.0 * x) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < estimators.bi(x, x + rng.standard_normal(x.shape)) < 1.0


def test_angular_and_relative_magnitude(rng: np.random.Generator) -> None:
    x = rng.standard_normal((300, 16))
    assert estimators.angular(x, x) == pytest.approx(0.0, abs=1e-6)
    assert estimators.angular(x, -x) == pytest.approx(1.0, abs=1e-6)
    orth = np.stack([x[:, 1], -x[:, 0]], axis=1)
    assert estimators.angular(x[:, :2], orth) == pytest.approx(0.5, abs=1e-12)
    assert estimators.relative_magnitude(x, 2.0 * x) == pytest.approx(0.5, abs=1e-12)
    assert estimators.relative_magnitude(x, x) == pytest.approx(0.0, abs=1e-12)


def test_similarity_needs_equal_width(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="same width"):
        estimators.bi(rng.standard_normal((10, 3)), rng.standard_normal((10, 4)))


def test_accepts_torch_and_low_precision(rng: np.random.Generator) -> None:
    x = rng.standard_normal((400, 8)).astype(np.float32)
    y = x + 0.5 * rng.standard_normal(x.shape).astype(np.float32)
    ref = estimators.bi(x, y)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        got = estimators.bi(torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype))
        assert got == pytest.approx(ref, abs=1e-2)
    assert estimators.bi(x.astype(np.float16), y.astype(np.float16)) == pytest.approx(ref, abs=1e-2)
    assert estimators.bi(np.arange(12).reshape(4, 3), np.arange(12).reshape(4, 3)) == pytest.approx(0.0)
