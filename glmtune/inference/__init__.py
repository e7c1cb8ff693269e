"""Inference layer: generation with the family's stop tokens, the chat REPL, evaluation and its metrics."""
