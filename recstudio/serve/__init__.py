"""Serving trained models: a self-contained folder, top-k in raw ids, and an MLflow pyfunc model."""
