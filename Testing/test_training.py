"""Stage-wise training: Eq. 3 wiring, frozen coarser levels, subject split, resume, DDP."""

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ssae.io.cases import find_cases
from ssae.io.errors import SSAEError, TrainingInterrupted
from ssae.io.progress import ProgressLog
from ssae.models.checkpoint import load_model, read_model_card
from ssae.models.networks import build_model
from ssae.preprocessing.pyramid import decompose, upsample
from ssae.training.config import split_subjects
from ssae.training.trainer import Trainer


def test_level_loss_is_eq3_and_only_the_training_level_gets_gradients(tiny_config, small_cases, tmp_path):
    trainer = Trainer(find_cases(small_cases), tiny_config, tmp_path / "m.safetensors", device="cpu")
    model = build_model(tiny_config.architecture)
    level = 1
    for k, net in enumerate(model.nets):
        net.requires_grad_(k == level)
    x = torch.rand(4, 1, 64, 64)
    keep = torch.ones_like(x)
    loss, _ = trainer._level_loss(model, model.nets[level], level, x, keep)
    pyramid = decompose(x, 3)
    with torch.no_grad():
        coarse = model.nets[2](pyramid.lowpass[2])[0]
        expected = F.mse_loss(upsample(coarse) + model.nets[1](pyramid.bands[1])[0], pyramid.lowpass[1])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.nets[1].parameters())
    assert all(p.grad is None for k in (0, 2) for p in model.nets[k].parameters())


def test_the_loss_from_a_kept_pyramid_and_coarser_reconstruction_is_the_same_loss(tiny_config):
    """Scanner adaptation decomposes the scan once and computes each level's u(Î_{k+1}) once;
    the loss it then optimises must be Eq. 3 exactly as training computes it, for any rows."""
    from ssae.detection.adaptation import _coarser_reconstruction, _rows
    from ssae.models.losses import level_loss, pyramid_level_loss

    model = build_model(tiny_config.architecture).eval()
    x = torch.rand(6, 1, 64, 64)
    keep = (torch.rand_like(x) > 0.2).float()
    pyramid = decompose(x, 3)
    rows = torch.tensor([4, 1, 3])
    for level in (2, 1, 0):
        coarser = _coarser_reconstruction(model, level, pyramid, batch_size=4)
        kept, _ = pyramid_level_loss(model, level, _rows(pyramid, rows), None if coarser is None else coarser[rows], keep[rows])
        direct, _ = level_loss(model, level, x[rows], keep[rows])
        assert kept.item() == pytest.approx(direct.item(), rel=1e-5)


def test_lesion_voxels_are_left_out_of_the_loss(tiny_config, small_cases, tmp_path):
    trainer = Trainer(find_cases(small_cases), tiny_config, tmp_path / "m.safetensors", device="cpu")
    model = build_model(tiny_config.architecture)
    x = torch.rand(2, 1, 64, 64)
    keep = torch.ones_like(x)
    keep[:, :, 10:20, 10:20] = 0
    spoiled = x.clone()
    spoiled[:, :, 10:20, 10:20] = 50.0  # a huge "lesion" where the loss does not look
    a, _ = trainer._level_loss(model, model.nets[0], 0, x, keep)
    b, _ = trainer._level_loss(model, model.nets[0], 0, spoiled, keep)
    c, _ = trainer._level_loss(model, model.nets[0], 0, spoiled, torch.ones_like(x))
    assert b.item() < 10 * a.item() < c.item()


def test_validation_holds_out_whole_subjects():
    train_names, val_names = split_subjects([f"s{i}" for i in range(10)], 0.2, seed=3)
    assert len(val_names) == 2 and len(train_names) == 8
    assert not set(train_names) & set(val_names)
    assert split_subjects([f"s{i}" for i in range(10)], 0.2, seed=3) == (train_names, val_names)
    with pytest.raises(SSAEError, match="at least 2 subjects"):
        split_subjects(["only"], 0.2, seed=0)


class _StopAfterLevel(ProgressLog):
    """Sends SIGINT to this process when a given level finishes, like Ctrl-C or a GUI Cancel."""

    def __init__(self, level: int):
        super().__init__(enabled=True)
        self.level = level

    def event(self, kind, **fields):
        if kind == "level_done" and fields["level"] == self.level:
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_training_resumes_with_coarser_levels_frozen(tiny_config, small_cases, tmp_path):
    config = replace(tiny_config, max_epochs=2, patience=2)
    cases = find_cases(small_cases)
    out = tmp_path / "model.safetensors"
    with pytest.raises(TrainingInterrupted, match="--resume"):
        Trainer(cases, config, out, device="cpu", cache_dir=tmp_path, progress=_StopAfterLevel(2)).run()
    resume_file = tmp_path / "model.safetensors.resume.pt"
    assert resume_file.exists() and not out.exists()
    snapshot = torch.load(resume_file, weights_only=True)
    assert snapshot["level_state"]["level"] == 1
    with pytest.raises(SSAEError, match="--resume"):  # a fresh run must not clobber the saved state
        Trainer(cases, config, out, device="cpu", cache_dir=tmp_path)
    Trainer(cases, config, out, device="cpu", cache_dir=tmp_path, resume=True).run()
    assert out.exists() and not resume_file.exists()
    final = load_model(out).model.state_dict()
    level2 = {k: v for k, v in snapshot["model"].items() if k.startswith("nets.2.")}
    assert level2 and all(torch.equal(final[k], v) for k, v in level2.items())  # frozen while 1 and 0 trained
    assert any(not torch.equal(final[k], snapshot["model"][k]) for k in final if k.startswith("nets.1."))
    history = read_model_card(out)["training"]["history"]
    assert [h["level"] for h in history] == [2, 2, 1, 1, 0, 0]


