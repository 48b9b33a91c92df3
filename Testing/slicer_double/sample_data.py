"""The ``SampleData`` module's registration API as Slicer 5.12.3 defines it, for tests outside Slicer.

Restates ``Modules/Scripted/SampleData/SampleData.py`` at v5.12.3
(9034c71a8fce68ab312458b3d7d16f610562263d; the same signatures from 5.8.1 to main):
``SampleDataSource.__init__`` (lines 146-214: ``loadFileType`` is deprecated and may not be
given with ``loadFileTypes``; every per-file list must have the same length),
``SampleDataLogic.registerCustomSampleDataSource`` (552-602: exactly these keyword arguments,
no ``sampleDescription`` and no ``**kwargs``, so any other keyword is a ``TypeError``) and
``isSampleDataSourceRegistered``. Checksums are checked with the real ``slicer.util``'s
``extractAlgoAndDigest``, as the downloader does before it verifies a file.
With ``SLICER_SOURCE_DIR`` set the tests load Slicer's real file instead.
"""

from __future__ import annotations

import slicer


class SampleDataSource:
    def __init__(
        self,
        sampleName=None,
        sampleDescription=None,
        uris=None,
        fileNames=None,
        nodeNames=None,
        checksums=None,
        loadFiles=None,
        customDownloader=None,
        thumbnailFileName=None,
        loadFileTypes=None,
        loadFileProperties=None,
        loadFileType=None,
    ):
        if loadFileType is not None and loadFileTypes is not None:
            raise ValueError("loadFileType and loadFileTypes cannot be specified at the same time")
        if loadFileType is not None:
            loadFileTypes = loadFileType
        self.sampleName = sampleName
        self.sampleDescription = sampleName if sampleDescription is None else sampleDescription
        if isinstance(uris, (list, tuple)):
            if isinstance(loadFileTypes, str) or loadFileTypes is None:
                loadFileTypes = [loadFileTypes] * len(uris)
            nodeNames = [None] * len(uris) if nodeNames is None else nodeNames
            loadFiles = [None] * len(uris) if loadFiles is None else loadFiles
            checksums = [None] * len(uris) if checksums is None else checksums
        elif isinstance(uris, str):
            uris, fileNames, nodeNames, loadFiles, loadFileTypes, checksums = (
                [uris],
                [fileNames],
                [nodeNames],
                [loadFiles],
                [loadFileTypes],
                [checksums],
            )
        self.uris, self.fileNames, self.nodeNames, self.loadFiles = uris, fileNames, nodeNames, loadFiles
        self.customDownloader, self.thumbnailFileName = customDownloader, thumbnailFileName
        self.loadFileTypes, self.loadFileProperties, self.checksums = loadFileTypes, loadFileProperties or {}, checksums
        if not len(uris) == len(fileNames) == len(nodeNames) == len(loadFiles) == len(loadFileTypes) == len(checksums):
            raise ValueError("All fields of sample data source must have the same length")
        for checksum in checksums:
            slicer.util.extractAlgoAndDigest(checksum)


class SampleDataLogic:
    @staticmethod
    def registerCustomSampleDataSource(
        category="Custom",
        sampleName=None,
        uris=None,
        fileNames=None,
        nodeNames=None,
        customDownloader=None,
        thumbnailFileName=None,
        loadFileTypes=None,
        loadFiles=None,
        loadFileProperties={},  # noqa: B006 (Slicer's own default)
        checksums=None,
        loadFileType=None,
    ):
        if loadFileType is not None and loadFileTypes is not None:
            raise ValueError("loadFileType and loadFileTypes cannot be specified at the same time")
        if loadFileType is not None:
            loadFileTypes = loadFileType
        sources = slicer.modules.__dict__.setdefault("sampleDataSources", {})
        sources.setdefault(category, [])
        source = SampleDataSource(
            sampleName=sampleName,
            uris=uris,
            fileNames=fileNames,
            nodeNames=nodeNames,
            thumbnailFileName=thumbnailFileName,
            loadFileTypes=loadFileTypes,
            loadFiles=loadFiles,
            loadFileProperties=loadFileProperties,
            checksums=checksums,
            customDownloader=customDownloader,
        )
        if SampleDataLogic.isSampleDataSourceRegistered(category, source):
            return
        sources[category].append(source)

    @staticmethod
    def isSampleDataSourceRegistered(category, sampleDataSource):
        if not isinstance(sampleDataSource, SampleDataSource):
            raise TypeError(f"unsupported sampleDataSource type '{type(sampleDataSource)}'")
        return any(vars(sampleDataSource) == vars(s) for s in slicer.modules.__dict__.get("sampleDataSources", {}).get(category, []))
