"""Which cDOL self-weight divisor C has the lowest error? (issue 11: choose the default.)

    .venv/bin/python benchmarks/cdol_c.py                    # CPU, a few minutes
    .venv/bin/python benchmarks/cdol_c.py --device cuda --cifar-n 50000

For each data set, the estimator study (``convergence_study``: every estimator sees the
same queries as the exact one, so bias is measured pairwise) runs cDOL with C = f N / L for
several f, and with the default C (``default_c``), at a few noise levels and subset
sizes. Printed per C: the mean over (level, L) of |bias| / exact and of rmse / exact, and how
many (level, L) have |bias| > 3 bias_stderr (a bias the queries resolve).

Data: sklearn digits (train split, N = 1438, 8x8x1) and a CIFAR-shaped synthetic set
(32x32x3: 10 smooth class prototypes, smooth per-image variation and pixel noise; N is
--cifar-n, 4000 on CPU to keep it minutes).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

import numpy as np

from diffobj.data.loaders import load_sklearn_digits
from diffobj.objectives import schedules
from diffobj.optimal.estimators import default_c
from diffobj.optimal.study import convergence_study


def cifar_shaped(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    up = np.ones((4, 4, 1))
    prototypes = np.kron(rng.uniform(0, 1, (10, 8, 8, 3)), up[None])  # (10, 32, 32, 3)
    variation = np.kron(rng.normal(0, 0.12, (n, 8, 8, 3)), up[None])
    noise = rng.normal(0, 0.03, (n, 32, 32, 3))
    images = prototypes[rng.integers(0, 10, n)] + variation + noise
    return np.clip(np.round(images * 255), 0, 255).astype(np.uint8)


def study(images: np.ndarray, subsets: list[int], queries: int, device: str) -> list[dict]:
    sched = schedules.build("vp_cosine", schedules.load_library()["vp_cosine"], (-10.0, 10.0))
    n = len(images)
    rows = []
    for L in subsets:
        default_factor = default_c(n, L) * L / n  # C = f N / L
        rows += convergence_study(
            images,
            sched,
            levels=6,
            queries=queries,
            subsets=[L],
            c_factors=(0.5, 1.0, default_factor, 2.0, 4.0, 16.0),
            device=device,
            progress=False,
        )
    return rows


def summarise(name: str, rows: list[dict]) -> None:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["estimator"] != "cdol" or not r["exact"] > 1e-6:  # J* ~ 0: relative error undefined
            continue
        default = math.isclose(r["C"], default_c(r["n_data"], r["subset"]))
        key = "default" if default else f"{r['C_factor']:g} N/L"
        groups[key].append(r)
    print(f"{name}: cDOL, mean over (level, L) with exact > 1e-6")
    print(f"  {'C':>12}  {'|bias|/J*':>10}  {'rmse/J*':>10}  {'resolved bias':>13}")
    for key, rs in sorted(groups.items(), key=lambda kv: kv[1][0]["C_factor"]):
        rel_bias = np.mean([abs(r["bias"]) / r["exact"] for r in rs])
        rel_rmse = np.mean([r["rmse"] / r["exact"] for r in rs])
        resolved = sum(abs(r["bias"]) > 3 * r["bias_stderr"] for r in rs)
        print(f"  {key:>12}  {rel_bias:10.4f}  {rel_rmse:10.4f}  {resolved:>6}/{len(rs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--cifar-n", type=int, default=4000)
    args = parser.parse_args()
    begin = time.perf_counter()
    digits = load_sklearn_digits().train.images
    summarise(f"digits N={len(digits)}", study(digits, [16, 64, 256], args.queries, args.device))
    images = cifar_shaped(args.cifar_n)
    summarise(f"CIFAR-shaped N={len(images)}", study(images, [64, 512], args.queries, args.device))
    print(f"({time.perf_counter() - begin:.0f} s)")


if __name__ == "__main__":
    main()
