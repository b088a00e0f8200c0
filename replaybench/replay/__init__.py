"""Replay: dataset readers, image decode + preprocessing, the pipelined batch runner, output sinks."""
