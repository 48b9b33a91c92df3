"""The extension's sample scans, registered with Slicer's Sample Data module.

They ship inside the extension (``Resources/SampleData``), so the "download" is a copy from a
``file://`` address (Slicer's downloader uses ``urlretrieve``, which copies ``file:`` URLs),
verified by its SHA-256 like any sample; nothing comes from the network. The keyword arguments
are exactly those of ``SampleDataLogic.registerCustomSampleDataSource`` in Slicer 5.10-5.12
(no ``sampleDescription``; ``loadFileTypes``, not the deprecated ``loadFileType``): the button
shows the sample's name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CATEGORY = "SSAE (brain FLAIR anomalies)"
THUMBNAILS = Path(__file__).resolve().parent.parent / "Resources" / "Icons"
SAMPLES = (
    # sample name, files (relative to Resources/SampleData), node names, file types, thumbnail
    (
        "SSAE MSLUB patient 19",
        ("MSLUB/patient19/flair.nii.gz", "MSLUB/patient19/consensus_gt.nii.gz"),
        ("MSLUB patient19 FLAIR", "MSLUB patient19 consensus lesions"),
        ("VolumeFile", "SegmentationFile"),
        "SSAESampleMSLUB19.png",
    ),
    (
        "SSAE MSLUB patient 7",
        ("MSLUB/patient07/flair.nii.gz", "MSLUB/patient07/consensus_gt.nii.gz"),
        ("MSLUB patient07 FLAIR", "MSLUB patient07 consensus lesions"),
        ("VolumeFile", "SegmentationFile"),
        "SSAESampleMSLUB07.png",
    ),
    (
        "SSAE raw clinical FLAIR",
        ("ClinicalRaw/patient01_study1_FLAIR.nii.gz",),
        ("clinical patient01 FLAIR",),
        ("VolumeFile",),
        "SSAESampleClinical.png",
    ),
    (
        "SSAE follow-up pair",
        ("ClinicalRaw/patient01_study1_FLAIR.nii.gz", "ClinicalRaw/patient01_study2_FLAIR.nii.gz"),
        ("clinical patient01 FLAIR (prior)", "clinical patient01 FLAIR (follow-up)"),
        ("VolumeFile", "VolumeFile"),
        "SSAESampleClinical.png",
    ),
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sample_data_sources(resources: Path | None = None) -> list[dict[str, Any]]:
    """Keyword arguments for ``SampleData.SampleDataLogic.registerCustomSampleDataSource``, one
    dict per sample (empty when the extension was installed without its sample data)."""
    from ssae.io.resources import resources_dir

    folder = (resources or resources_dir()) / "SampleData"
    sources = []
    for name, files, nodes, types, thumbnail in SAMPLES:
        paths = [folder / f for f in files]
        if not all(p.is_file() for p in paths):
            continue
        sources.append(
            {
                "category": CATEGORY,
                "sampleName": name,
                "uris": [p.resolve().as_uri() for p in paths],
                "fileNames": [f"SSAE_{p.parent.name}_{p.name}" for p in paths],
                "nodeNames": list(nodes),
                "loadFileTypes": list(types),
                "checksums": [f"SHA256:{_sha256(p)}" for p in paths],
                "thumbnailFileName": str(THUMBNAILS / thumbnail),
            }
        )
    return sources
