"""Distill: teacher labelling, the image+text student, training, export, bulk scoring."""
