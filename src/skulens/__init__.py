"""skulens: multimodal product search and recommendation, with the MLOps pipeline that keeps it fresh.

Importing the package is cheap on purpose: heavy libraries (torch, pyspark, airflow) are imported
inside the functions that need them, so the CLI and the data contracts start fast.
"""

__version__ = "0.1.0"
