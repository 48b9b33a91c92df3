"""Stage 2, from a scan to the model's slices and back: foreground and brain masks, N4 bias-field
correction, registration to the MNI152 atlas and its checks, the slice grid and intensity
normalisation, the Laplacian pyramid, and the sampling of slice-grid maps back onto a scan's grid.

May import: ssae.io.
"""
