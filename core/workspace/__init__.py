"""The workspace (database, caches, jobs, runs) and the worlds in it: a base model, its checkpoint series,
trajectory datasets and a concept graph, named by a ``world.json``, with an optional plug-in.
"""
