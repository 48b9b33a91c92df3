"""SSAEAnomaly's logic on real MRML scenes from slicer-core (no Slicer application, no Qt)."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import vtk
from conftest import SAMPLES, oblique_direction
from headless_slicer import SliceViewRenderer, headless_scene, orphaned_helpers
from SSAEAnomalyLib import AnomalyLogic, AnomalyParameters, image_from_volume_node, show_in_slice_views, update_volume_node_from_image
from SSAEAnomalyLib.volumes import array_from_volume_node

from ssae.app.processes import wait_for
from ssae.io.errors import SSAEError
from ssae.scoring.operating_points import card_mask_rule


def _add_volume(scene, image: sitk.Image, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    update_volume_node_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())]


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture()
def oblique_scene(small_cases, tiny_model):
    """A scene holding a real FLAIR with an oblique direction and anisotropic voxels."""
    scene, app_logic = headless_scene()
    image = sitk.ReadImage(str(small_cases / "patient19" / "flair.nii.gz"))
    image.SetDirection(oblique_direction(20))
    image.SetSpacing((1.7, 2.3, 3.1))
    volume = _add_volume(scene, image, "FLAIR")
    logic = AnomalyLogic(scene)
    params = logic.parameters
    params.input_volume, params.model_path, params.device = volume, str(tiny_model), "cpu"
    params.adapt = "off"  # scanner adaptation has tests of its own; here it would only cost time
    yield scene, app_logic, logic, volume
    logic.close_worker(kill=True)


def test_volume_node_and_simpleitk_geometry_agree(oblique_scene):
    scene, _, _, volume = oblique_scene
    image = image_from_volume_node(volume)
    copy = _add_volume(scene, image, "copy")
    assert np.allclose(_ijk_to_ras(copy), _ijk_to_ras(volume))
    # LPS (ITK) vs RAS (Slicer): the physical position of voxel (0, 0, 0) agrees.
    assert np.allclose(image.GetOrigin()[:2], [-v for v in volume.GetOrigin()[:2]])


def test_detection_creates_maps_with_the_input_geometry_and_named_segments(oblique_scene):
    scene, _, logic, volume = oblique_scene
    rows = logic.detect()
    params = logic.parameters
    assert params.result_maps() == ["aggregated", "level0", "level1", "level2", "prior", "fused", "flair"]
    for name in params.result_maps():
        node = params.result_volume(name)
        assert np.allclose(_ijk_to_ras(node), _ijk_to_ras(volume))
        assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
        assert node.GetDisplayNode().GetApplyThreshold()  # transparent below the threshold
        assert node.GetName().startswith("FLAIR anomaly")
    segmentation = params.segmentation.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == [
        "Anomaly aggregated",
        "Anomaly level 0 (64 px)",
        "Anomaly level 1 (32 px)",
        "Anomaly level 2 (16 px)",
        "Anomaly with hyper-intensity prior",
        "Anomaly fused with FLAIR",
        "Anomaly FLAIR reference",
    ]
    lesion = segmentation.GetSegment("SSAE_prior")
    terminology = vtk.reference("")
    assert lesion.GetTag(lesion.GetTerminologyEntryTagName(), terminology)
    assert "SCT^52988006^Lesion" in str(terminology) and "SCT^12738006^Brain" in str(terminology)
    assert params.score_map == "prior"  # the model card's map draws the mask
    table = params.statistics_table.GetTable()
    assert table.GetNumberOfRows() == rows.statistics.count
    if rows.statistics.count:
        assert table.GetValueByName(0, "Volume (ml)").ToDouble() == pytest.approx(rows.statistics.component_ml[0])


def test_threshold_changes_update_segment_and_table_without_rerunning(oblique_scene):
    _, _, logic, _ = oblique_scene
    logic.detect()
    params = logic.parameters
    params.score_map = "aggregated"
    calibrated = params.threshold_of("aggregated")
    low = logic.apply_threshold(calibrated * 0.5)
    high = logic.apply_threshold(calibrated * 2.0)
    assert low.statistics.total_ml > high.statistics.total_ml
    assert params.threshold_of("aggregated") == pytest.approx(calibrated * 2.0)
    assert float(params.statistics_table.GetAttribute("SSAE.totalVolumeMl")) == pytest.approx(high.statistics.total_ml)
    logic.parameters.min_lesion_mm3 = 1e6  # nothing is that large
    assert logic.apply_threshold(calibrated * 0.5).statistics.count == 0
    low_edge, high_edge = logic.threshold_range()
    assert low_edge == 0 and high_edge >= 1.5 * calibrated
    params.score_map = "level1"
    level = logic.apply_threshold()
    assert params.segmentation.GetDisplayNode().GetSegmentVisibility("SSAE_level1")
    assert not params.segmentation.GetDisplayNode().GetSegmentVisibility("SSAE_aggregated")
    assert level.statistics.count >= 0


def test_each_operating_point_brings_its_own_small_lesions(oblique_scene):
    """The run judged every small lesion for every operating point; switching the point in the
    panel switches them too, exactly as the engine draws that point's mask."""
    from ssae.io.model_file import read_card
    from ssae.scoring.lesions import label_lesions
    from ssae.scoring.mask_drawing import SMALL_LESION_BITS

    _, _, logic, _ = oblique_scene
    logic.detect()
    params = logic.parameters
    node = params.small_lesions
    assert node is not None and node.GetAttribute("SSAE.runPoint") == "balanced" and node.GetHideFromEditors()
    bits = array_from_volume_node(node)
    assert (bits & SMALL_LESION_BITS["balanced"]).any() and not (bits & SMALL_LESION_BITS["specific"]).any()
    assert not ((bits & SMALL_LESION_BITS["balanced"]) > 0)[(bits & SMALL_LESION_BITS["sensitive"]) == 0].any()  # sensitive keeps more
    card = read_card(params.model_path)
    score_node = params.result_volume("prior")
    score = image_from_volume_node(score_node)
    voxel_ml = float(np.prod(score.GetSpacing())) / 1000.0
    totals = {}
    for point in ("sensitive", "balanced", "specific"):
        table = logic.apply_operating_point(point)
        rule = card_mask_rule(card, "prior", False, point)
        voxels = sitk.GetArrayFromImage(label_lesions(score, rule.threshold, rule.min_lesion_mm3, rule.seed_threshold)) > 0
        expected = voxels | ((bits & SMALL_LESION_BITS[point]) > 0)
        assert table.statistics.total_ml == pytest.approx(expected.sum() * voxel_ml, rel=1e-6), point
        totals[point] = table.statistics.count
        assert "false lesions" in logic.threshold_meaning()
    assert totals["sensitive"] > totals["specific"]
    calibrated = params.threshold_of("prior")
    mine = logic.apply_threshold(calibrated * 1.5)  # the user's threshold keeps the run's point's small lesions
    voxels = array_from_volume_node(score_node) > calibrated * 1.5
    assert mine.statistics.total_ml >= ((bits & SMALL_LESION_BITS["balanced"]) > 0).sum() * voxel_ml * 0.999
    assert "small lesions of the balanced operating point" in logic.threshold_meaning()
    assert voxels.sum() * voxel_ml <= mine.statistics.total_ml + 1e-9


