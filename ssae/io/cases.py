"""Finding scans on disk, and the cached slice stacks that training reads.

A *case* is one scan: a FLAIR image, optionally a brain mask, optionally a lesion label. For
training, lesion-labelled voxels (e.g. automatic WMH masks of elderly subjects) are left out of
the loss; for evaluation, the lesion label is the ground truth.

Layouts understood (file names matched case-insensitively):

* a CSV manifest with columns ``image`` and optionally ``brain_mask``, ``label``, ``case``
  (paths relative to the CSV file; UTF-8 with or without a byte-order mark, UTF-16, or
  Windows-1252 as spreadsheet programs write them);
* one folder per case holding ``*flair*`` (or the only image), ``*brainmask*``/``*brain_mask*``,
  and a label named like ``*seg*``, ``*label*``, ``consensus_gt*``, ``*wmh*`` or ``*lesion*``
  (MSLUB ``patientXX/FLAIR.nii.gz`` + ``consensus_gt.nii.gz``; BraTS ``*_flair.nii.gz`` +
  ``*_seg.nii.gz``; one DICOM series folder per case works too);
* a flat folder of images, with masks and labels beside them sharing the image's prefix
  (``sub01_flair.nii.gz``, ``sub01_brainmask.nii.gz``, ``sub01_seg.nii.gz``; ``sub1`` and
  ``sub10`` are different subjects: the prefix must end at a separator).

Case names become file and folder names of results, so they are made safe (letters, digits,
``.``, ``-``, ``_``; never ``..`` or a path). Folders that hold ssae's own results (a detection's
``*_summary.json``, a cohort's ``cohort.csv``) are never taken for scans.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ssae.io.errors import SSAEError
from ssae.io.volumes import VOLUME_SUFFIXES, read_mask, read_volume, volume_stem
from ssae.io.writing import os_errors

BRAIN_MASK_WORDS = ("brainmask", "brain_mask", "brain-mask", "mask")


LABEL_WORDS = ("seg", "label", "consensus", "_gt", "gt_", "wmh", "lesion", "tumour", "tumor")


@dataclass(frozen=True)
class Case:
    """One scan and its optional brain mask and lesion label."""

    name: str
    image: Path
    brain_mask: Path | None = None
    label: Path | None = None


def is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def is_dicom_folder(path: Path) -> bool:
    """A folder of DICOM files: named ``*.dcm``, or (as PACS exports them) without an extension
    but with DICOM's ``DICM`` marker after the 128-byte preamble."""
    if not path.is_dir():
        return False
    files = sorted(p for p in path.iterdir() if p.is_file())
    if any(p.suffix.lower() == ".dcm" for p in files):
        return True
    if any(is_volume_file(p) for p in files):
        return False
    return any(_has_dicom_marker(p) for p in files[:5])


