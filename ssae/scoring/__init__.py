"""Stage 3, from residuals to what a user gets: score maps (per scale, aggregated, with the
hyper-intensity prior, fused, FLAIR), their names, label-free operating points and what a
threshold means, lesions and their table, the FLAIR baselines, voxel and lesion-wise metrics.

May import: ssae.io, ssae.preprocessing. Torch-free except score maps (the pyramid's upsampling).
"""
