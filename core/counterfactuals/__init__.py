"""Counterfactual trajectories: graph-driven rewrites, the LLM expert, their store with provenance and the batch
job that generates them over a dataset.
"""
