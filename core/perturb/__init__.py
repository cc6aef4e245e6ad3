"""Perturbation tests: swap a span of the CoT (text) or the image (visual) and re-probe or re-decode under every
checkpoint; held-out evaluation (accuracy, malformed answers, flip rate).
"""