def test_exports_keep_the_input_geometry_and_refuse_to_overwrite(oblique_scene, tmp_path):
    _, _, logic, volume = oblique_scene
    logic.detect()
    logic.parameters.min_lesion_mm3 = 0.0
    logic.parameters.score_map = "aggregated"
    rows = logic.apply_threshold(logic.parameters.threshold_of("aggregated") * 0.5)
    scene = volume.GetScene()
    nodes_before = _node_ids(scene)
    labelmap = logic.export_labelmap(tmp_path / "mask.nii.gz")
    segmentation = logic.export_segmentation(tmp_path / "anomalies.seg.nrrd")
    assert _node_ids(scene) == nodes_before, "an export left nodes in the scene (they would be saved with it)"
    reference = image_from_volume_node(volume)
    mask = sitk.ReadImage(str(labelmap))
    assert mask.GetSize() == reference.GetSize()
    assert np.allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    assert np.allclose(mask.GetDirection(), reference.GetDirection(), atol=1e-5)
    voxel_ml = np.prod(reference.GetSpacing()) / 1000
    assert sitk.GetArrayFromImage(mask).astype(bool).sum() * voxel_ml == pytest.approx(rows.statistics.total_ml, rel=1e-6)
    info = slicerio.read_segmentation(str(segmentation))
    assert [s["name"] for s in info["segments"]][:4] == [
        "Anomaly aggregated",
        "Anomaly level 0 (64 px)",
        "Anomaly level 1 (32 px)",
        "Anomaly level 2 (16 px)",
    ]
    data, header = nrrd.read(str(segmentation))
    assert header["space"] == "left-posterior-superior"
    assert np.allclose(header["space origin"], reference.GetOrigin(), atol=1e-3)
    before = segmentation.read_bytes()
    with pytest.raises(SSAEError, match="already exists"):
        logic.export_segmentation(segmentation)
    assert segmentation.read_bytes() == before
    with pytest.raises(SSAEError):
        logic.export_labelmap(tmp_path / "mask.png")


