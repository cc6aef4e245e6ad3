"""Long work as background jobs that outlive the browser: the job folder and its supervisor process, the registry of
job kinds (kind -> config class and run function) and the worker entry ``python -m core.jobs.supervisor.worker``.
"""