def _has_dicom_marker(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def safe_case_name(name: str) -> str:
    """A case name that is safe as a file or folder name inside an output folder."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"
    return cleaned


def is_result_folder(folder: Path) -> bool:
    """Whether ``folder`` holds ssae's own results (a detection or comparison summary, a cohort
    or pairs table): never read as input, wherever a user points ``-o``."""
    if (folder / "cohort.csv").is_file() or (folder / "comparisons.csv").is_file():
        return True
    for summary in folder.glob("*_summary.json"):
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "files" in data and "model" in data:
            return True
    return False


def _role(name: str) -> str:
    lower = name.lower()
    if any(word in lower for word in LABEL_WORDS):
        return "label"
    if any(word in lower for word in BRAIN_MASK_WORDS):
        return "brain_mask"
    return "image"


def _case_from_folder(folder: Path) -> Case | None:
    if is_result_folder(folder):
        return None
    if is_dicom_folder(folder):
        return Case(name=safe_case_name(folder.name), image=folder)
    files = sorted(p for p in folder.iterdir() if is_volume_file(p))
    by_role: dict[str, list[Path]] = {"image": [], "brain_mask": [], "label": []}
    for path in files:
        by_role[_role(path.name)].append(path)
    images = by_role["image"]
    flair = [p for p in images if "flair" in p.name.lower()]
    if len(flair) == 1:
        image = flair[0]
    elif len(images) == 1:
        image = images[0]
    elif not images:
        return None
    else:
        raise SSAEError(
            f"{folder}: cannot tell which of {', '.join(p.name for p in images)} is the FLAIR image; name it *flair* or use a CSV manifest"
        )
    return Case(
        name=safe_case_name(folder.name),
        image=image,
        brain_mask=_single(by_role["brain_mask"], folder, "brain mask"),
        label=_single(by_role["label"], folder, "lesion label"),
    )


def warn_if_labelled(cases: list[Case], warn) -> None:
    """Training expects healthy scans: say so when the folder looks like labelled patients."""
    labelled = [c.name for c in cases if c.label is not None]
    if labelled:
        warn(
            f"{len(labelled)} of {len(cases)} training scans have a lesion label beside them ({', '.join(labelled[:3])}"
            f"{', ...' if len(labelled) > 3 else ''}); models learn healthy anatomy, so train on healthy scans. "
            "Labelled voxels are left out of the loss."
        )


def _single(paths: list[Path], folder: Path, what: str) -> Path | None:
    if len(paths) > 1:
        raise SSAEError(f"{folder}: more than one {what} ({', '.join(p.name for p in paths)}); use a CSV manifest")
    return paths[0] if paths else None


def _belongs_to(prefix: str, name: str) -> bool:
    """``name`` (a file's stem) is ``prefix``'s, or starts with it and then a separator: so
    ``sub1_mask`` belongs to ``sub1``, ``sub10_mask`` does not."""
    lower = name.lower()
    return lower == prefix or any(lower.startswith(prefix + sep) for sep in "_-.")


def _cases_from_flat_folder(folder: Path) -> list[Case]:
    files = sorted(p for p in folder.iterdir() if is_volume_file(p))
    images = [p for p in files if _role(p.name) == "image"]
    cases = []
    for image in images:
        stem = volume_stem(image)
        prefix = stem.lower().removesuffix("_flair").removesuffix("-flair")
        siblings = [p for p in files if p != image and _belongs_to(prefix, volume_stem(p))]
        masks = [p for p in siblings if _role(p.name) == "brain_mask"]
        labels = [p for p in siblings if _role(p.name) == "label"]
        cases.append(
            Case(
                name=safe_case_name(prefix),
                image=image,
                brain_mask=_single(masks, folder, "brain mask"),
                label=_single(labels, folder, "lesion label"),
            )
        )
    return cases


def read_text_table(path: Path) -> str:
    """A CSV file's text in whichever encoding spreadsheet programs write: UTF-8 (with or without
    a byte-order mark), UTF-16 with its mark, else Windows-1252."""
    with os_errors(f"cannot read {path}"):
        data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        raise SSAEError(f"{path} is not a text file in UTF-8, UTF-16 or Windows-1252; save it as CSV (UTF-8)") from None


def _cases_from_csv(manifest: Path) -> list[Case]:
    base = manifest.parent
    rows = list(csv.DictReader(io.StringIO(read_text_table(manifest), newline="")))
    header = [name.strip().lower() for name in rows[0]] if rows else []
    if "image" not in header:
        raise SSAEError(f"{manifest} needs a header row with an 'image' column (optional: brain_mask, label, case)")

    def resolve(value: str | None) -> Path | None:
        value = (value or "").strip()
        return (base / value).resolve() if value else None

    cases = []
    for number, raw in enumerate(rows, start=2):  # line 1 is the header
        row = {(key or "").strip().lower(): value for key, value in raw.items()}
        image = resolve(row.get("image"))
        if image is None:
            raise SSAEError(f"{manifest}, line {number}: the image cell is empty")
        name = (row.get("case") or "").strip() or volume_stem(image)
        cases.append(
            Case(name=safe_case_name(name), image=image, brain_mask=resolve(row.get("brain_mask")), label=resolve(row.get("label")))
        )
    return cases


def find_cases(source: str | os.PathLike[str], masks_folder: str | os.PathLike[str] | None = None) -> list[Case]:
    """Every case under ``source`` (folder or CSV manifest), sorted by name.

    ``masks_folder`` supplies brain masks from elsewhere (e.g. exported from another Slicer
    module): a file or subfolder whose name starts with the case name.
    """
    source = Path(source)
    if not source.exists():
        raise SSAEError(f"data not found: {source}")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise SSAEError(f"{source} is a file; give a folder of scans or a CSV manifest")
        cases = _cases_from_csv(source)
    else:
        subfolders = sorted(p for p in source.iterdir() if p.is_dir())
        cases = [c for c in (_case_from_folder(p) for p in subfolders) if c is not None]
        cases += _cases_from_flat_folder(source)
    if not cases:
        raise SSAEError(f"no scans found in {source}")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise SSAEError(f"{source}: two scans share a case name; use a CSV manifest with a 'case' column")
    if masks_folder is not None:
        cases = [_with_external_mask(c, Path(masks_folder)) for c in cases]
    return sorted(cases, key=lambda c: c.name)


def check_output_apart(output: Path, cases: list[Case]) -> None:
    """Refuse an output folder that is, or holds, one of the inputs: results written there would
    sit in the patients' folders and be read as scans by the next run."""
    out = Path(output).resolve()
    for case in cases:
        for path in (case.image, case.brain_mask, case.label):
            if path is None:
                continue
            resolved = Path(path).resolve()
            if out == resolved or out in resolved.parents:
                raise SSAEError(f"the output folder {output} holds the input {path}; choose a folder apart from the scans")