def test_existing_nodes_are_kept_unless_replacing_is_asked(oblique_scene):
    scene, _, logic, _ = oblique_scene
    logic.detect()
    first = logic.parameters.result_volume("aggregated")
    first_values = np.array(first.GetImageData().GetPointData().GetScalars())
    logic.detect()
    second = logic.parameters.result_volume("aggregated")
    assert second.GetID() != first.GetID() and second.GetName() != first.GetName()
    assert scene.GetNodeByID(first.GetID()) is first
    assert np.array_equal(np.array(first.GetImageData().GetPointData().GetScalars()), first_values)
    logic.detect(replace_previous=True)
    assert scene.GetNodeByID(second.GetID()) is None and scene.GetNodeByID(first.GetID()) is first


def test_bad_inputs_are_clear_errors(oblique_scene, tmp_path):
    scene, _, logic, volume = oblique_scene
    params = logic.parameters
    params.input_volume = None
    with pytest.raises(SSAEError, match="select an input"):
        logic.detect()
    flat = _add_volume(scene, sitk.GetImageFromArray(np.random.default_rng(0).random((1, 40, 40)).astype(np.float32)), "slice")
    params.input_volume = flat
    with pytest.raises(SSAEError, match="2D"):
        logic.detect()
    params.input_volume = volume
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(b"\x00" * 64)
    params.model_path = str(foreign)
    with pytest.raises(SSAEError, match="not an SSAE model"):
        logic.detect()
    with pytest.raises(SSAEError, match="run the detection first"):
        logic.apply_threshold(0.1)


def test_module_state_survives_saving_and_reloading_the_scene(oblique_scene, tmp_path):
    scene, _, logic, volume = oblique_scene
    logic.detect()
    params = logic.parameters
    params.set_threshold_of("aggregated", 0.321)
    params.min_lesion_mm3 = 25.0
    params.score_map = "level0"
    scene.SetRootDirectory(str(tmp_path))
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    reloaded, _ = headless_scene()
    reloaded.SetURL(str(tmp_path / "scene.mrml"))
    assert reloaded.Connect()
    restored = AnomalyParameters.of_scene(reloaded)
    assert restored.model_path == params.model_path and restored.device == "cpu"
    assert restored.threshold_of("aggregated") == pytest.approx(0.321)
    assert restored.min_lesion_mm3 == 25.0 and restored.score_map == "level0"
    assert restored.input_volume.GetName() == volume.GetName()
    assert restored.result_maps() == params.result_maps()
    assert restored.segmentation is not None and restored.statistics_table is not None


def test_background_detection_process_gives_the_same_results(oblique_scene):
    _, _, logic, _ = oblique_scene
    in_process = logic.detect()
    job = logic.start_detection()
    assert wait_for(job.command, timeout_s=300) == 0, "\n".join(job.command.new_lines())
    events = job.command.new_events()
    assert any(e["event"] == "progress" for e in events) and events[-1]["event"] == "done"
    background = logic.load_detection(job)
    assert not job.workdir.exists()
    assert background.statistics.count == in_process.statistics.count
    assert background.statistics.total_ml == pytest.approx(in_process.statistics.total_ml, rel=1e-5)


