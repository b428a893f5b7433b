"""Composes models, losses and data into runnable jobs."""
