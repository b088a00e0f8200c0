"""Extract: open apps and bundles, find runtimes and model blobs, trace, infer preprocessing, convert."""
