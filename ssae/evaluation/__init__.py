"""Stage 7, measuring: evaluation on labelled data sets (maps, mask, lesion-wise scores, FLAIR
baselines) and the reproduction harness of the paper's comparisons with its report.

May import: every earlier stage (io, preprocessing, scoring, models, detection, training).
"""
