"""Product bundles: the manifest schema (``manifest.py``, the one owner of it) and the registry on disk."""
