"""Scale-Space Autoencoders for unsupervised anomaly segmentation in brain MRI.

The headless engine behind the SSAE 3D Slicer extension (Baur et al., MICCAI 2020): Laplacian
pyramid, one autoencoder per pyramid level, stage-wise training, multi-scale residual maps,
label-free thresholds and metrics. No Slicer and no Qt in here.
"""

__version__ = "0.1.0"
