"""Whether this CPU computes bfloat16 natively.

Without AVX512-BF16 / AMX (x86) or the BF16 extension (Arm), bfloat16 autocast on a CPU is emulated:
a measured 9× slower than float32 per linear layer on an AVX2-only AMD EPYC, and it rounds differently
from a CPU that has it, so accuracies logged elsewhere move by a few answers. A study that evaluates
under bfloat16 says so before it starts rather than running ten times past its cost estimate.
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 flags; "bf16" is the Arm Features entry


def cpu_flags(cpuinfo: Path | None = None) -> set[str] | None:
    """The first CPU's feature flags (x86 ``flags``, Arm ``Features``), or None where they cannot be read."""
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def cpu_model(cpuinfo: Path | None = None) -> str | None:
    """The first CPU's model name (x86 ``model name``), or None where cpuinfo has none (Arm, not Linux)."""
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return " ".join(value.split())
    return None


def cpu_label(cpuinfo: Path | None = None) -> str:
    """What a run's bfloat16 numbers depend on, in a few words: the CPU model, its widest x86 vector unit, and
    whether bfloat16 is native (e.g. ``AMD EPYC, AVX512, native bfloat16``). Logged with each lm-eval so a
    report can say which machines measured its accuracies."""
    flags = cpu_flags(cpuinfo)
    bf16 = native_bf16(cpuinfo)
    simd = None if flags is None else "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    parts = [cpu_model(cpuinfo) or "unknown CPU", simd,
             {True: "native bfloat16", False: "bfloat16 emulated", None: "bfloat16 support unknown"}[bf16]]
    return ", ".join(p for p in parts if p)


def native_bf16(cpuinfo: Path | None = None) -> bool | None:
    """True/False where the flags say; None where they cannot be read (not Linux)."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else bool(flags & _NATIVE_BF16_FLAGS)


def bf16_cpu_warning(dtype: str, cpuinfo: Path | None = None) -> str | None:
    """A warning for evaluating under ``dtype`` autocast on this CPU, or None when there is nothing to say."""
    if dtype != "bfloat16" or native_bf16(cpuinfo) is not False:
        return None
    return ("this CPU has no native bfloat16 (no AVX512-BF16/AMX): lm-eval under bfloat16 autocast is emulated "
            "here, several times slower than float32 (9x per linear layer measured on an AVX2-only CPU) and "
            "rounded differently from a CPU that has it, so accuracies can differ by a few answers from runs "
            "logged elsewhere; prefer such a CPU or a GPU for lm-eval (--no-lm-eval runs the rest meanwhile)")
