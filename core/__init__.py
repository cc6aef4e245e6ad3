"""CoT Drift Workbench engine.

Everything here is importable without Streamlit, plotly or pyvis: use it from a notebook, a cluster
job or the ``workbench`` command line. The UI in ``workbench/`` and ``pages/`` only calls into it.
"""

__version__ = "0.1.0"
