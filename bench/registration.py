"""Preprocessing time and registration accuracy per scan (N4 + atlas registration).

For every scan of the data root: N4 time, registration time (without using any provided brain
mask), the quality check, and the Dice of the registered template brain mask against the
provided brain mask where one exists (BraTS, NiChart), before and after the clean-up step.

    python bench/registration.py [--data ../shared/data] [--every 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssae.io.cases import find_cases
from ssae.io.errors import SSAEError
from ssae.io.volumes import read_mask, read_volume
from ssae.preprocessing.atlas import load_atlas, warp_atlas_brain
from ssae.preprocessing.bias_field import bias_correct
from ssae.preprocessing.registration import align_to_atlas


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    parser.add_argument("--every", type=int, default=1, help="use every n-th NiChart subject")
    args = parser.parse_args()
    load_atlas()
    sets = {
        "clinical-raw": [],
        "mslub": find_cases(args.data / "mslub"),
        "brats2015": find_cases(args.data / "brats2015"),
        "nichart": find_cases(args.data / "nichart")[:: args.every],
    }
    sets["clinical-raw"] = find_cases(args.data / "clinical-raw")
    print(f"{'set':13s} {'scan':24s} {'N4 s':>6s} {'reg s':>6s} {'check':>6s} {'in head':>8s} {'Dice warped':>12s} {'Dice cleaned':>12s}")
    summary: dict[str, list[float]] = {}
    refused: dict[str, list[str]] = {}
    for name, cases in sets.items():
        for case in cases:
            image = read_volume(case.image)
            t0 = time.perf_counter()
            corrected = bias_correct(image)
            t_n4 = time.perf_counter() - t0
            try:
                alignment = align_to_atlas(corrected)
            except SSAEError as error:  # a refused registration is a result too: count it, go on
                refused.setdefault(name, []).append(case.name)
                print(f"{name:13s} {case.name[:24]:24s} {t_n4:6.1f} {'-':>6s} {'REFUSED':>6s}  {error}", flush=True)
                continue
            warped_text = cleaned_text = "-"
            if case.brain_mask is not None:
                truth = sitk.GetArrayFromImage(read_mask(case.brain_mask, image, "brain mask")).astype(bool)
                warped = sitk.GetArrayFromImage(warp_atlas_brain(alignment.transform, image)).astype(bool)
                cleaned = sitk.GetArrayFromImage(alignment.brain_mask).astype(bool)
                d_w, d_c = dice(warped, truth), dice(cleaned, truth)
                summary.setdefault(name, []).append(d_c)
                warped_text, cleaned_text = f"{d_w:.3f}", f"{d_c:.3f}"
            quality = alignment.quality
            print(
                f"{name:13s} {case.name[:24]:24s} {t_n4:6.1f} {alignment.seconds:6.1f} {'ok' if quality.passed else 'FAIL':>6s} {quality.brain_inside_head:8.2f} {warped_text:>12s} {cleaned_text:>12s}",
                flush=True,
            )
    for name, values in summary.items():
        print(f"{name}: mean Dice {np.mean(values):.3f} (min {np.min(values):.3f}, max {np.max(values):.3f}, n={len(values)})")
    for name, cases in refused.items():
        print(f"{name}: registration refused for {len(cases)} scan(s): {', '.join(cases)}")


if __name__ == "__main__":
    main()
