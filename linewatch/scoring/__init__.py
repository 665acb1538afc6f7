"""Scoring: pure functions from an InferenceOutput to a decision, a defect location and a heatmap image."""
