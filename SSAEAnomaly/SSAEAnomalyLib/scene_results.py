"""Detection results in the scene for :class:`SSAEAnomalyLib.logic.AnomalyLogic`: the score
volumes, segments and lesion table of a run, and what the threshold, map and operating point
controls do to them (recomputed from the stored score volumes, no model run).
"""

from __future__ import annotations

import json

import SimpleITK as sitk

from ssae.io.errors import SSAEError
from ssae.scoring.lesions import LesionTable
from ssae.scoring.maps import map_order, map_title
from ssae.scoring.mask_drawing import SMALL_LESION_BITS
from ssae.scoring.operating_points import (
    HealthyTail,
    card_mask_rule,
    healthy_tail,
    mask_rule,
    measured_in_lesions,
    operating_points_from_card,
)

from .results import (
    add_lesion_segmentation,
    add_score_volume,
    add_small_lesions,
    ensure_segment,
    fill_lesion_table,
    place_under_input_study,
    segment_id_of,
    segment_name,
    style_score_volume,
    update_segment,
)
from .scene_ownership import nodes_of_class, remove_results_folder, remove_with_display_and_storage, results_folder_of
from .volumes import array_from_volume_node


def level_sizes(card: dict) -> dict[str, int]:
    return {f"level{k}": card["architecture"]["size"] >> k for k in range(card["architecture"]["levels"])}


