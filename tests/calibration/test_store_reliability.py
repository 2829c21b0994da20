"""A store that no longer matches its checksums is never reused; a full disk is an error, not SIGBUS; a float16
capture that overflows is repeated in float32 at the same path. Real files through the real StoreWriter."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from blockprune.calibration.store import (
    ActivationStore,
    StoreDiskFullError,
    StoreDtypeOverflowError,
    StoreWriter,
    finished_store,
    open_or_capture,
)

pytestmark = pytest.mark.unit

NAMES = ["h_000", "h_001", "h_002", "m_000", "m_001"]
ROWS, HIDDEN = 1024, 128  # 256 KiB per float16 array: a 64 KiB overwrite fits in the middle


def write_store(path: Path, dtype: str = "float16", scale: float = 1.0, seed: int = 0) -> ActivationStore:
    rng = np.random.default_rng(seed)
    w = StoreWriter(path, NAMES, ROWS, HIDDEN, dtype)
    try:
        for n in NAMES:
            w.write_rows(n, 0, scale * rng.standard_normal((ROWS, HIDDEN), dtype=np.float32))
        w.save_array("positions", np.zeros((ROWS, 2), np.int64))
        return w.commit({"n_layers": 2, "n_rows": ROWS, "capture_mid": True, "stats": {},
                         "settings": {"store_dtype": dtype}})
    except BaseException:
        w.abort()
        raise


def overwrite_middle(f: Path, n: int = 64 * 1024) -> None:
    """What the issue did: 64 KiB of zeros in the middle of an array file, size unchanged."""
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(n)
    f.write_bytes(bytes(data))


def test_a_store_whose_array_changed_is_moved_aside_with_its_scores_and_captured_again(tmp_path, caplog) -> None:
    path = tmp_path / "store"
    first = write_store(path)
    (path / "scores").mkdir()
    (path / "scores" / "k.json").write_text(json.dumps({"store": first.checksum, "values": {"0-0": 1.0}}))
    overwrite_middle(path / "h_002.npy")
    calls: list[str] = []

    def capture(dtype: str) -> ActivationStore:
        calls.append(dtype)
        return write_store(path, dtype, seed=1)

    with caplog.at_level(logging.WARNING, logger="blockprune.calibration.store"):
        store, reused = open_or_capture(path, capture, "float16")
    assert not reused and calls == ["float16"], "a corrupt store must be captured again, not reused"
    assert "h_002.npy" in store.notes["store_replaced_corrupt"]
    assert any("h_002.npy" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    aside = tmp_path / "store.corrupt"
    assert (aside / "scores" / "k.json").exists(), "the corrupt store's score cache goes aside with it"
    assert not (path / "scores").exists(), "no score of the corrupt store may be reused"
    store.verify()
    again, reused = open_or_capture(path, capture, "float16")  # the new store verifies: reused, no capture
    assert reused and calls == ["float16"] and again.checksum == store.checksum and again.notes == {}


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest", "positions"])
def test_every_kind_of_damage_is_caught_before_reuse(tmp_path, damage: str) -> None:
    path = tmp_path / "store"
    write_store(path)
    if damage == "truncate":
        f = path / "m_001.npy"
        f.write_bytes(f.read_bytes()[:-1000])
    elif damage == "delete":
        (path / "h_000.npy").unlink()
    elif damage == "manifest":
        (path / "manifest.json").write_text('{"format_version": 1, "checks')
    else:  # the sample's positions (per-window pooling reads them): verified, though not part of the store id
        np.save(path / "positions.npy", np.ones((ROWS, 2), np.int64))
    assert finished_store(path) is None
    assert not path.exists() and (tmp_path / "store.corrupt").exists()


def test_an_intact_store_is_reused_after_verification(tmp_path) -> None:
    path = tmp_path / "store"
    first = write_store(path)
    store, reused = open_or_capture(path, lambda d: pytest.fail("an intact store must not be recaptured"), "float16")
    assert reused and store.checksum == first.checksum


def test_float16_overflow_is_captured_again_in_float32_at_the_same_path(tmp_path, caplog) -> None:
    path = tmp_path / "store"
    calls: list[str] = []

    def capture(dtype: str) -> ActivationStore:
        calls.append(dtype)
        return write_store(path, dtype, scale=3e4)  # |x| up to ~1.5e5 > 65504

    with caplog.at_level(logging.WARNING, logger="blockprune.calibration.store"):
        store, reused = open_or_capture(path, capture, "float16")
    assert calls == ["float16", "float32"] and not reused
    assert store.path == path and store.h(0).dtype == np.float32
    assert store.manifest["settings"]["store_dtype"] == "float32"
    assert "float16 → float32" in store.notes["store_dtype_fallback"]
    assert any("float16 range" in r.getMessage() for r in caplog.records)
    assert not list(tmp_path.glob("store.partial-*")), "the aborted float16 attempt leaves nothing behind"
    again, reused = open_or_capture(path, capture, "float16")  # the float32 store is what a rerun reuses
    assert reused and calls == ["float16", "float32"]


def test_a_float32_overflow_is_not_retried(tmp_path) -> None:
    """Only float16 has a wider fallback; the error is a domain error (one line) that is still an OverflowError."""
    from blockprune.errors import BlockpruneError

    def capture(dtype: str) -> ActivationStore:
        raise StoreDtypeOverflowError(f"activations at h_001 exceed the {dtype} range")

    with pytest.raises(StoreDtypeOverflowError, match="float32 range"):
        open_or_capture(tmp_path / "s", capture, "float32")
    assert issubclass(StoreDtypeOverflowError, BlockpruneError) and issubclass(StoreDtypeOverflowError, OverflowError)


DISK_FULL = textwrap.dedent("""
    import sys
    import numpy as np
    from pathlib import Path
    from blockprune.calibration.store import StoreWriter
    from blockprune.errors import BlockpruneError

    root = Path(sys.argv[1])
    names = [f"h_{i:03d}" for i in range(31)]
    try:
        w = StoreWriter(root / "store", names, 1024, 576, "float16")  # 36 MB on an 8 MiB filesystem
        for n in names:
            w.write_rows(n, 0, np.ones((1024, 576), np.float32))
        w.save_array("positions", np.zeros((1024, 2), np.int64))
        w.commit({"n_layers": 30, "capture_mid": False, "stats": {}})
    except BlockpruneError as e:
        print(type(e).__name__, e)
        print(sorted(p.name for p in root.iterdir()))
        sys.exit(3)
    print("written")
""")


def test_full_disk_is_a_clear_error_and_leaves_no_partial_folder(tmp_path, mounts) -> None:
    """Before: writes through the memory map hit ENOSPC as SIGBUS (exit 135, no message)."""
    fs = tmp_path / "small"
    fs.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(DISK_FULL)
    done = subprocess.run(mounts([sys.executable, str(script), str(fs)], tmpfs={str(fs): 8}), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr[-2000:])
    first, listing = done.stdout.splitlines()[:2]
    assert first.startswith("StoreDiskFullError") and str(fs / "store") in first and "MB free" in first
    assert listing == "[]", f"a failed reservation must leave no partial folder, found {listing}"
    assert StoreDiskFullError.__name__ in first
