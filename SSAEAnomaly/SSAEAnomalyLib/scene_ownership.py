"""What the modules own in a long Slicer session, and how they give it back.

Three Slicer contracts that a short test never notices and an hour-long session does:

* Some VTK/MRML methods hand their caller a reference it must release (their headers say "the
  caller is responsible for deleting the returned object"):
  ``vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode`` and
  ``vtkMRMLScene.GetNodesByClass``. Python's wrapper takes a reference of its own, so without
  ``UnRegister`` every call leaks one object (Slicer's ``SegmentEditorMaskVolumeEffect.py``
  releases it the same way). :func:`oriented_image` and :func:`nodes_of_class` do it once, here.
* Helpers such as ``ExportSegmentsToLabelmapNode`` add nodes of their own (a display node, a
  ``<segmentation>_ColorTable``) that would stay in the scene and be saved with it:
  :func:`scene_left_as_it_was` removes whatever a block of code added.
* ``vtkMRMLScene::RemoveNode`` removes one node: the display and storage nodes the module made
  for it stay (a volume display node keeps the volume's image data alive through its input
  connection), so replacing results removes them with their data node
  (:func:`remove_with_display_and_storage`).
* Subject-hierarchy item IDs are not kept when a saved scene is loaded again, so a stored ID may
  later name another item (and ``RemoveItem`` deletes data nodes): the results folder is found
  from the results' own nodes and recognised by an item attribute (:func:`results_folder_of`),
  and only an empty folder the module created is ever removed (:func:`remove_results_folder`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import slicer

RESULTS_FOLDER_ATTRIBUTE = "SSAE.resultsFolder"


def oriented_image(labelmap):
    """``CreateOrientedImageDataFromVolumeNode(labelmap)``, owned by Python alone."""
    image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(labelmap)
    if image is not None:
        image.UnRegister(None)  # the reference the method handed over; Python keeps its own
    return image


def nodes_of_class(scene, class_name: str) -> list:
    """The scene's nodes of one class as a list (the collection ``GetNodesByClass`` hands over
    is released)."""
    collection = scene.GetNodesByClass(class_name)
    try:
        return [collection.GetItemAsObject(index) for index in range(collection.GetNumberOfItems())]
    finally:
        collection.UnRegister(None)


@contextmanager
def scene_left_as_it_was(scene) -> Iterator[None]:
    """Remove every node added to ``scene`` inside the block (the block's own temporary nodes
    and whatever Slicer's helpers added for them), newest first, even when the block fails."""
    before = {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes())]
        for node in reversed([n for n in added if n.GetID() not in before]):
            if scene.IsNodePresent(node):
                scene.RemoveNode(node)


def remove_with_display_and_storage(scene, node) -> None:
    """Remove ``node`` with its display and storage nodes (for nodes the module created: theirs
    are made for them alone)."""
    if node is None or not scene.IsNodePresent(node):
        return
    helpers = []
    for count, get in (("GetNumberOfDisplayNodes", "GetNthDisplayNode"), ("GetNumberOfStorageNodes", "GetNthStorageNode")):
        if hasattr(node, count):
            helpers += [getattr(node, get)(index) for index in range(getattr(node, count)())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)


def create_results_folder(scene, parent: int, name: str) -> int:
    """A subject-hierarchy folder marked as the module's own (the mark is saved with the scene)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = hierarchy.CreateFolderItem(parent, name)
    hierarchy.SetItemAttribute(folder, RESULTS_FOLDER_ATTRIBUTE, "1")
    return folder


def results_folder_of(scene, node) -> int:
    """The module's results folder that holds ``node`` (0 where the node is not in one): found
    from the node itself, valid after any save and reload."""
    if node is None:
        return 0
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(node)
    parent = hierarchy.GetItemParent(item) if item else 0
    return parent if parent and hierarchy.GetItemAttribute(parent, RESULTS_FOLDER_ATTRIBUTE) == "1" else 0


def remove_results_folder(scene, folder: int) -> None:
    """Remove a results folder of the module once it is empty; never a data node, never a folder
    the module did not create, never one that still holds anything."""
    if not folder:
        return
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy.GetItemAttribute(folder, RESULTS_FOLDER_ATTRIBUTE) != "1" or hierarchy.GetItemDataNode(folder) is not None:
        return
    if hierarchy.GetNumberOfItemChildren(folder) == 0:
        hierarchy.RemoveItem(folder, False, False)