def test_background_detections_share_one_worker_that_starts_once(oblique_scene):
    """The second detection of a session runs in the worker the first one started (PyTorch,
    the atlas and the model stay loaded); its results are the same."""
    _, _, logic, _ = oblique_scene
    first = logic.start_detection()
    assert wait_for(first.command, timeout_s=300) == 0, "\n".join(first.command.new_lines())
    pid = logic.worker.process.pid
    first_lesions = logic.load_detection(first)
    second = logic.start_detection()
    assert wait_for(second.command, timeout_s=300) == 0, "\n".join(second.command.new_lines())
    assert logic.worker.process.pid == pid and logic.worker.starts == 1
    second_lesions = logic.load_detection(second, replace_previous=True)
    assert second_lesions.statistics.count == first_lesions.statistics.count
    assert second_lesions.statistics.total_ml == pytest.approx(first_lesions.statistics.total_ml)


def test_a_second_job_is_refused_while_the_worker_is_busy(oblique_scene):
    _, _, logic, _ = oblique_scene
    job = logic.start_detection()
    try:
        before = set(Path(tempfile.gettempdir()).glob("ssae-detect-*"))
        with pytest.raises(SSAEError, match="busy"):
            logic.start_detection()
        assert set(Path(tempfile.gettempdir()).glob("ssae-detect-*")) == before  # the refused job left nothing behind
    finally:
        wait_for(job.command, timeout_s=300)
        job.cleanup()


def test_what_the_user_sees_in_the_axial_view(tiny_model, tmp_path):
    """Slicer's own slice logic and segmentation displayable manager draw the result:
    the detected lesion is coloured, the background outside the head stays black."""
    scene, app_logic = headless_scene()
    renderer = SliceViewRenderer(scene, app_logic, 400, 400)
    image = sitk.ReadImage(str(SAMPLES / "patient19" / "flair.nii.gz"))
    volume = _add_volume(scene, image, "patient19")
    logic = AnomalyLogic(scene)
    params = logic.parameters
    params.input_volume, params.model_path, params.device = volume, str(tiny_model), "cpu"
    params.adapt = "off"
    logic.detect()
    params.score_map = "aggregated"
    score_node = params.result_volume("aggregated")
    scores = array_from_volume_node(score_node)
    rows = logic.apply_threshold(float(np.percentile(scores[scores > 0], 99)))  # the top 1 % of the brain's scores
    show_in_slice_views(scene, volume, score_node)  # what choosing the map in the panel shows
    assert rows.statistics.count > 0
    k, j, i = np.unravel_index(np.argmax(array_from_volume_node(score_node)), array_from_volume_node(score_node).shape)
    ras = _ijk_to_ras(score_node) @ np.array([i, j, k, 1.0])  # the most anomalous voxel
    picture = renderer.render(offset_mm=ras[2])
    renderer.save_png(tmp_path / "view.png", offset_mm=ras[2])
    assert (tmp_path / "view.png").stat().st_size > 1000
    row, col = renderer.pixel_of(tuple(ras[:3]))
    patch = picture[max(row - 2, 0) : row + 3, max(col - 2, 0) : col + 3].reshape(-1, 3).astype(int)
    saturation = patch.max(axis=1) - patch.min(axis=1)
    assert saturation.max() > 60, patch  # coloured: overlay/segment, not grey anatomy
    corner = picture[:10, :10].reshape(-1, 3)
    assert corner.max() < 10  # outside the head: black
    grey = picture[picture.shape[0] // 2, :, :].astype(int)
    assert (np.abs(grey[:, 0] - grey[:, 1]) < 3).mean() > 0.5  # most of the slice is grey anatomy


def test_a_background_run_keeps_its_own_inputs_when_the_panel_changes(oblique_scene, tiny_model, tmp_path):
    """Patient A's maps never end up named after patient B, nor thresholded with model B's threshold."""
    scene, _, logic, volume = oblique_scene
    params = logic.parameters
    job = logic.start_detection()
    other = _add_volume(scene, image_from_volume_node(volume), "OTHER PATIENT")
    from safetensors import safe_open

    with safe_open(str(tiny_model), framework="pt") as handle:  # a second, valid model with other thresholds
        metadata, state = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    card = json.loads(metadata["ssae_model_card"])
    expected = card_mask_rule(card, "prior", adapted=False).threshold  # model A's threshold at its default operating point
    card["thresholds"] = {name: value * 10 for name, value in card["thresholds"].items()}
    for tails in card["healthy_tails"].values():
        for tail in tails.values():
            tail["scores"] = [value * 10 + 1 for value in tail["scores"]]
    text = json.dumps(card)
    metadata.update(ssae_model_card=text, ssae_card_sha256=hashlib.sha256(text.encode()).hexdigest())
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "other.safetensors"), metadata=metadata)
    with params.batch():
        params.input_volume, params.model_path = other, str(tmp_path / "other.safetensors")
    assert wait_for(job.command, timeout_s=300) == 0, "\n".join(job.command.new_lines())
    lesions = logic.load_detection(job)
    for name in params.result_maps():
        node = params.result_volume(name)
        assert node.GetName().startswith("FLAIR anomaly") and node.GetAttribute("SSAE.input") == volume.GetID()
    assert params.segmentation.GetName().startswith("FLAIR") and params.statistics_table.GetName().startswith("FLAIR")
    assert params.threshold_of("prior") == pytest.approx(expected)  # model A's, not model B's
    assert card_mask_rule(card, "prior", adapted=False).threshold != pytest.approx(expected)
    assert lesions.statistics.count >= 0


