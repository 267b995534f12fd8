"""The analytics warehouse: the dbt project in ``dbt/`` run on DuckDB (local) or Spark (production)."""
