"""The database: engine and sessions, tables, migrations, and the queries, one module per
aggregate. Queries raise the domain errors of ``db.errors``; nothing here knows HTTP or Temporal."""
