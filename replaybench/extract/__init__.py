"""Extract: open apps and bundles, find runtimes and model blobs, trace, infer preprocessing, convert.

Modules (scan and blob extraction):

- ``inventory``  the Inventory / ModelBlob / ExtractManifest documents (versioned, extra=forbid).
- ``containers`` APK, split folder, XAPK/APKS/APKM, nested zips; caps against zip bombs; safe paths.
- ``formats``    the registry of model-format detectors (magic -> structure -> extension).
- ``tflite``, ``flatbuf``  TFLite structure and TFLite Support metadata, flatbuffer extent.
- ``native``     ELF libraries with lief: runtime fingerprints, engine score, embedded blobs.
- ``code``       DEX evidence (androguard), limited to DEX files that name ML APIs.
- ``scan``       ``scan_app(paths, code=True) -> Inventory``: one streaming walk.
- ``blobs``      ``extract_blobs(inventory_or_paths, out_dir, select=..., after=...) -> ExtractManifest``.
- ``render``     rich tables for the CLI.

Seams for later stages: trace matching passes ``select`` to ``extract_blobs`` (which blobs a trace saw
loaded); conversion / preprocessing inference pass ``after`` callbacks that receive each written blob.
"""
