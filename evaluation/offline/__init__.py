"""Offline stand-ins, built by the project with random weights: tiny CLIP, BERT and Qwen2.5-VL
models in the real checkpoints' layouts, and a fake run folder. They let tests (and users without
weights) exercise the evaluators' loading, preprocessing and batching; their scores mean nothing."""