class SceneResults:
    """The results part of :class:`SSAEAnomalyLib.logic.AnomalyLogic` (uses its scene and parameters)."""

    def show_results(
        self,
        volume,
        maps: dict[str, sitk.Image],
        card: dict,
        adapted: bool,
        replace_previous: bool = False,
        score_map: str | None = None,
        brain_ml: float | None = None,
        operating_point: str = "",
        small_lesions: sitk.Image | None = None,
    ) -> LesionTable:
        """Score volumes, lesion segmentation and table for ``maps`` (name -> image on the input grid).

        ``card``, ``adapted`` and ``operating_point`` are those of the run that made the maps:
        they give the names, the thresholds (each map's at the operating point, or its
        percentile threshold for an older card) and what a threshold means on a healthy brain
        of ``brain_ml``; ``small_lesions`` are the run's small lesions of every operating point
        (:func:`ssae.scoring.mask_drawing.small_lesions_by_point`), which join the card map's
        segment. All parameter writes are one batch: the panel refreshes once.
        """
        params = self.parameters
        sizes = level_sizes(card)
        rules = {name: card_mask_rule(card, name, adapted, operating_point or None) for name in maps}
        names = sorted(maps, key=map_order)
        chosen = score_map or card.get("score_map", "aggregated")
        chosen = chosen if chosen in maps else "aggregated"
        with params.batch():
            if replace_previous:
                self.remove_results()
            segmentation = add_lesion_segmentation(self.scene, volume, f"{volume.GetName()} anomalies")
            table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName(f"{volume.GetName()} lesions"))
            for name in list(params.result_maps()):
                params.set_result_volume(name, None)
            params.segmentation, params.statistics_table = segmentation, table
            nodes, lesions = [segmentation, table], None
            params.min_lesion_mm3 = rules[chosen].min_lesion_mm3
            params.results_card = {"operating_points": card.get("operating_points") or {}, "postprocessing": card["postprocessing"]}
            params.small_lesions = None
            if small_lesions is not None:
                params.small_lesions = add_small_lesions(self.scene, volume, small_lesions, f"{volume.GetName()} small lesions")
                params.small_lesions.SetAttribute("SSAE.map", card.get("score_map", "aggregated"))
                params.small_lesions.SetAttribute("SSAE.runPoint", rules[chosen].operating_point)
                nodes.append(params.small_lesions)
            for name in names:
                rule = rules[name]
                node = add_score_volume(
                    self.scene, volume, maps[name], f"{volume.GetName()} anomaly {map_title(name, sizes)}", rule.threshold
                )
                node.SetAttribute("SSAE.calibratedThreshold", repr(rule.threshold))
                tail = healthy_tail(card, name, adapted)
                node.SetAttribute("SSAE.healthyTail", json.dumps(tail.to_dict()) if tail is not None else "")
                node.SetAttribute("SSAE.brainMl", repr(float(brain_ml)) if brain_ml else "")
                params.set_rule_of(name, rule.threshold, rule.seed_threshold, rule.operating_point)
                params.set_result_volume(name, node)
                nodes.append(node)
                segment_id = ensure_segment(segmentation, name, segment_name(name, sizes))
                found = update_segment(
                    segmentation, segment_id, node, rule.threshold, params.min_lesion_mm3, rule.seed_threshold, self._small_lesions_of(name)
                )
                if name == chosen:
                    lesions = found
            params.score_map = chosen
            assert lesions is not None
            fill_lesion_table(table, lesions, rules[chosen].operating_point)
            self._show_only_selected_segment()
            place_under_input_study(self.scene, volume, nodes, f"{volume.GetName()} SSAE results")
        show_in_slice_views(self.scene, volume, params.result_volume(chosen))
        return lesions

    def _small_lesions_of(self, map_name: str) -> tuple[object, int] | None:
        """The run's small-lesion volume and the bit of the operating point in use for
        ``map_name`` (its own preset, or the run's point under a threshold of the user's);
        None where the map has no small lesions."""
        params = self.parameters
        node = params.small_lesions
        if node is None or node.GetAttribute("SSAE.map") != map_name:
            return None
        point = params.rule_name_of(map_name) if params.has_threshold(map_name) else ""
        point = point if point in SMALL_LESION_BITS else node.GetAttribute("SSAE.runPoint") or ""
        return (node, SMALL_LESION_BITS[point]) if point in SMALL_LESION_BITS else None

    def _show_only_selected_segment(self) -> None:
        """Overlapping segments of every map would hide each other: show the selected map's."""
        params = self.parameters
        display = params.segmentation.GetDisplayNode()
        for name in params.result_maps():
            display.SetSegmentVisibility(segment_id_of(name), name == params.score_map)

    def remove_results(self) -> None:
        """Remove the nodes of the last detection (only when the user asked to replace them)."""
        params = self.parameters
        nodes = [params.result_volume(n) for n in params.result_maps()] + [
            params.segmentation,
            params.statistics_table,
            params.atlas_transform,
            params.small_lesions,
        ]
        folder = results_folder_of(self.scene, params.segmentation)
        with params.batch():
            for node in nodes:
                remove_with_display_and_storage(self.scene, node)
            remove_results_folder(self.scene, folder)

    def threshold_range(self, map_name: str | None = None) -> tuple[float, float]:
        """Slider range for a map: 0 to its maximum score (at least 1.5x its calibrated threshold)."""
        params = self.parameters
        node = params.result_volume(map_name or params.score_map)
        if node is None:
            raise SSAEError("run the detection first")
        top = float(array_from_volume_node(node).max())
        calibrated = float(node.GetAttribute("SSAE.calibratedThreshold") or 0.0)
        return 0.0, max(top, 1.5 * calibrated, 1e-6)

    def apply_threshold(self, threshold: float | None = None, map_name: str | None = None) -> LesionTable:
        """Recompute one map's segment and the lesion table from its stored score volume; a
        ``threshold`` given here is the user's own (no hysteresis seeds, the current minimum size)."""
        params = self.parameters
        name = map_name or params.score_map
        node, segmentation, table = params.result_volume(name), params.segmentation, params.statistics_table
        if node is None or segmentation is None or table is None:
            raise SSAEError("run the detection first")
        with params.batch():
            if threshold is not None:
                params.set_rule_of(name, threshold, None, "threshold")
            if not params.has_threshold(name):
                params.set_rule_of(name, float(node.GetAttribute("SSAE.calibratedThreshold") or 0.0), None, "threshold")
            value, seed, rule = params.threshold_of(name), params.seed_of(name), params.rule_name_of(name)
            style_score_volume(node, value)
            lesions = update_segment(
                segmentation,
                ensure_segment(segmentation, name, segment_name(name)),
                node,
                value,
                params.min_lesion_mm3,
                seed,
                self._small_lesions_of(name),
            )
            if name == params.score_map:
                fill_lesion_table(table, lesions, rule)
                self._show_only_selected_segment()
        return lesions

    def apply_operating_point(self, operating_point: str) -> LesionTable:
        """The current map's mask at one of the results' operating points (threshold, seeds and
        minimum size of the preset, from the map's healthy tail)."""
        params = self.parameters
        name = params.score_map
        node = params.result_volume(name)
        if node is None:
            raise SSAEError("run the detection first")
        section = params.results_card
        points, default = operating_points_from_card(section)
        tail_text = node.GetAttribute("SSAE.healthyTail") or ""
        tail = HealthyTail.from_dict(json.loads(tail_text)) if tail_text else None
        calibrated = (float(node.GetAttribute("SSAE.calibratedThreshold") or 0.0), "as detected")
        fallback = float(section.get("postprocessing", {}).get("min_lesion_mm3", params.min_lesion_mm3))
        rule = mask_rule(points, default, tail, calibrated, fallback, False, operating_point if operating_point in points else None)
        with params.batch():
            params.min_lesion_mm3 = rule.min_lesion_mm3
            params.set_rule_of(name, rule.threshold, rule.seed_threshold, rule.operating_point)
            return self.apply_threshold(None, name)

    def threshold_meaning(self, threshold: float | None = None, map_name: str | None = None) -> str:
        """What a threshold of a map means without labels: the share of a healthy brain above it
        and the volume a healthy brain of this scan's size would show ('' where unknown)."""
        params = self.parameters
        node = params.result_volume(map_name or params.score_map)
        if node is None:
            return ""
        tail_text = node.GetAttribute("SSAE.healthyTail") or ""
        if not tail_text:
            return "This model has no healthy calibration tail for this map (recalibrate it with ssae calibrate)."
        tail = HealthyTail.from_dict(json.loads(tail_text))
        name = map_name or params.score_map
        value = params.threshold_of(name) if threshold is None else threshold
        fraction = tail.fraction_above(value)
        brain_ml = float(node.GetAttribute("SSAE.brainMl") or 0.0)
        volume = f"about {fraction * brain_ml:.1f} ml of a healthy brain this size, " if brain_ml else ""
        text = f"On healthy brains: {volume}{100 * fraction:.2g} % of its voxels would lie above this threshold."
        point = params.rule_name_of(name) if threshold is None else ""
        _, lesions = measured_in_lesions(params.results_card.get("operating_points") or {}, point)
        if lesions is not None:
            text += f" At the {point} operating point a healthy calibration brain shows {lesions:.1f} false lesions."
        small = self._small_lesions_of(name)
        if small is not None and point not in SMALL_LESION_BITS:
            text += f" The mask keeps the small lesions of the {small[0].GetAttribute('SSAE.runPoint')} operating point."
        return text


def show_in_slice_views(scene, background, foreground, opacity: float = 0.6) -> None:
    """Input as background and a score map as foreground in every slice view of the scene."""
    for composite in nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(background.GetID() if background else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        composite.SetForegroundOpacity(opacity)
