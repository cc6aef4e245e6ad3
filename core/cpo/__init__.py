"""Counterfactual Preference Optimization: the run config and pre-flight, the objectives on TRL's DPOTrainer, the
training callbacks, vision-language pairs, and runs as records (launch, follow, resume, join the series).
"""
