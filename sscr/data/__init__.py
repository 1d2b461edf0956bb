"""The SEN12MS-CR data set: GeoTIFF I/O (``io``), the triplet index (``index``), the torch Dataset and
its builder (``dataset``), precomputed mask files (``masks``), training crops and flips (``augment``), the
synthetic sample (``synth``) and the downloader (``download``, ``prepare``: stage ``download``)."""
