"""Recipes, models, the DDP loop and its Dask launcher, checkpoints, run records."""
