"""The Streamlit UI and command line of the CoT Drift Workbench (the engine lives in ``core``)."""
