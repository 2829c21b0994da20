"""The native-bfloat16 check reads the CPU's flags; a study warns before evaluating under emulated bfloat16."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockprune.evaluation.cpu_features import bf16_cpu_warning, cpu_flags, cpu_label, native_bf16

pytestmark = pytest.mark.unit

AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC  7B13\nflags\t\t: fpu sse sse2 avx avx2 fma\n\nprocessor\t: 1\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n"


def _info(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_flags_and_native_bf16_per_architecture(tmp_path: Path) -> None:
    assert cpu_flags(_info(tmp_path, AVX2)) == {"fpu", "sse", "sse2", "avx", "avx2", "fma"}
    assert native_bf16(_info(tmp_path, AVX2)) is False
    assert native_bf16(_info(tmp_path, SAPPHIRE)) is True
    assert native_bf16(_info(tmp_path, ARM)) is True
    assert native_bf16(tmp_path / "absent") is None  # not Linux: unknown, so no warning
    assert native_bf16(_info(tmp_path, "processor\t: 0\n")) is None


def test_cpu_label_names_model_vector_unit_and_bf16(tmp_path: Path) -> None:
    assert cpu_label(_info(tmp_path, AVX2)) == "AMD EPYC 7B13, AVX2, bfloat16 emulated"
    assert cpu_label(_info(tmp_path, SAPPHIRE)) == "unknown CPU, AVX512, native bfloat16"
    assert cpu_label(_info(tmp_path, ARM)) == "unknown CPU, native bfloat16"
    assert cpu_label(tmp_path / "absent") == "unknown CPU, bfloat16 support unknown"


def test_warning_only_for_bfloat16_on_a_cpu_without_it(tmp_path: Path) -> None:
    avx2, amx = _info(tmp_path, AVX2), tmp_path / "amx"
    amx.write_text(SAPPHIRE)
    msg = bf16_cpu_warning("bfloat16", avx2)
    assert msg is not None and "--no-lm-eval" in msg and "AVX512-BF16" in msg
    assert bf16_cpu_warning("float32", avx2) is None
    assert bf16_cpu_warning("bfloat16", amx) is None
    assert bf16_cpu_warning("bfloat16", tmp_path / "absent") is None


def test_a_bfloat16_study_warns_before_work_and_not_with_no_lm_eval(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from blockprune.evaluation import cpu_features
    from blockprune.study.run import run_study
    from blockprune.study.spec import load_spec

    monkeypatch.setattr(cpu_features, "CPUINFO", _info(tmp_path, AVX2))
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "bf16", "models": {"smollm2-135m": {"layer": [2]}}, "methods": {"layer": ["shortgpt"]},
        "calibration": {"corpora": ["wikipedia"], "seeds": [0], "n_samples": 2, "seq_len": 32},
        "evaluation": {"corpora": ["wikipedia"], "windows": 1, "seq_len": 32, "tasks": {"piqa": 2},
                       "lm_eval_dtype": "bfloat16"},
        "tracking": {"experiment": "bf16"}, "store_root": str(tmp_path / "stores")}))
    spec, uri = load_spec(spec_path), f"sqlite:///{tmp_path / 'm.db'}"
    said: list[str] = []
    state, _ = run_study(spec, uri, max_minutes=1e-6, echo=said.append)  # stops before any model loads
    assert state.stopped_early and state.selections == 0
    assert any(s.startswith("[study] warning: this CPU has no native bfloat16") for s in said)
    said.clear()
    run_study(spec, uri, max_minutes=1e-6, lm_eval=False, echo=said.append)
    assert not any("warning" in s for s in said)
