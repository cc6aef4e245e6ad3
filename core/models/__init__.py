"""Models and their checkpoint series: find checkpoints as trainers write them, load one base with its adapters,
switch adapters in place, the model families' forward pieces, batch fitting, devices and greedy generation.
"""
