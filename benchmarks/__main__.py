"""Run every benchmark: ``python -m benchmarks`` (``make bench``).

Only ``bench_*`` modules run here. The memory soak (``python -m benchmarks.soak_live``,
10 minutes by default) is run by hand, see docs/operations.md.
"""
import importlib
import pkgutil
from pathlib import Path

here = Path(__file__).parent
for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda i: i.name):
    if info.name.startswith("bench_"):
        print(f"\n=== {info.name} ===", flush=True)
        importlib.import_module(f"benchmarks.{info.name}").main([])
