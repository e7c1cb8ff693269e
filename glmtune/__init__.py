"""glmtune: fine-tuning toolkit for GLM-family chat models (ChatGLM-6B … GLM-4.5)."""

__version__ = "0.1.0"
