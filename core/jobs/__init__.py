"""Long work as background jobs that outlive the browser: the job folder and its supervisor process
(``supervisor``), the registry of job kinds (``registry``: kind -> config class, options class and run function, the
one place a job's command line is built and a job launched) and the worker entry ``python -m core.jobs.worker``.
"""
