"""Celery workers that run the Meal engine on runs stored by the control panel."""
