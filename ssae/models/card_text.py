"""The model card in words, for people: ``ssae info`` and the Slicer module's model panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssae.io.model_file import adapted_thresholds, calibration_method, card_thresholds
from ssae.scoring.operating_points import SLICE_GRID_TAILS, card_mask_rule, operating_points_from_card


def describe_card(card: dict[str, Any]) -> str:
    """The model card for people (``ssae info``, the Slicer module's model panel)."""
    training = card.get("training", {})
    data = training.get("data", {})
    pre, post = card["preprocessing"], card["postprocessing"]
    format_1 = card.get("format_version") == 1
    clip = pre.get("clip_max", 1.0)
    factor = post.get("prior_factor") if not format_1 else None
    prior = (
        f"brighter than {factor:g} x the scan's median brain intensity"
        if factor is not None
        else f"brighter than the {post.get('prior_percentile', 90):g}th percentile of the scan's brain"
    )
    adaptation = card.get("adaptation")
    if not adaptation:
        adapt_line = "scanner adaptation: no calibrated settings (format 1 model)"
    else:
        a = adaptation["settings"]
        adapt_line = (
            f"scanner adaptation: {'on' if adaptation['enabled'] else 'off'} by default; {a['epochs']} epochs per level, learning rate "
            f"{a['learning_rate']:g}, brain voxels above the scan's {a['exclude_percentile']:g}th intensity percentile left out"
        )
    calibration = calibration_method(card)
    dataset = data.get("dataset") or Path(str(data.get("source", "?"))).name
    lines = [
        f"{card['name']}  ({card['parameters']:,} parameters, {card.get('modality', 'FLAIR')}, model format {card['format_version']})",
        card.get("description") or "",
        f"trained on: {dataset} ({data.get('subjects', '?')} subjects, {data.get('train_slices', '?')} training / "
        f"{data.get('val_slices', '?')} validation slices)",
        f"input: {pre['size']} px, {card['architecture']['levels']} level(s), {'MNI152 atlas grid' if pre.get('atlas') else 'native slices'}"
        f"{', N4 bias correction' if pre.get('bias_correction') else ''}, {pre['percentile']:g}th-percentile normalisation, "
        f"{'no upper clip' if clip is None else f'clipped at {clip:g}'}",
        f"mask drawn by: the {card.get('score_map', 'aggregated')} map (aggregated levels {card['aggregated_levels']})",
        f"hyper-intensity prior: {prior}" + ("" if format_1 else f"; fused map: aggregated x FLAIR^{post['fusion_exponent']:g}"),
        f"median filter {post['median_size']} ({post.get('median_per_level', 'same')} at coarser levels), brain erosion "
        f"{post['brain_erosion']} px, lesions >= {post['min_lesion_mm3']:g} mm3",
        adapt_line,
        f"thresholds ({calibration}):",
        "  as trained: " + ", ".join(f"{name} {value:.4g}" for name, value in card_thresholds(card).items()),
        "  adapted:    " + (", ".join(f"{name} {value:.4g}" for name, value in adapted_thresholds(card).items()) or "-"),
        *_operating_point_lines(card),
    ]
    selection = card.get("selection") or {}
    if selection:
        lines.append(f"defaults chosen by: {selection.get('chosen_by', '?')} ({selection.get('report', '')})")
    if "site_adaptation" in training:
        site = training["site_adaptation"]
        lines.append(f"site-adapted to: {site['data']['dataset']} ({site['data']['scans']} scans) on {site.get('date', '?')}")
    lines += [
        f"epochs per level: {training.get('epochs_per_level')}; best validation loss: {training.get('best_val_loss_per_level')}",
        f"validation l1 per level: {card.get('fidelity', {}).get('l1_per_level')}",
        f"seed {training.get('seed')}, device {training.get('device')}, {training.get('duration_s')} s; versions {card.get('versions')}",
        "layers:",
        *("  " + line for line in card.get("layers", [])),
    ]
    return "\n".join(line for line in lines if line)


def _operating_point_lines(card: dict[str, Any]) -> list[str]:
    points, default = operating_points_from_card(card)
    if not points:
        return ["operating points: none (calibrated before them: `ssae calibrate` adds them)"]
    adapted = bool((card.get("adaptation") or {}).get("enabled"))
    score_map = card.get("score_map", "aggregated")
    lines = [f"operating points ({'adapted' if adapted else 'as trained'}, {score_map} map; default {default}):"]
    brain_ml = next(iter((card.get("healthy_tails") or {}).get("adapted" if adapted else "trained", {}).values()), {}).get("brain_ml")
    for name, point in points.items():
        rule = card_mask_rule(card, score_map, adapted, name)
        meaning = rule.healthy_meaning(brain_ml)
        fallback = f"; small-lesion fallback brightness {rule.small_lesion_fallback:.3g} x the brain median" if rule.small_lesion_fallback else ""
        lines.append(f"  {name}: {point.describe()}; threshold {rule.threshold:.4g}{fallback}")
        if meaning:
            lines.append(f"    on healthy brains: {meaning}")
    if card.get("healthy_tails") and card.get("healthy_tails_grid", "slice") != "input":
        lines.append(f"  note: {SLICE_GRID_TAILS}")
    chosen = (card.get("operating_points") or {}).get("chosen_by")
    if chosen:
        lines.append(f"  chosen by: {chosen}")
    return lines
