"""The data layer that the web server and the workers share: settings, the database (engine, tables, conditional
state changes, the metric store), the artefact store and the broker's task names.

Nothing here imports the web routes, pages or auth: `worker/` stands on this package and `meal_core` alone
(tests/test_architecture.py walks the imports to keep it so).
"""