def _with_external_mask(case: Case, folder: Path) -> Case:
    if not folder.is_dir():
        raise SSAEError(f"brain mask folder not found: {folder}")
    candidates = [p for p in sorted(folder.iterdir()) if _belongs_to(case.name.lower(), volume_stem(p) if p.is_file() else p.name)]
    masks = [p for p in candidates if is_volume_file(p)] + [m for p in candidates if p.is_dir() for m in sorted(p.iterdir()) if is_volume_file(m)]
    if not masks:
        raise SSAEError(f"no brain mask for {case.name} in {folder}")
    if len(masks) > 1:
        raise SSAEError(f"several brain masks for {case.name} in {folder}: {', '.join(p.name for p in masks)}")
    return Case(name=case.name, image=case.image, brain_mask=masks[0], label=case.label)


def check_case_files(cases: list[Case], need_label: bool = False) -> None:
    """Before any work: every case's image is readable and complete (a NIfTI file's voxel data
    to the end, so that one truncated scan among many is refused before hours of work on the
    others), and its brain mask and lesion label are real masks on the image's grid (what
    :func:`read_case_volumes` checks, case by case, later)."""
    from ssae.io.volumes import check_nifti_payload

    for case in cases:
        if need_label and case.label is None:
            raise SSAEError(f"case {case.name} has no lesion label (expected e.g. consensus_gt, *_seg or a 'label' column)")
        if not case.image.exists():
            raise SSAEError(f"image of {case.name} not found: {case.image}")
        if case.image.is_file() and case.image.name.lower().endswith((".nii", ".nii.gz")):
            check_nifti_payload(case.image, f"image of {case.name}")
        reference = _grid_of(case.image, f"image of {case.name}")
        if case.brain_mask is None and case.label is None:
            continue
        if case.brain_mask is not None:
            read_mask(case.brain_mask, reference, f"brain mask of {case.name}")
        if case.label is not None:
            read_mask(case.label, reference, f"lesion label of {case.name}")


def _grid_of(path: Path, what: str) -> sitk.Image:
    """An empty image on the grid of the volume at ``path`` (its header only; a DICOM folder is read)."""
    if Path(path).is_dir():
        return read_volume(path, what)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return read_volume(path, what)  # says what is wrong with the file
    grid = sitk.Image([int(v) for v in reader.GetSize()], sitk.sitkUInt8)
    grid.SetSpacing(reader.GetSpacing())
    grid.SetOrigin(reader.GetOrigin())
    grid.SetDirection(reader.GetDirection())
    return grid


def read_case_volumes(case: Case, need_label: bool = False) -> tuple[sitk.Image, sitk.Image | None, sitk.Image | None]:
    """Image, brain mask and lesion label of a case, geometry-checked."""
    image = read_volume(case.image, f"image of {case.name}")
    brain = read_mask(case.brain_mask, image, f"brain mask of {case.name}") if case.brain_mask else None
    if need_label and case.label is None:
        raise SSAEError(f"case {case.name} has no lesion label (expected e.g. consensus_gt, *_seg or a 'label' column)")
    label = read_mask(case.label, image, f"lesion label of {case.name}") if case.label else None
    return image, brain, label
