"""Searching what vecmirror mirrors, with the mirror's own model, vector field and metric."""
