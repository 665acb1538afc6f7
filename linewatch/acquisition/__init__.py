"""Acquisition: the FrameSource protocol and its implementations (genicam, folder, video, synthetic)."""
