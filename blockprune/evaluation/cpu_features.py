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


def first_cpu(cpuinfo: Path | None = None) -> dict[str, str] | None:
    """The first CPU's ``key: value`` fields of /proc/cpuinfo (first occurrence of each key), or None where
    the file cannot be read (not Linux)."""
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _flags(fields: dict[str, str] | None) -> set[str] | None:
    value = None if fields is None else fields.get("flags", fields.get("Features"))
    return None if value is None else set(value.split())


def _bf16(flags: set[str] | None) -> bool | None:
    return None if flags is None else bool(flags & _NATIVE_BF16_FLAGS)


def cpu_flags(cpuinfo: Path | None = None) -> set[str] | None:
    """The first CPU's feature flags (x86 ``flags``, Arm ``Features``), or None where they cannot be read."""
    return _flags(first_cpu(cpuinfo))


def native_bf16(cpuinfo: Path | None = None) -> bool | None:
    """True/False where the flags say; None where they cannot be read (not Linux)."""
    return _bf16(cpu_flags(cpuinfo))


def cpu_label(cpuinfo: Path | None = None) -> str:
    """What a run's bfloat16 numbers depend on, in a few words: the CPU model (x86 ``model name``), its widest
    x86 vector unit, and whether bfloat16 is native (e.g. ``AMD EPYC, AVX512, native bfloat16``). Logged with
    each lm-eval so a report can say which machines measured its accuracies."""
    fields = first_cpu(cpuinfo)
    flags = _flags(fields)
    simd = None if flags is None else "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    model = " ".join((fields or {}).get("model name", "").split())
    bf16 = {True: "native bfloat16", False: "bfloat16 emulated", None: "bfloat16 support unknown"}[_bf16(flags)]
    return ", ".join(p for p in (model or "unknown CPU", simd, bf16) if p)


def bf16_cpu_warning(dtype: str, cpuinfo: Path | None = None) -> str | None:
    """A warning for evaluating under ``dtype`` autocast on this CPU, or None when there is nothing to say."""
    if dtype != "bfloat16" or native_bf16(cpuinfo) is not False:
        return None
    return ("this CPU has no native bfloat16 (no AVX512-BF16/AMX): lm-eval under bfloat16 autocast is emulated "
            "here, several times slower than float32 (9x per linear layer measured on an AVX2-only CPU) and "
            "rounded differently from a CPU that has it, so accuracies can differ by a few answers from runs "
            "logged elsewhere; prefer such a CPU or a GPU for lm-eval (--no-lm-eval runs the rest meanwhile)")
