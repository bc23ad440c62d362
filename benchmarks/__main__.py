"""Run every benchmark (``make bench``) and assemble ``benchmarks/RESULTS.md``.

``python -m benchmarks`` runs them all; ``python -m benchmarks gpfa rsa`` runs some;
``python -m benchmarks --assemble`` only rebuilds RESULTS.md from ``results/*.md``.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["nwb_load", "gpfa", "gpvae", "hmmglm", "ntf", "bicluster", "rsa", "scaling", "gpu"]
HEADER = """# Benchmark results

Each section is written by `benchmarks/<name>.py` (run all with `make bench`), side by side
with the peer library in the same run. Ratios are peer time / neurodata time (higher is
better for neurodata). JIT compile time is reported separately from run time.

GPU: an NVIDIA H100 was lent for 30 minutes in the third and in the fifth session;
`python -m benchmarks.gpu` (last section) records the CPU-vs-GPU speed-ups of every model, and
`<model>_gpu.md` sections the model-specific GPU runs. Every benchmark runs unchanged on JAX's
default device. Each section names its machine and the load it ran under.
"""


def assemble() -> Path:
    """Concatenate ``results/<name>.md`` and then ``results/<name>_*.md`` (extra sections of
    the same benchmark, e.g. its GPU run) in benchmark order into ``RESULTS.md``."""
    parts = [HEADER]
    for name in BENCHMARKS:
        main = HERE / "results" / f"{name}.md"
        extra = sorted((HERE / "results").glob(f"{name}_*.md"))
        parts += [path.read_text() for path in ([main] if main.exists() else []) + extra]
    out = HERE / "RESULTS.md"
    out.write_text("\n".join(parts))
    return out


def main(argv: list[str]) -> int:
    if "--assemble" not in argv:
        names = [a for a in argv if not a.startswith("-")] or BENCHMARKS
        for name in names:
            importlib.import_module(f"benchmarks.{name}")  # fail early on a typo
            print(f"== benchmarks.{name}", flush=True)
            subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=True)
    print(assemble())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