def test_model_card_records_training_and_a_label_free_threshold(tiny_model):
    card = read_model_card(tiny_model)
    assert set(card["thresholds"]) == {"aggregated", "level0", "level1", "level2", "prior", "fused", "flair"}
    assert all(value >= 0 for value in card["thresholds"].values()) and card["thresholds"]["aggregated"] > 0
    assert "no lesion labels used" in card["calibration"]["method"]
    adapted = card["adaptation"]["thresholds"]
    assert set(adapted) == set(card["thresholds"]) and card["adaptation"]["enabled"]
    assert adapted["flair"] == pytest.approx(card["thresholds"]["flair"])  # the FLAIR reference does not depend on the model
    assert any(adapted[m] != card["thresholds"][m] for m in ("aggregated", "level0", "level1", "level2"))  # calibrated anew
    assert card["score_map"] == "prior" and card["selection"]["report"] == "report/quality.md"
    training = card["training"]
    assert training["seed"] == 0 and set(training["epochs_per_level"]) == {"level0", "level1", "level2"}
    assert training["data"]["lesion_voxels_excluded_from_loss"] > 0
    assert set(training["data"]["train_subjects"]).isdisjoint(training["data"]["val_subjects"])
    assert set(card["fidelity"]["l1_per_level"]) == {"level0", "level1", "level2"}


def test_calibration_measures_on_the_subjects_own_grid_and_in_lesions(tiny_model, small_cases):
    """The healthy tails are of the maps on the validation subject's own grid, and what the card
    says each operating point draws on a healthy brain is what the engine draws there."""
    from ssae.detection.detector import Detector, small_lesion_evidence
    from ssae.io.cases import find_cases
    from ssae.scoring.mask_drawing import draw_lesions
    from ssae.scoring.score_maps import input_grid_maps
    from ssae.training.calibration import false_lesions_per_brain, HealthySubject
    from ssae.training.slice_cache import healthy_scans

    card = read_model_card(tiny_model)
    assert card["format_version"] == 4 and card["healthy_tails_grid"] == "input"
    assert "on their own grids" in card["calibration"]["method"]
    section = card["operating_points"]
    assert set(section["healthy_false_lesions"]) == set(section["points"]) == set(section["small_lesion_fallback"])
    assert card["healthy_candidates"]["subjects"] == len(card["training"]["data"]["val_subjects"])
    detector = Detector.from_file(tiny_model, "cpu")
    validation = [c for c in find_cases(small_cases) if c.name in card["training"]["data"]["val_subjects"]]
    (scan,) = list(healthy_scans(validation, detector.card.preprocessing, small_cases.parent / "calibration-cache", lambda m: None))
    adapted, _ = detector.adapted_to(scan.prepared.slices, scan.prepared.brain, detector.default_adaptation())
    residuals = adapted.slice_residuals(scan.prepared.slices)
    maps, intensities = input_grid_maps(adapted.grid_score_maps(scan.prepared, residuals), scan.prepared, detector.card.postprocessing)
    assert maps["prior"].GetSize() == scan.prepared.input_reference.GetSize()  # the subject's own grid
    counted = intensities.inside & ~scan.labelled
    tail = detector.card.healthy_tails["adapted"]["prior"]
    assert tail.voxels == int(counted.sum())  # every counted voxel of the one validation subject, and nothing else
    subject = HealthySubject(maps["prior"], small_lesion_evidence(intensities), scan.labelled)
    for name, recorded in section["healthy_false_lesions"].items():
        assert false_lesions_per_brain(detector.card, name, True, [subject]) == pytest.approx(recorded, abs=0.01)
        rule = detector.card.mask_rule("prior", True, name)
        labels, _ = draw_lesions(maps["prior"], rule, subject.evidence)
        assert int(sitk.GetArrayViewFromImage(labels).max()) >= recorded  # false lesions are among the lesions drawn


def test_torchrun_ddp_on_two_processes(small_cases, tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "ddp.safetensors"
    log = tmp_path / "progress.jsonl"
    command = [
        torchrun,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ssae",
        "train",
        str(small_cases),
        "-o",
        str(out),
        "--size",
        "64",
        "--levels",
        "2",
        "--base-filters",
        "8",
        "--max-filters",
        "16",
        "--latent-dim",
        "16",
        "--epochs",
        "1",
        "--no-atlas",
        "--no-bias-correction",
        "--adapt-epochs",
        "1",
        "--val-fraction",
        "0.5",
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--progress-log",
        str(log),
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    card = read_model_card(out)
    assert card["training"]["world_size"] == 2
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2  # only rank 0 writes
