"""k-NN engine and preprocessing: identical results across backends, block sizes and thread counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from estimator_samples import noisy_pair
from scipy.spatial import cKDTree

from blockprune.estimators import knn, mi, preprocess
from blockprune.estimators._validate import FORMATS, as_float_array

pytestmark = pytest.mark.unit

N_WIDE = 1500


def brute_counts(x: np.ndarray, y: np.ndarray, k: int, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """O(N^2 d) definition of KSG algorithm 1, written independently of the engine."""
    def dist(a: np.ndarray) -> np.ndarray:
        diff = np.abs(a[:, None, :] - a[None, :, :])
        return np.sqrt((diff**2).sum(-1)) if norm == "euclidean" else diff.max(-1)

    dx, dy = dist(x), dist(y)
    joint = np.maximum(dx, dy)
    np.fill_diagonal(joint, np.inf)
    eps = np.sort(joint, axis=1)[:, k - 1 : k]
    np.fill_diagonal(dx, np.inf)
    np.fill_diagonal(dy, np.inf)
    return (dx < eps).sum(1), (dy < eps).sum(1)


@pytest.mark.parametrize("norm", ["euclidean", "chebyshev"])
def test_counts_match_definition(norm: str, rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, 300, 3, 1.0)
    want = brute_counts(x, y, 3, norm)
    backends = ["numpy", "torch"] + (["tree"] if norm == "chebyshev" else [])
    for backend in backends:
        got = knn.ksg_counts(x, y, 3, norm=norm, backend=backend, block_size=37)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_kth_distance_matches_tree(rng: np.random.Generator) -> None:
    a = rng.standard_normal((500, 6))
    want = cKDTree(a).query(a, k=5)[0][:, 4]
    for backend in ("numpy", "torch", "tree"):
        np.testing.assert_allclose(knn.kth_distance(a, 4, backend=backend), want, rtol=1e-9)
    want_inf = cKDTree(a).query(a, k=5, p=np.inf)[0][:, 4]
    for backend in ("numpy", "torch", "tree"):
        got = knn.kth_distance(a, 4, norm="chebyshev", backend=backend)
        np.testing.assert_allclose(got, want_inf, rtol=1e-12)


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize("norm", ["euclidean", "chebyshev"])
def test_same_result_for_every_block_thread_and_backend(
    variant: int, norm: str, rng: np.random.Generator
) -> None:
    x, y = noisy_pair(rng, 1500, 40, 1.0)  # default pipeline: projected to 16 + 16 dims
    kw = {"variant": variant, "norm": norm}
    ref = mi.ksg(x, y, backend="numpy", **kw)
    for extra in ({"block_size": 1}, {"block_size": 7}, {"block_size": 256}, {"block_size": 5000},
                  {"n_threads": 1}, {"n_threads": 2}, {"n_threads": 3, "block_size": 100},
                  {"backend": "torch"}, {"backend": "torch", "block_size": 33},
                  {"backend": "torch", "n_threads": 1}):
        got = mi.ksg(x, y, **{"backend": "numpy", **kw, **extra})
        assert got == pytest.approx(ref, rel=1e-6), extra


@pytest.mark.parametrize("variant", [1, 2])
def test_tree_backend_matches_brute_in_1d(variant: int, rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, 1200, 1, 0.7)
    ref = mi.ksg(x, y, variant=variant, backend="numpy")
    assert mi.ksg(x, y, variant=variant, backend="tree") == pytest.approx(ref, rel=1e-9)
    assert mi.ksg(x, y, variant=variant, backend="torch") == pytest.approx(ref, rel=1e-9)


def test_float32_path_at_high_dim_matches_float64(rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, 800, 200, 1.0)
    a = mi.ksg(x, y, proj="none", precision="float64", backend="numpy")
    b = mi.ksg(x, y, proj="none", precision="float32", backend="numpy")
    c = mi.ksg(x, y, proj="none", precision="float32", backend="torch")
    assert b == pytest.approx(a, rel=1e-3) and c == pytest.approx(a, rel=1e-3)


def test_auto_backend_choice() -> None:
    assert knn.choose_backend("auto", (1, 1), "euclidean", "cpu") == "tree"
    assert knn.choose_backend("auto", (3, 3), "chebyshev", "cpu") == "tree"
    assert knn.choose_backend("auto", (3, 3), "euclidean", "cpu") == "numpy"
    assert knn.choose_backend("auto", (16, 16), "chebyshev", "cpu") == "numpy"
    assert knn.choose_backend("auto", (3,), "euclidean", "cpu") == "tree"
    assert knn.resolve_precision("auto", (16, 16), "euclidean") is np.float64
    assert knn.resolve_precision("auto", (4096, 4096), "euclidean") is np.float32
    assert knn.block_rows(8192, None, 1) * 8192 <= 1 << 22


def test_ulp_dequantisation() -> None:
    v = np.array([0.0, 1.0, 1.5, -3.0, 1e-6, 65504.0], dtype=np.float32)
    np.testing.assert_array_equal(FORMATS["float32"].ulp(v), np.spacing(np.abs(v)))
    v64 = v.astype(float)
    np.testing.assert_array_equal(FORMATS["float64"].ulp(v64), np.spacing(np.abs(v64)))
    h = torch.tensor([1.0, 3.0, 1e-6, 1000.0], dtype=torch.float16)
    want = np.spacing(h.numpy()).astype(np.float32)
    np.testing.assert_array_equal(FORMATS["float16"].ulp(h.float().numpy()), want)
    b = torch.tensor([1.0, 3.0, -7.5, 1e-30], dtype=torch.bfloat16)
    step = torch.tensor(FORMATS["bfloat16"].ulp(b.float().numpy()))
    assert torch.equal((b.float() + step).bfloat16().float() - b.float(), step)  # exactly one bf16 step


def test_dequantised_values_round_back(rng: np.random.Generator) -> None:
    b = torch.tensor(rng.standard_normal((300, 5)), dtype=torch.bfloat16)
    opts = preprocess.Options(standardize=False)
    z = preprocess.standardize_and_jitter(b.float().numpy(), FORMATS["bfloat16"], opts, rng)
    assert len(np.unique(z)) == z.size  # all ties broken
    assert torch.equal(torch.tensor(z).bfloat16(), b)  # and every value still rounds to its bf16 source
    powers = torch.tensor([[1.0, -2.0, 0.5, 4.0]] * 2000, dtype=torch.bfloat16)  # asymmetric cells
    zp = preprocess.standardize_and_jitter(powers.float().numpy(), FORMATS["bfloat16"], opts, rng)
    assert torch.equal(torch.tensor(zp).bfloat16(), powers)


def test_unique_rows_and_robust_scale(rng: np.random.Generator) -> None:
    x = rng.standard_normal((6, 3))
    y = rng.standard_normal((6, 2))
    x[4], y[4] = x[1], y[1]  # joint duplicate
    x[5] = x[0]  # x repeats but y does not: kept
    np.testing.assert_array_equal(preprocess.unique_rows(x, y), [0, 1, 2, 3, 5])
    assert preprocess.unique_rows(rng.standard_normal((5, 2))) is None
    a = np.column_stack([rng.standard_normal(500), np.full(500, 3.0), np.r_[np.zeros(490), np.ones(10)]])
    center, scale = preprocess.column_stats(a, "robust")
    assert scale[0] == pytest.approx(1.0, rel=0.15)
    assert scale[1] == 1.0 and center[1] == 3.0  # constant column: no division by zero
    assert scale[2] == pytest.approx(a[:, 2].std())  # IQR and MAD are 0: falls back to the s.d.


def test_unique_rows_wide_and_hash_collisions(rng: np.random.Generator) -> None:
    # rows that agree on every sampled column but differ elsewhere must survive; true duplicates must not
    x = rng.standard_normal((400, 300)).astype(np.float32)
    y = rng.standard_normal((400, 300)).astype(np.float32)
    x[10], y[10] = x[3], y[3]  # joint duplicate
    x[20], y[20] = x[4], y[4]
    x[20, 1] += 1.0  # equal to row 4 except in column 1, which the 64-column hash does not sample
    x[30], y[30] = x[5], y[5]
    x[40], y[40] = x[6], y[6]
    x[6, 7] = x[40, 7] = 0.0
    x[40, 7] = -0.0  # -0.0 and 0.0 differ bytewise: kept, as np.unique on the raw rows did
    keep = preprocess.unique_rows(x, y)
    want = np.setdiff1d(np.arange(400), [10, 30])
    np.testing.assert_array_equal(keep, want)
    np.testing.assert_array_equal(preprocess._exact_unique([x, y]), want)  # the full-row definition
    assert preprocess.unique_rows(x[want], y[want]) is None
    many = np.repeat(rng.standard_normal((7, 90)), 50, axis=0)  # every row collides
    np.testing.assert_array_equal(preprocess.unique_rows(many), np.arange(0, 350, 50))


def test_quartiles_match_numpy(rng: np.random.Generator) -> None:
    shapes = [(1, 3, np.float64), (257, 300, np.float32), (1000, 7, np.float64), (2, 513, np.float32)]
    for n, d, dtype in shapes:
        a = rng.standard_normal((n, d)).astype(dtype)
        got = np.array(preprocess._quartiles(a))
        want = np.percentile(a.astype(np.float64), [25, 50, 75], axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-15)  # numpy's lerp rounds differently


def test_float32_storage_is_the_float64_result_rounded(rng: np.random.Generator) -> None:
    a = (1e4 + rng.standard_normal((700, 70))).astype(np.float32)  # a large offset: centred before rounding
    opts = preprocess.Options()
    z64 = preprocess.standardize_and_jitter(a, FORMATS["float32"], opts, np.random.default_rng(1))
    z32 = preprocess.standardize_and_jitter(a, FORMATS["float32"], opts, np.random.default_rng(1), np.float32)
    assert z32.dtype == np.float32
    np.testing.assert_array_equal(z32, z64.astype(np.float32))
    x = rng.standard_normal((N_WIDE, 64)).astype(np.float32)
    y = x + rng.standard_normal(x.shape).astype(np.float32)
    ref = mi.ksg(x, y, proj="none")
    assert mi.ksg(x + 1e4, y + 1e4, proj="none") == pytest.approx(ref, abs=0.01)
    assert mi.ksg(x, y, proj="none", precision="float64") == pytest.approx(ref, abs=1e-3)


def test_preprocessing_independent_of_thread_count(rng: np.random.Generator, monkeypatch) -> None:
    # big enough that every stage uses the thread pool (quartile chunks, x || y, PCA and projection blocks)
    x = rng.standard_normal((2500, 1100)).astype(np.float32)
    y = (x + rng.standard_normal(x.shape)).astype(np.float32)
    xa, xf = as_float_array(x)
    ya, yf = as_float_array(y)
    out = {}
    for threads in (1, 2, 3):
        monkeypatch.setattr(preprocess, "default_threads", lambda t=threads: t)
        for proj in ("pca", "none"):
            out[threads, proj] = preprocess.prepare_pair(xa, xf, ya, yf, preprocess.Options(proj=proj), True)
    for threads in (2, 3):
        for proj in ("pca", "none"):
            np.testing.assert_array_equal(out[threads, proj][0], out[1, proj][0])
            np.testing.assert_array_equal(out[threads, proj][1], out[1, proj][1])


def test_pca_bases(rng: np.random.Generator) -> None:
    # a clear spectral gap: the randomised path (d > 1024) must find the subspace exact PCA finds
    d, k = 1100, 4
    basis, _ = np.linalg.qr(rng.standard_normal((d, k)))
    a = rng.standard_normal((300, k)) @ basis.T * 10 + 0.1 * rng.standard_normal((300, d))
    w = preprocess.fit_basis([a[:150], a[150:]], preprocess.Options(proj="pca", p=k))
    assert w.shape == (d, k)
    np.testing.assert_allclose(w.T @ w, np.eye(k), atol=1e-10)
    c = a - a.mean(axis=0)
    exact = np.linalg.eigh(c.T @ c)[1][:, -k:]
    np.testing.assert_allclose(np.linalg.svd(exact.T @ w, compute_uv=False), 1.0, atol=1e-8)
    r = preprocess.fit_basis([a], preprocess.Options(proj="random", p=8, seed=3))
    np.testing.assert_allclose(r.T @ r, np.eye(8), atol=1e-10)
    assert preprocess.fit_basis([a[:, :8]], preprocess.Options(proj="pca", p=16)) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, 3000, 20, 1.0)
    ref = mi.ksg(x, y, backend="numpy")
    assert mi.ksg(x, y, backend="torch", device="cuda") == pytest.approx(ref, rel=1e-6)
    xs, ys = noisy_pair(rng, 2048, 512, 1.0)
    a = mi.ksg(xs, ys, proj="none", backend="numpy")
    assert mi.ksg(xs, ys, proj="none", backend="torch", device="cuda") == pytest.approx(a, rel=1e-3)


def test_benchmark_quick_runs(tmp_path: object) -> None:
    """Keeps benchmarks/bench_estimators.py from rotting: the --quick grid, JSON written."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_estimators.py"
    spec = importlib.util.spec_from_file_location("bench_estimators", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = Path(str(tmp_path)) / "bench.json"
    bench.main(["--quick", "--out", str(out), "--ref-budget", "1"])
    data = json.loads(out.read_text())
    assert data["matmul_peak_gflops"] > 0 and len(data["rows"]) == 4
    assert all(r["speedup_distance"] > 0 and np.isfinite(r["mi_nats"]) for r in data["rows"])
