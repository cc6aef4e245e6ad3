"""Curation of counterfactual pairs into preference data: the annotation queue, agreement and conflicts, imports
of preference files and exported snapshots that a CPO run names.
"""
