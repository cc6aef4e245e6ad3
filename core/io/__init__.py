"""The user's files and the workspace's own storage: paths and data roots, safe JSON, hashing, atomic files and the
result cache, images, answers, trajectories and preference pairs in the field's formats, the SQLite store.

The lowest wing: it imports only the root modules (``core.errors``, ``core.atomic``, ``core.config``,
``core.progress``).
"""
