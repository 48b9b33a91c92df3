"""Stage 5, a model applied to scans: scanner adaptation of a model copy, the detector (residuals,
maps, mask on the input's grid), result sets written all or nothing, cohorts of scans, figures.

May import: ssae.io, ssae.preprocessing, ssae.scoring, ssae.models.
"""
