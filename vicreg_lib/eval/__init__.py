"""Evaluation of a frozen network, around the core: features.py (features, kNN), probes.py (linear
probes and the classifier training under them), report.py (a checkpoint's report, the random-init
baseline), diagnostics.py (collapse), supervised.py (the supervised baseline)."""
