"""Training layer: the run (train), launch backends and the dry-run plan (launch), the per-process entry point
(worker), Trainer callbacks, k-bit quantization and the DeepSpeed presets."""