def test_a_results_load_refreshes_the_panel_at_most_twice(oblique_scene):
    _, _, logic, _ = oblique_scene
    job = logic.start_detection()
    assert wait_for(job.command, timeout_s=300) == 0
    refreshes = []
    node = logic.parameters.node
    tag = node.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: refreshes.append(event))
    try:
        logic.load_detection(job)
    finally:
        node.RemoveObserver(tag)
    assert 1 <= len(refreshes) <= 2, len(refreshes)
    params = logic.parameters
    for name in params.result_maps():  # whatever order the observer replays: every map has its threshold
        assert params.threshold_of(name) >= 0


def test_results_sit_under_the_input_in_the_subject_hierarchy_and_replace_removes_the_transform(small_cases, tiny_model, tmp_path):
    import slicer

    scene, _ = headless_scene()
    volume = _add_volume(scene, sitk.ReadImage(str(small_cases / "patient07" / "flair.nii.gz")), "patient07")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 7"), "Study 1")
    hierarchy.CreateItem(study, volume)
    logic = AnomalyLogic(scene)
    params = logic.parameters
    params.input_volume, params.model_path, params.device, params.adapt = volume, str(tiny_model), "cpu", "off"
    logic.detect()
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(params.result_volume("prior")))
    assert hierarchy.GetItemParent(folder) == study and "SSAE results" in hierarchy.GetItemName(folder)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(params.segmentation)) == folder
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "atlas to scan")
    params.atlas_transform = transform
    logic.detect(replace_previous=True)
    assert scene.GetNodeByID(transform.GetID()) is None  # "replace" takes the transform too


def test_batch_over_loaded_volumes_gives_each_its_results_and_a_cohort_table(small_cases, tiny_model, tmp_path):
    scene, _ = headless_scene()
    volumes = [_add_volume(scene, sitk.ReadImage(str(small_cases / p / "flair.nii.gz")), p) for p in ("patient07", "patient19")]
    logic = AnomalyLogic(scene)
    params = logic.parameters
    params.model_path, params.device, params.adapt = str(tiny_model), "cpu", "off"
    job = logic.start_batch_detection(volumes=volumes)
    assert wait_for(job.command, timeout_s=300) == 0, "\n".join(job.command.new_lines())
    events = job.command.new_events()
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] > 0.9  # one overall progress
    rows = logic.load_batch(job)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    table = params.cohort_table.GetTable()
    assert table.GetNumberOfRows() == 2 and table.GetValueByName(1, "volume").ToString() == "patient19"
    for volume in volumes:
        named = [scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())]
        assert any(n.startswith(f"{volume.GetName()} anomaly with hyper-intensity prior") for n in named)
    assert not job.workdir.exists()


