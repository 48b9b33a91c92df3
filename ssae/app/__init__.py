"""Stage 8, what users run: the command line (one module per command), argument checks, the
built-in demo, background processes for GUIs, and the long-lived detection worker.

May import: every stage. Nothing imports it but ``ssae/__main__.py`` (and the Slicer modules,
for the background processes).
"""
