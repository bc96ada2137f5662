"""Restoring with a trained method: loading it from any checkpoint or export of the suite (`loading`), and
restoring an image of any size in overlapping tiles (`tiling`)."""
