"""The embedded sample: a synthetic face-attribute app, its trace, and the end-to-end demo pipeline."""
