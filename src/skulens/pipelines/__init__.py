"""Pipeline stages as plain functions; the Airflow DAGs in ``dags/`` only wire them together."""
