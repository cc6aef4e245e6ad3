"""The concept graph: diseases and findings with supports / excludes edges (``concepts``), its file formats
(node-link JSON, GraphML, CSV) and its versions in the workspace database (undo, redo, diff, restore).
"""
