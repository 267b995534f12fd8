"""Running the pipelines' DAGs under a real Airflow: starting it locally, and its REST API."""
