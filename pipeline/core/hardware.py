"""What this machine's CPU is and can do, as the CPU itself reports it (no torch).

`precision: auto` picks bf16 on a CPU with native bf16 instructions (AMX or
AVX512-BF16: oneDNN's bf16 kernels there train simple_cnn about twice as fast as
fp32, bench/RESULTS.md) and fp32 on one without, where bf16 would be emulated.
"""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")  # Linux; tests point it at a file of their own
# the flags that mean native bf16 arithmetic, in the order they are named
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo, or {} where there is none."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def cpu_flags() -> set[str]:
    info = _cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())


def native_bf16() -> str:
    """The CPU's native bf16 instructions, e.g. 'amx_bf16 avx512_bf16', or '' where it has none."""
    if sys.platform == "darwin" and platform.machine() == "arm64":  # Apple M2 and later
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                 timeout=5).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return "FEAT_BF16" if out == "1" else ""
    flags = cpu_flags()
    return " ".join(f for f in BF16_FLAGS if f in flags)


def cpu_name() -> str:
    info = _cpuinfo()
    return info.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
