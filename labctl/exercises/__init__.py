"""Classroom exercises: lessons as data (`exercises/<name>/exercise.yaml` + README.md), a
pydantic schema for them (model.py) and the engine that starts, checks, hints and solves them
on a live lab (engine.py)."""
