"""A long SSAE Anomaly session on one real MRML scene (slicer-core): does it leak?

One scene, the shipped MSLUB patient 19 and the shipped model (scanner adaptation off, as a
reader who re-runs would have it after the first run): 10 detections with "replace previous
results", 50 threshold changes, map and operating-point switches, 5 labelmap exports, a
follow-up comparison of the shipped clinical pair through the background worker, then a .mrb
save and a reload into the same scene (as File > Load Scene does, clearing it first) and one
more detection with replace there. Prints the process
memory (resident set) and the scene's node count after warm-up (the first detection) and at
the end of each phase.

    python bench/slicer_soak.py [--detections 10] [--thresholds 50] [--exports 5]

What "flat" means here: after warm-up, resident memory grows by less than 50 MB over the whole
session, the node count returns to its warm-up value after every replace and export, and no
display or storage node is left without its data node after the reloaded results are replaced
(the old results had storage nodes from the save, the new ones none yet: a raw count would drop).
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "SSAEAnomaly"), str(REPO / "Testing")]

import SimpleITK as sitk
import slicer
from headless_slicer import headless_scene, orphaned_helpers
from SSAEAnomalyLib import AnomalyLogic, update_volume_node_from_image

from ssae.app.processes import wait_for
from ssae.io.resources import default_model_path, resources_dir, sample_case_dir


def resident_mb() -> float:
    """The process's current resident set size (Linux /proc; ru_maxrss elsewhere, a peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def add_volume(scene, path: Path, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    update_volume_node_from_image(node, sitk.ReadImage(str(path)))
    node.CreateDefaultDisplayNodes()
    return node


def logic_for(scene, volume) -> AnomalyLogic:
    logic = AnomalyLogic(scene)
    params = logic.parameters
    params.input_volume, params.model_path, params.device, params.adapt = volume, str(default_model_path()), "cpu", "off"
    return logic


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, int, float]] = []
        self.start = time.monotonic()

    def record(self, phase: str, scene) -> None:
        gc.collect()
        self.rows.append((phase, resident_mb(), scene.GetNumberOfNodes(), time.monotonic() - self.start))
        print(f"{phase:<48} {self.rows[-1][1]:8.1f} MB {self.rows[-1][2]:5d} nodes {self.rows[-1][3]:7.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", type=int, default=10)
    parser.add_argument("--thresholds", type=int, default=50)
    parser.add_argument("--exports", type=int, default=5)
    args = parser.parse_args(argv)
    report = Report()
    scene, _app_logic = headless_scene()  # kept: freeing it removes the default colour nodes
    volume = add_volume(scene, sample_case_dir() / "flair.nii.gz", "MSLUB patient19 FLAIR")
    logic = logic_for(scene, volume)
    params = logic.parameters
    logic.detect()
    report.record("warm-up: first detection", scene)
    warm_mb, warm_nodes = report.rows[-1][1], report.rows[-1][2]

    for _ in range(args.detections - 1):
        logic.detect(replace_previous=True)
    report.record(f"{args.detections} detections, each replacing the last", scene)
    replace_nodes = report.rows[-1][2]

    maps, points = params.result_maps(), ("sensitive", "balanced", "specific")
    calibrated = params.threshold_of(params.score_map)
    for index in range(args.thresholds):
        logic.apply_threshold(calibrated * (0.5 + index / args.thresholds))
        if index % 10 == 9:
            params.score_map = maps[(index // 10) % len(maps)]
            logic.apply_operating_point(points[(index // 10) % len(points)])
    report.record(f"{args.thresholds} threshold changes, map and point switches", scene)

    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.exports):
            logic.export_labelmap(Path(folder) / f"mask{index}.nii.gz")
    report.record(f"{args.exports} labelmap exports", scene)
    export_nodes = report.rows[-1][2]

    clinical = resources_dir() / "SampleData" / "ClinicalRaw"
    prior = add_volume(scene, clinical / "patient01_study1_FLAIR.nii.gz", "clinical prior")
    followup = add_volume(scene, clinical / "patient01_study2_FLAIR.nii.gz", "clinical follow-up")
    job = logic.followup.start(prior, followup)
    code = wait_for(job.command, timeout_s=900)
    if code != 0:
        print("\n".join(job.command.new_lines()[-20:]))
        raise SystemExit(f"the comparison failed (exit code {code})")
    logic.followup.load(job)
    logic.close_worker()
    report.record("follow-up comparison (background worker)", scene)

    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder) / "session.mrb"
        if not scene.WriteToMRB(str(bundle)):
            raise SystemExit("saving the scene as .mrb failed")
        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(str(Path(folder) / "cache"))
        io = slicer.vtkDataIOManager()
        io.SetCacheManager(cache)
        scene.SetDataIOManager(io)
        scene.SetCacheManager(cache)
        if not scene.ReadFromMRB(str(bundle), True):  # File > Load Scene, clearing the scene first
            raise SystemExit("reading the .mrb back failed")
        loaded_nodes = scene.GetNumberOfNodes()
        again = AnomalyLogic(scene)  # the module's logic finds its parameter node in the loaded scene
        again.parameters.device, again.parameters.adapt = "cpu", "off"
        again.detect(replace_previous=True)
        report.record("saved as .mrb, reloaded, detected with replace", scene)
        orphans = orphaned_helpers(scene)

    end_mb = report.rows[-1][1]
    print()
    print(f"memory after warm-up {warm_mb:.1f} MB, at the end {end_mb:.1f} MB: growth {end_mb - warm_mb:+.1f} MB (goal < 50 MB)")
    print(f"nodes: warm-up {warm_nodes}, after {args.detections} replacing detections {replace_nodes}, after exports {export_nodes}")
    shown = ", ".join(orphans[:3]) + (", ..." if len(orphans) > 3 else "")
    print(f"reloaded scene: {loaded_nodes} nodes read; after a replacing detection {len(orphans)} orphaned display or storage nodes {shown}")
    flat = end_mb - warm_mb < 50 and replace_nodes == warm_nodes and export_nodes == replace_nodes and not orphans
    print("flat" if flat else "NOT flat")
    return 0 if flat else 1


if __name__ == "__main__":
    raise SystemExit(main())
