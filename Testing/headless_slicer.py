"""Headless Slicer for tests and benchmarks: a bare scene with Slicer's logic, and slice views
rendered to PNG without a screen, the way Slicer draws them.

Never imported inside the Slicer application (it switches VTK to EGL rendering on import); that
is why it lives in Testing/ and not in a module's Lib.

Uses Slicer's own slice logic (background/foreground blending, colour maps, thresholds) and
its segmentation displayable manager (segment fill and outline), on an offscreen EGL render
window. The tests use it to check what a radiologist would see, and bench/render_slicer_views.py
uses it for the README's pictures. Needs a scene set up with an application logic (as
:func:`headless_scene` does); inside the Slicer application the real views already exist.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support


def headless_scene():
    """A bare MRML scene with the application, colour and segmentation logic Slicer would have.

    Keep the returned application logic as long as the scene: when it is freed, its colour logic
    removes the default colour nodes from the scene (labelmaps then lose their colour table)."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    segmentations.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Segmentations", segmentations)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    follow_removals_in_subject_hierarchy(scene)
    return scene, app_logic


def orphaned_helpers(scene) -> list[str]:
    """Display and storage nodes that no node of ``scene`` refers to: what a removal that forgot
    them leaves behind (and saves with the scene). As "class ID" strings, sorted."""
    nodes = [scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes())]
    referenced = set()
    for node in nodes:
        if node.IsA("vtkMRMLDisplayableNode"):
            referenced |= {node.GetNthDisplayNodeID(i) for i in range(node.GetNumberOfDisplayNodes())}
        if node.IsA("vtkMRMLStorableNode"):
            referenced |= {node.GetNthStorageNodeID(i) for i in range(node.GetNumberOfStorageNodes())}
    helpers = [node for node in nodes if node.IsA("vtkMRMLDisplayNode") or node.IsA("vtkMRMLStorageNode")]
    return sorted(f"{node.GetClassName()} {node.GetID()}" for node in helpers if node.GetID() not in referenced)


def follow_removals_in_subject_hierarchy(scene) -> None:
    """What Slicer's ``qSlicerSubjectHierarchyPluginLogic::onNodeAboutToBeRemoved`` (a Qt class,
    not in slicer-core) does: a node's subject-hierarchy item goes with the node (the item only,
    ``RemoveItem(item, false, false)``), except while the scene closes."""

    scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, _RemoveItemWithNode())


class _RemoveItemWithNode:
    """The observer of :func:`follow_removals_in_subject_hierarchy` (a callable object: VTK may
    call it while Python shuts down, when a plain function's defaults are gone)."""

    CallDataType = vtk.VTK_OBJECT

    def __call__(self, *args) -> None:
        caller, node = args[0], (args[2] if len(args) > 2 else None)
        if caller is None or node is None or caller.IsClosing() or node.IsA("vtkMRMLSubjectHierarchyNode"):
            return
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(caller)
        item = hierarchy.GetItemByDataNode(node) if hierarchy else 0
        if item:
            hierarchy.RemoveItem(item, False, False)


class SliceViewRenderer:
    """One offscreen slice view ("Red", axial by default) of a scene."""

    def __init__(self, scene, app_logic, width: int = 512, height: int = 512, orientation: str = "Axial") -> None:
        self.width, self.height = width, height
        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(width, height)
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()  # displayable managers need one
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app_logic)
        if not factory.IsDisplayableManagerRegistered("vtkMRMLSegmentationsDisplayableManager2D"):
            factory.RegisterDisplayableManager("vtkMRMLSegmentationsDisplayableManager2D")
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app_logic)
        self.logic.SetMRMLScene(scene)
        app_logic.GetSliceLogics().AddItem(self.logic)
        self.slice_node = self.logic.AddSliceNode("Red")
        self.slice_node.SetOrientation(orientation)
        self.managers.SetMRMLDisplayableNode(self.slice_node)
        self.mapper = vtk.vtkImageMapper()
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        actor = vtk.vtkActor2D()
        actor.SetMapper(self.mapper)
        # The slice image on layer 0, displayable managers on layer 1 (as Slicer's light-box
        # renderer manager does), else segment fills blend with black instead of the image.
        image_renderer = vtk.vtkRenderer()
        image_renderer.SetLayer(0)
        image_renderer.AddViewProp(actor)
        self.renderer.SetLayer(1)
        self.window.SetNumberOfLayers(2)
        self.window.AddRenderer(image_renderer)

    @property
    def composite(self):
        return self.logic.GetSliceCompositeNode()

    def render(self, offset_mm: float | None = None) -> np.ndarray:
        """RGB image [rows, cols, 3] of the view, top row first (as on screen)."""
        self.logic.ResizeSliceNode(self.width, self.height)
        self.logic.FitSliceToBackground()
        if offset_mm is not None:
            self.logic.SetSliceOffset(offset_mm)
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())  # valid once layers are set
        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.ReadFrontBufferOff()
        grab.Update()
        output = grab.GetOutput()
        width, height, _ = output.GetDimensions()
        rgb = numpy_support.vtk_to_numpy(output.GetPointData().GetScalars()).reshape(height, width, -1)[:, :, :3]
        return rgb[::-1].copy()

    def save_png(self, path: str | Path, offset_mm: float | None = None) -> Path:
        rgb = self.render(offset_mm)
        image = vtk.vtkImageData()
        image.SetDimensions(rgb.shape[1], rgb.shape[0], 1)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(rgb[::-1].reshape(-1, 3), deep=True))
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputData(image)
        writer.Write()
        return Path(path)

    def pixel_of(self, ras: tuple[float, float, float]) -> tuple[int, int]:
        """Row and column of the rendered image where the RAS point ``ras`` appears."""
        xy_to_ras = self.slice_node.GetXYToRAS()
        ras_to_xy = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Invert(xy_to_ras, ras_to_xy)
        x, y, _, _ = ras_to_xy.MultiplyPoint((*ras, 1.0))
        return int(round(self.height - 1 - y)), int(round(x))