def test_batch_over_a_folder_writes_the_cohort_csv_and_keeps_going_past_a_bad_scan(small_cases, tiny_model, tmp_path):
    import shutil as sh

    folder = tmp_path / "scans"
    sh.copytree(small_cases, folder)
    (folder / "broken").mkdir()
    (folder / "broken" / "flair.nii.gz").write_bytes(b"not a scan")
    scene, _ = headless_scene()
    logic = AnomalyLogic(scene)
    params = logic.parameters
    params.model_path, params.device, params.adapt = str(tiny_model), "cpu", "off"
    job = logic.start_batch_detection(folder=folder, output_folder=tmp_path / "results")
    assert wait_for(job.command, timeout_s=300) == 1  # some scans failed: said by the exit code, not hidden
    rows = logic.load_batch(job)
    by_case = {r["case"]: r for r in rows}
    assert by_case["broken"]["status"] == "error" and "cannot read" in by_case["broken"]["error"]
    assert by_case["patient19"]["status"] == "ok" and float(by_case["patient19"]["total_volume_ml"]) >= 0
    assert (tmp_path / "results" / "cohort.csv").exists() and (tmp_path / "results" / "patient19").is_dir()


def test_the_lesion_table_exports_to_csv_like_the_command_line(oblique_scene, tmp_path):
    _, _, logic, _ = oblique_scene
    lesions = logic.detect()
    path = logic.export_lesion_table(tmp_path / "lesions.csv")
    assert path.read_text(encoding="utf-8") == lesions.to_csv()
    with pytest.raises(SSAEError, match="already exists"):
        logic.export_lesion_table(path)


def test_cancel_returns_at_once_and_the_process_stops_through_its_stop_file(oblique_scene):
    _, _, logic, _ = oblique_scene
    logic.parameters.adapt = "on"  # long enough to be cancelled mid-way
    job = logic.start_detection()
    deadline = time.monotonic() + 60
    while not job.command.new_events() and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.perf_counter()
    job.command.request_cancel()
    assert time.perf_counter() - started < 0.1  # the GUI thread never waits
    code = wait_for(job.command, timeout_s=60)
    assert code == 130 and not job.command.killed  # it stopped itself, no kill needed
    assert not list((job.workdir / "out").glob("input_*")) if (job.workdir / "out").exists() else True
    job.cleanup()


class _OwnershipSpy:
    """Keeps a reference to every oriented image and node collection that Slicer's API hands to
    the module, so that what the module still holds after it is done shows in reference counts."""

    def __init__(self, monkeypatch) -> None:
        import slicer

        self.images: list = []
        self.collections: list = []
        real = slicer.vtkSlicerSegmentationsModuleLogic
        spy = self

        class _Logic:
            def __getattr__(self, name):
                return getattr(real, name)

            @staticmethod
            def CreateOrientedImageDataFromVolumeNode(*args):
                image = real.CreateOrientedImageDataFromVolumeNode(*args)
                spy.images.append(image)
                return image

        monkeypatch.setattr(slicer, "vtkSlicerSegmentationsModuleLogic", _Logic())

    def scene(self, scene):
        """``scene`` with ``GetNodesByClass`` watched."""
        spy = self

        class _Scene:
            def __getattr__(self, name):
                return getattr(scene, name)

            def GetNodesByClass(self, class_name):
                collection = scene.GetNodesByClass(class_name)
                spy.collections.append(collection)
                return collection

        return _Scene()


