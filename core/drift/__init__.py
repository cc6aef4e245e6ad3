"""Drift in the chain of thought: teacher-forced scoring under every checkpoint, the answer probe, the drift
tables and change detectors, the analysis that joins them (cached, sharded) and the explorer's views of it.
"""
