"""Several scans in one background job, for :class:`SSAEAnomalyLib.logic.AnomalyLogic`: loaded
volumes (their results come back into the scene) or a folder of scans (its results stay in the
folder the user chose), and the cohort table.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import SimpleITK as sitk

from ssae.io.errors import SSAEError

from .jobs import DetectionJob, JobInputs, ScanInput
from .results import fill_string_table


class BatchDetection:
    """The batch part of :class:`SSAEAnomalyLib.logic.AnomalyLogic` (uses its model, inputs and worker)."""

    def start_batch_detection(
        self,
        volumes: list | None = None,
        folder: str | os.PathLike[str] | None = None,
        output_folder: str | os.PathLike[str] | None = None,
        python: str | None = None,
        env: dict[str, str] | None = None,
    ) -> DetectionJob:
        """One background ``ssae detect`` over several loaded volumes, or over a folder of scans.

        Loaded volumes are written to a temporary folder and listed in a CSV manifest; their
        results come back into the scene. A folder's results stay in ``output_folder`` (one
        result folder per scan and ``cohort.csv``); the cohort table comes into the scene.
        """
        model_path, card = self._model()
        if (volumes is None) == (folder is None):
            raise SSAEError("give either loaded volumes or a folder of scans")
        if volumes is not None and not volumes:
            raise SSAEError("select at least one volume")
        if folder is not None:
            source = Path(folder)
            if not source.exists():
                raise SSAEError(f"folder not found: {source}")
            if output_folder is None:
                raise SSAEError("choose a folder for the results of a folder of scans")
            output, keep = Path(output_folder), True
            if (output / "cohort.csv").exists():
                raise SSAEError(f"{output} already holds a cohort.csv; choose another folder")
        workdir = Path(tempfile.mkdtemp(prefix="ssae-batch-"))
        scans = []
        if volumes is not None:
            try:
                rows = ["case,image"]
                for index, volume in enumerate(volumes):
                    image = self._volume_image(volume)
                    case = f"scan{index + 1:03d}"
                    path = workdir / f"{case}.nrrd"
                    sitk.WriteImage(image, str(path))
                    scans.append(ScanInput(case, path, volume.GetID(), volume.GetName()))
                    rows.append(f"{case},{path.name}")
                source = workdir / "scans.csv"
                source.write_text("\n".join(rows) + "\n", encoding="utf-8")
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            output, keep = workdir / "out", False
        inputs = JobInputs(
            tuple(scans),
            model_path,
            card,
            self._adapt(card),
            self.parameters.device,
            self._job_score_map(card),
            self._job_operating_point(card),
        )
        command = self._submit(self._command_args(inputs, source, output, workdir / "progress.jsonl"), workdir, python, env)
        return DetectionJob(command=command, workdir=workdir, inputs=inputs, output=output, cohort=True, keep_output=keep)

    def load_batch(self, job: DetectionJob) -> list[dict[str, str]]:
        """The cohort table into the scene (and each loaded volume's results); returns its rows."""
        try:
            rows = job.cohort_rows()
            if not rows:
                raise SSAEError("the batch wrote no cohort table")
            self.parameters.cohort_table = self._cohort_table_node(rows, job.inputs)
            for scan in job.inputs.scans:
                row = next((r for r in rows if r["case"] == scan.case), None)
                if row is not None and row["status"] == "ok":
                    self._load_scan_results(job.inputs, scan, job.output / scan.case, scan.case, replace_previous=False)
            return rows
        finally:
            job.cleanup()  # the temporary folder; a folder of scans' results stay where the user put them

    def _cohort_table_node(self, rows: list[dict[str, str]], inputs: JobInputs):
        names = {scan.case: scan.volume_name for scan in inputs.scans}
        node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName("SSAE cohort"))
        columns = [
            "case",
            "volume",
            "status",
            "lesion_count",
            "total_volume_ml",
            "threshold",
            "adapted",
            "registration_check",
            "warnings",
            "error",
        ]
        fill_string_table(node, columns, [{**row, "volume": names.get(row["case"], row.get("image", ""))} for row in rows])
        return node