def test_mask_updates_and_view_changes_release_what_vtk_hands_over(oblique_scene, monkeypatch):
    """``CreateOrientedImageDataFromVolumeNode`` and ``GetNodesByClass`` hand their caller a
    reference to release; once the module is done, the spy's own reference is the only one left."""
    scene, _, logic, volume = oblique_scene
    logic.detect()
    spy = _OwnershipSpy(monkeypatch)
    params = logic.parameters
    for factor in (0.5, 0.8, 1.2):
        logic.apply_threshold(params.threshold_of("aggregated") * factor, "aggregated")
    logic.apply_operating_point("sensitive")
    show_in_slice_views(spy.scene(scene), volume, params.result_volume("prior"))
    assert len(spy.images) == 4 and len(spy.collections) == 1
    assert [image.GetReferenceCount() for image in spy.images] == [1] * 4
    assert spy.collections[0].GetReferenceCount() == 1


def _read_mrb(path: Path):
    """A new scene (as a second Slicer session would have) read from a .mrb, with its
    application logic (which must live as long as the scene)."""
    import slicer

    scene, app_logic = headless_scene()
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(tempfile.mkdtemp())
    io = slicer.vtkDataIOManager()
    io.SetCacheManager(cache)
    scene.SetDataIOManager(io)
    scene.SetCacheManager(cache)
    assert scene.ReadFromMRB(str(path))
    return scene, app_logic


def _folders(scene, name_part: str) -> list[int]:
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    items = vtk.vtkIdList()
    hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), items, True)
    found = [items.GetId(i) for i in range(items.GetNumberOfIds())]
    return [item for item in found if name_part in hierarchy.GetItemName(item) and hierarchy.GetItemDataNode(item) is None]


def test_a_saved_scene_reloaded_and_detected_again_replaces_only_its_results(oblique_scene, tmp_path):
    """Subject-hierarchy item IDs are handed out anew when a scene is read (and restart at 1 in a
    new Slicer process): results are found by their nodes, so "replace" removes the reloaded
    results, their display and storage nodes and their folder, and nothing of the user's,
    whatever number an item now has."""
    import slicer

    scene, _, logic, volume = oblique_scene
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient"), "Study")
    hierarchy.CreateItem(study, volume)
    mine = _add_volume(scene, image_from_volume_node(volume), "my own edit")
    hierarchy.CreateItem(study, mine)
    logic.detect()
    assert len(_folders(scene, "SSAE results")) == 1
    assert scene.WriteToMRB(str(tmp_path / "session.mrb"))

    reloaded, _app_logic = _read_mrb(tmp_path / "session.mrb")
    assert not orphaned_helpers(reloaded)
    again = AnomalyLogic(reloaded)
    params = again.parameters
    old_results = [params.segmentation, params.statistics_table, params.small_lesions, *map(params.result_volume, params.result_maps())]
    old_helpers = [n.GetNthDisplayNode(i) for n in old_results if n.IsA("vtkMRMLDisplayableNode") for i in range(n.GetNumberOfDisplayNodes())]
    old_helpers += [n.GetNthStorageNode(i) for n in old_results for i in range(n.GetNumberOfStorageNodes())]
    others = [n for n in map(reloaded.GetNthNode, range(reloaded.GetNumberOfNodes())) if n not in old_results + old_helpers]
    reloaded_hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(reloaded)
    mine_item = reloaded_hierarchy.GetItemByDataNode(reloaded.GetFirstNodeByName("my own edit"))
    params.node.SetParameter("resultsFolderItem", str(mine_item))  # what an ID stored by an older version may name now
    params.device, params.adapt = "cpu", "off"
    again.detect(replace_previous=True)
    assert not [n.GetName() for n in old_results + old_helpers if reloaded.IsNodePresent(n)], "old results stayed behind"
    assert not orphaned_helpers(reloaded)
    assert not [f"{n.GetClassName()} {n.GetName()}" for n in others if not reloaded.IsNodePresent(n)], "a node that was not a result is gone"
    mine_again = reloaded.GetFirstNodeByName("my own edit")
    assert mine_again is not None and reloaded_hierarchy.GetItemByDataNode(mine_again)
    assert len(_folders(reloaded, "SSAE results")) == 1, "the reloaded results' folder stayed behind"
