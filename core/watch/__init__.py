"""Drift watch: follow a running training job, score each checkpoint as the trainer saves it, keep the series,
raise alarms. ``callback`` runs inside the trainer (standard library and transformers only: one file a user's
environment can take); ``follow`` takes checkpoints from any trainer's folder; ``steps`` scores one checkpoint
against the base and the previous one; ``store`` keeps each step and builds the analysis the explorer opens;
``alarms`` judges the step axis; ``scorer`` is the loop; ``job`` runs it as job kind ``watch`` of
``core.jobs.registry`` (``python -m core.jobs.worker watch``); ``config`` holds its settings (``WatchConfig``);
``views`` reads a watch for the page and turns a finished one into a world. Only the top (pages, workbench, the
command line) imports this wing (import-linter's ``wings`` contract: beside ``cpo``, above the rest).
"""
