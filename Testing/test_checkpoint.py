"""Model files: round trip, and refusal of anything that is not an intact SSAE model."""

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ssae.io.errors import SSAEError
from ssae.io.model_file import CARD_KEY, CHECKSUM_KEY, LATER_SECTIONS
from ssae.models.card import Calibration, ModelCard
from ssae.models.checkpoint import load_model, read_model_card, save_model
from ssae.models.networks import build_model
from ssae.models.settings import Architecture
from ssae.preprocessing.slices import PreprocessingSettings
from ssae.scoring.score_maps import PostprocessingSettings


def _card(arch: Architecture) -> ModelCard:
    return ModelCard(
        architecture=arch,
        preprocessing=PreprocessingSettings(size=arch.size),
        postprocessing=PostprocessingSettings(),
        aggregated_levels=[0, 1],
        thresholds={"aggregated": 0.123, "prior": 0.2},
        calibration=Calibration("test threshold", 99.9, 1000),
        score_map="prior",
        training={"seed": 7},
    )


@pytest.fixture()
def saved(tmp_path) -> tuple[Path, torch.nn.Module]:
    arch = Architecture("dense", size=64, levels=3, base_filters=8, max_filters=16, latent_dim=8)
    torch.manual_seed(1)
    model = build_model(arch)
    path = save_model(model, _card(arch), tmp_path / "model.safetensors")
    return path, model


def test_round_trip_keeps_weights_and_card(saved):
    path, model = saved
    loaded = load_model(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.card.threshold_for("aggregated") == 0.123 and loaded.card.score_map == "prior"
    assert loaded.card.training["seed"] == 7
    card = read_model_card(path)
    assert card["architecture"]["levels"] == 3 and card["parameters"] > 0
    assert len(card["layers"]) == 3 and "versions" in card


def test_existing_file_is_not_overwritten(saved):
    path, model = saved
    before = path.read_bytes()
    with pytest.raises(SSAEError, match="already exists"):
        save_model(model, _card(Architecture("dense", size=64, levels=3, base_filters=8, max_filters=16, latent_dim=8)), path)
    assert path.read_bytes() == before


def test_a_modified_weight_byte_is_detected_with_and_without_torch(saved, capsys):
    from ssae.app.cli import main
    from ssae.io.model_file import verify_weights

    path, _ = saved
    verify_weights(path, read_model_card(path))  # the torch-free digest agrees with the saved one
    assert main(["info", str(path)]) == 0
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # a weight byte near the end of the file
    path.write_bytes(bytes(data))
    with pytest.raises(SSAEError, match="checksum"):
        load_model(path)
    with pytest.raises(SSAEError, match="checksum"):
        verify_weights(path, read_model_card(path))
    capsys.readouterr()
    assert main(["info", str(path)]) == 2  # ssae info verifies the weights too
    assert "weights do not match" in capsys.readouterr().err


def test_truncated_file_is_refused(saved):
    path, _ = saved
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SSAEError, match="truncated|corrupt"):
        load_model(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"producer": "someone else"})
    with pytest.raises(SSAEError, match="not an SSAE model"):
        load_model(path)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "code-was-executed"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Exploit(marker)}))
    with pytest.raises(SSAEError):
        load_model(path)
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(saved, tmp_path):
    path, _ = saved
    card = read_model_card(path)
    card["architecture"]["latent_dim"] = 32  # card now disagrees with the weights
    other = build_model(Architecture("dense", size=64, levels=3, base_filters=8, max_filters=16, latent_dim=8))
    state = {k: v.contiguous() for k, v in other.state_dict().items()}
    from ssae.models.checkpoint import weights_digest

    card["weights_sha256"] = weights_digest(state)
    forged = tmp_path / "forged.safetensors"
    text = json.dumps(card)  # a careful forger recomputes both checksums
    save_file(state, str(forged), metadata={CARD_KEY: text, CHECKSUM_KEY: hashlib.sha256(text.encode()).hexdigest()})
    with pytest.raises(SSAEError, match="do not fit the architecture"):
        load_model(forged)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SSAEError, match="not found"):
        load_model(tmp_path / "nope.safetensors")


def _rewrite_card(path: Path, edit, keep_checksum: bool = True) -> None:
    """Change the card inside a model file (weights untouched), keeping its stored checksum."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    card = json.loads(metadata[CARD_KEY])
    edit(card)
    metadata[CARD_KEY] = json.dumps(card)
    if not keep_checksum:
        del metadata[CHECKSUM_KEY]
    save_file(state, str(path), metadata=metadata)


def test_an_edited_card_is_refused_by_its_checksum_and_by_info(saved, capsys):
    from ssae.app.cli import main

    path, _ = saved
    _rewrite_card(path, lambda card: card["thresholds"].update(aggregated=0.001))
    with pytest.raises(SSAEError, match="model card does not match its checksum"):
        load_model(path)
    assert main(["info", str(path)]) == 2
    assert "checksum" in capsys.readouterr().err


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, "0.5"])
def test_a_threshold_that_is_not_a_finite_non_negative_number_is_refused(saved, value):
    path, _ = saved

    def to_format_1(card):  # format 1 files carry no card checksum: their values are all the protection
        card["format_version"] = 1
        card["threshold"] = {"value": value, "method": "edited"}
        card["level_thresholds"] = {}
        for name in LATER_SECTIONS:
            card.pop(name, None)

    _rewrite_card(path, to_format_1, keep_checksum=False)
    with pytest.raises(SSAEError, match="threshold|malformed|corrupt"):
        read_model_card(path)


@pytest.mark.parametrize("checksum", ["kept", "removed"])
def test_a_card_relabelled_as_format_1_is_refused_whatever_its_checksum(saved, capsys, checksum):
    """Format 1 had no checksum: relabelling a later card must not be a way around it."""
    from ssae.app.cli import main

    path, _ = saved

    def relabel(card):
        card["format_version"] = 1
        card["threshold"] = {"value": 0.5, "method": "edited"}

    _rewrite_card(path, relabel, keep_checksum=checksum == "kept")
    with pytest.raises(SSAEError, match="checksum" if checksum == "kept" else "later format"):
        read_model_card(path)
    assert main(["info", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_folder_given_as_the_model_is_named_as_such(tmp_path):
    with pytest.raises(SSAEError, match="is a folder"):
        load_model(tmp_path)
