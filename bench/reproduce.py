"""Reproduce the paper's comparisons (Table 2, Fig. 2, Fig. 3, PR curves) on the data we have.

Trains every variant (AE / SSAE x dense / spatial / VAE; plain models at several sizes) on the
NiChart subjects with the same seed and budget, evaluates each per scale and aggregated on
MSLUB (manual masks), BraTS (manual tumour labels) and the held-out NiChart subjects' automatic
WMH masks (reported separately), beside the FLAIR intensity threshold. Resumable: finished
models and preprocessing are reused. (The quality study of the default map, with scanner
adaptation, the hyper-intensity prior and fusion, is bench/quality.py.)

    python bench/reproduce.py --profile cpu  [--data ../shared/data] [--output report/cpu]
    python bench/reproduce.py --profile full [--output report/full]      # on a GPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ssae.evaluation.reproduction import run_suite
from ssae.evaluation.reproduction_plan import PROFILES
from ssae.scoring.score_maps import PostprocessingSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, help="report folder (default: report/<profile>)")
    parser.add_argument("--seed", type=int, default=0)
    post = parser.add_argument_group("post-processing at evaluation (the authors' switches)")
    post.add_argument("--median-size", type=int, default=5)
    post.add_argument("--brain-erosion", type=int, default=2)
    post.add_argument("--min-lesion-mm3", type=float, default=10.0)
    args = parser.parse_args()
    settings = PostprocessingSettings(median_size=args.median_size, brain_erosion=args.brain_erosion, min_lesion_mm3=args.min_lesion_mm3)
    output = args.output or REPO / "report" / args.profile
    tests = {
        "mslub": (args.data / "mslub", "manual"),
        "brats": (args.data / "brats2015", "manual"),
        "nichart-wmh": (args.data / "nichart", "automatic"),
    }
    paths = run_suite(
        args.data / "nichart",
        tests,
        output,
        PROFILES[args.profile],
        seed=args.seed,
        postprocessing=settings,
        log=lambda m: print(m, flush=True),
    )
    for name, path in paths.items():
        print(f"{name:>10s}: {path}")


if __name__ == "__main__":
    main()
