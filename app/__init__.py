"""Meal Studio control panel: FastAPI server, SQL data layer, pages. Reaches workers only through the broker."""
